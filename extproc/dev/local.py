"""`make run`: the whole sidecar on one machine, offline, with the bundled fake providers.

Development only: starts a fake provider, the processor and Envoy on the given config (one
`extproc.dev.stack.GatewayStack`) and prints how to call the listener. Ctrl-C or SIGTERM
stops it as a pod stops: Envoy drains, then the processor exits (`GatewayStack.drain_and_stop`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from extproc.config.loading import ConfigError
from extproc.config.schema import GatewayConfig
from extproc.dev.fakes import FakeProviderServer
from extproc.dev.stack import GatewayStack, interrupt_on_signals, signals_held

DEMO_KEY = "sk-gw-demo-key"
# The bundled fake provider accepts any API key (these only prove injection works).
DEMO_PROVIDER_ENV = {
    "FAKE_OPENAI_API_KEY": "sk-fake-upstream-openai",
    "FAKE_AZURE_API_KEY": "fake-upstream-azure-key",
    "FAKE_ANTHROPIC_API_KEY": "sk-ant-fake-upstream",
    "FAKE_GOOGLE_API_KEY": "fake-google-upstream",
    # The bundled fake Bedrock verifies SigV4 signatures made with this key pair.
    "FAKE_AWS_ACCESS_KEY_ID": "AKIDFAKEBEDROCK",
    "FAKE_AWS_SECRET_ACCESS_KEY": "fake-bedrock-secret",
}


def _banner(config: GatewayConfig) -> str:
    base = f"http://{config.listener.address}:{config.listener.port}"
    chat_model = next((m.name for m in config.models if m.kind == "chat"), "MODEL")
    key = DEMO_KEY if config.auth.enabled else "anything"
    return f"""
LLM gateway is running (Envoy {base}, processor admin
http://{config.processor.admin_address}:{config.processor.admin_port}/metrics).

Try it with curl:

  curl -s {base}/v1/chat/completions \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"model": "{chat_model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

or with the openai SDK:

  python -c 'from openai import OpenAI
c = OpenAI(base_url="{base}/v1", api_key="{key}")
r = c.chat.completions.create(model="{chat_model}",
    messages=[{{"role": "user", "content": "Hello!"}}])
print(r.choices[0].message.content)'

Edit the config file while this runs: changes are reloaded, Envoy included
(`curl -X POST http://{config.processor.admin_address}:{config.processor.admin_port}/reload` shows
the result; a file with mistakes is refused and the gateway keeps running on the last good one).

Press Ctrl-C to stop.
"""


def run_local(config_path: Path, fake_port: int = 18000) -> int:
    """Run fake provider + processor + Envoy until Ctrl-C or SIGTERM; print how to call it."""
    env = {k: os.environ.get(k, v) for k, v in DEMO_PROVIDER_ENV.items()}
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-"))
    # The processor logs to this terminal; Envoy (noisier) to a file.
    stack = GatewayStack(
        workdir,
        config_path,
        FakeProviderServer(port=fake_port),
        processor_env=env,
        processor_log=None,
    )
    interrupted = False
    with interrupt_on_signals():
        try:
            stack.start()
            print(f"fake provider on {stack.fake.base_url}", flush=True)
            print(_banner(stack.gateway_config), flush=True)
            print(f"(Envoy log: {stack.envoy_log})", flush=True)
            print(f"the {stack.wait_for_exit()} exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            interrupted = True
            return 0
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"{exc.source}: {problem}", file=sys.stderr)
            return 2
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"cannot start the gateway: {exc}", file=sys.stderr)
            return 1
        finally:
            _shut_down(stack, drain=interrupted and stack.started)


def _shut_down(stack: GatewayStack[FakeProviderServer], drain: bool) -> None:
    """Drain and stop the stack (`drain`), or stop it at once; a second Ctrl-C during the
    drain stops it at once, and none can cut the final clean-up short."""
    if drain:
        grace = stack.gateway_config.processor.shutdown_grace_seconds
        print(
            "draining: new connections are refused, requests in flight get up to "
            f"{grace:g}s (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        try:
            result = stack.drain_and_stop()
        except KeyboardInterrupt:
            pass
        else:
            left = result.drain.in_flight
            cut = "none" if left == 0 else "unknown" if left is None else str(left)
            print(
                f"stopped (requests cut short: {cut}; exit codes: Envoy {result.envoy}, "
                f"processor {result.processor})",
                file=sys.stderr,
                flush=True,
            )
            return
    with signals_held():
        print("stopping...", file=sys.stderr, flush=True)
        stack.stop()
