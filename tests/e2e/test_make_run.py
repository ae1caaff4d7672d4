"""`make run` (= `extproc run-local`): starts everything and prints calls that work as printed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from extproc.dev.local import DEMO_KEY
from tests.e2e.conftest import free_ports

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


def test_run_local_prints_a_working_sdk_call(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    fake_port, listener_port, envoy_admin_port, admin_port = free_ports(4)
    config["listener"]["port"] = listener_port
    config["envoy_admin"]["port"] = envoy_admin_port
    config["processor"]["admin_port"] = admin_port
    config["processor"]["unix_socket"] = str(tmp_path / "extproc.sock")
    config["reload"]["xds_directory"] = str(tmp_path / "xds")
    for provider in config["providers"]:
        provider["base_url"] = provider["base_url"].replace(":18000", f":{fake_port}")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "extproc.cli",
            "run-local",
            "--config",
            str(path),
            "--fake-port",
            str(fake_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell's foreground job has
    )
    output = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Press Ctrl-C" in line:
                break
        banner = "".join(output)
        assert "Press Ctrl-C" in banner, banner
        assert "curl -s http://127.0.0.1:" in banner
        snippet = re.search(r"python -c '(.*?)'\n", banner, re.S)
        assert snippet, banner
        result = subprocess.run(
            [sys.executable, "-c", snippet.group(1)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "echo: Hello!"
        # Every demo model works as configured, translated ones included.
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{config['listener']['port']}/v1",
            api_key=DEMO_KEY,
            max_retries=0,
        )
        with client:
            for model in config["models"]:
                if model.get("kind") == "embeddings":
                    assert client.embeddings.create(model=model["name"], input="x").data
                    continue
                reply = client.chat.completions.create(
                    model=model["name"], messages=[{"role": "user", "content": "ping"}]
                )
                assert reply.choices[0].message.content == "echo: ping", model["name"]
    finally:
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(output) + rest
    # Ctrl-C drained the pair as a pod stops: Envoy first, then the processor, both cleanly.
    assert "draining: new connections are refused" in rest, rest
    assert "stopped (requests cut short: none; exit codes: Envoy 0, processor 0)" in rest, rest
    # Ctrl-C stopped every child: the listener no longer answers.
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{config['listener']['port']}/health", timeout=2)
