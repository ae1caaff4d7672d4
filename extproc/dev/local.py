"""`make run`: the whole sidecar on one machine, offline, with the bundled fake providers.

Development only: starts a fake provider, the processor and Envoy on the given config and
prints how to call the listener.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from extproc.config.loading import load_config
from extproc.config.schema import GatewayConfig
from extproc.dev.stack import start_envoy, start_processor, stop_process, wait_until_ok

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

Press Ctrl-C to stop.
"""


def run_local(config_path: Path, fake_port: int = 18000) -> int:
    """Run fake provider + processor + Envoy until Ctrl-C; print how to call it."""
    from extproc.bootstrap import render_yaml
    from extproc.dev.fakes import FakeProviderServer

    env = {k: os.environ.get(k, v) for k, v in DEMO_PROVIDER_ENV.items()}
    os.environ.update(env)
    loaded = load_config(config_path)
    config = loaded.config
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-"))
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(render_yaml(config), encoding="utf-8")
    fake = FakeProviderServer(port=fake_port)
    processor = envoy = None
    stopping = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        fake.start()
        print(f"fake provider on {fake.base_url}", flush=True)
        processor = start_processor(config_path, env)
        admin = f"http://{config.processor.admin_address}:{config.processor.admin_port}"
        wait_until_ok(f"{admin}/readyz", 30, processor)
        envoy = start_envoy(bootstrap, log_file=workdir / "envoy.log")
        listener = f"http://{config.listener.address}:{config.listener.port}"
        wait_until_ok(f"{listener}/health", 30, envoy)
        print(_banner(config), flush=True)
        print(f"(Envoy log: {workdir / 'envoy.log'})", flush=True)
        while not stopping:
            if processor.poll() is not None or envoy.poll() is not None:
                print("a component exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"cannot start the gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", file=sys.stderr, flush=True)
        stop_process(envoy)
        stop_process(processor)
        fake.stop()
