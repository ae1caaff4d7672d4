"""The LiteLLM proxy row of `make bench`: the same request, the same fake, through LiteLLM.

LiteLLM is never a dependency of the project. The bench installs `litellm[proxy]` at a pinned
version into its own virtualenv (`.bench-venvs/litellm` under the repository root, ignored by
git), once: only when it is missing or holds another version, before anything is timed. It then
runs `litellm --config <rendered config> --num_workers 2` (uvicorn: a supervisor and two worker
processes), with the pass-through model mapped to the fake as an OpenAI-compatible endpoint, the
client's key as master key (no database) and nothing that reaches the network at run time.
The row's CPU is the proxy's whole process tree (`proctree`).

When the row is skipped (`--no-litellm`, `BENCH_LITELLM=0`) or LiteLLM cannot be installed or
started, the bench says why and goes on without it. The figures it adds (gateway / LiteLLM
throughput, LiteLLM's added p50 / the gateway's) and their targets are computed here too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import proctree
from bench.progress import log
from bench.report import fmt, minus
from bench.systems import (
    ALL_FEATURES,
    CLIENT_KEY,
    MODEL_PASSTHROUGH,
    PASSTHROUGH,
    PLAIN,
    ROOT,
    UPSTREAM_ENV,
    System,
    Target,
    chat_body,
    wait_for_200,
)
from extproc.dev.stack import ProcessGroup, free_port, spawn

LITELLM_VERSION = "1.108.7"
VENV = ROOT / ".bench-venvs" / "litellm"
WORKERS = 2
LITELLM = f"litellm-proxy ({WORKERS} workers)"
# `BENCH_LITELLM=0` skips the row, like `--no-litellm`.
ENABLE_VARIABLE = "BENCH_LITELLM"
# Nothing reaches the network at run time: the bundled model cost map instead of fetching it,
# LiteLLM's telemetry off. No DATABASE_URL: no database.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
}
RATIO_TARGET = 10.0
INSTALL_TIMEOUT_S = 1800
START_TIMEOUT_S = 180.0
# What the venv's Python prints when LiteLLM and its proxy extra are there: the version.
_PROBE = (
    "import importlib.metadata as m, importlib.util as u\n"
    "if u.find_spec('uvicorn') and u.find_spec('litellm_proxy_extras'):\n"
    "    print(m.version('litellm'))\n"
)


class InstallError(Exception):
    """LiteLLM could not be installed; the message says why."""


def requirement(version: str = LITELLM_VERSION) -> str:
    """What pip installs."""
    return f"litellm[proxy]=={version}"


def skip_reason(no_litellm: bool, environ: Mapping[str, str]) -> str | None:
    """Why the row is skipped on request, or None when it runs."""
    if no_litellm:
        return "skipped (--no-litellm)"
    if environ.get(ENABLE_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"skipped ({ENABLE_VARIABLE}={environ[ENABLE_VARIABLE]})"
    return None


# --- installing ------------------------------------------------------------------------------


def installed_version(venv: Path) -> str | None:
    """The LiteLLM version in `venv` with its proxy extra, or None (no venv, no LiteLLM)."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def ensure_installed(venv: Path = VENV, version: str = LITELLM_VERSION) -> Path:
    """The `litellm` executable of `venv`, installing `requirement(version)` first when the
    venv is missing or holds another version. Raises `InstallError` with the reason."""
    executable = venv / "bin" / "litellm"
    found = installed_version(venv)
    if found == version and executable.exists():
        return executable
    where = venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv
    log(
        f"LiteLLM: installing {requirement(version)} into {where} "
        f"({f'it holds {found}' if found else 'not there yet'}; a minute or more, once)"
    )
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", requirement(version)],
    ]
    if (venv / "bin" / "python").exists():
        steps = steps[1:]
    for argv in steps:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{' '.join(argv[1:4])} failed: {exc}") from None
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "WARNING" not in line]
            tail = " / ".join(errors[-3:]) or f"exit code {done.returncode}"
            raise InstallError(f"`{' '.join(argv[1:4])} ...` failed: {tail}")
    found = installed_version(venv)
    if found != version or not executable.exists():
        raise InstallError(f"installed, but the venv reports LiteLLM {found}, not {version}")
    log(f"LiteLLM: {requirement(version)} installed")
    return executable


# --- running ---------------------------------------------------------------------------------


def proxy_config(fake_url: str, model: str, master_key: str, upstream_key: str) -> dict[str, Any]:
    """LiteLLM's config.yaml: `model` served by the fake as an OpenAI-compatible endpoint
    (the same upstream model name, so the fake answers as it does for the gateway), clients
    authenticated by `master_key` (no database, so no virtual keys)."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": f"{fake_url}/v1",
                    "api_key": upstream_key,
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False},
    }


def worker_pids(pid: int) -> list[int]:
    """The uvicorn worker processes of the supervisor `pid` (multiprocessing spawns them)."""
    found = []
    for child in proctree.children().get(pid, []):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


class LiteLLMProxy:
    """`litellm --config ... --num_workers N` in its own process group; `stop()` ends the
    group (supervisor and workers), SIGKILL after a grace period."""

    def __init__(self, executable: Path, config_path: Path, port: int, log_file: Path) -> None:
        self.executable = executable
        self.config_path = config_path
        self.port = port
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The supervisor's pid (once started)."""
        assert self.proc is not None, "LiteLLMProxy is not started"
        return self.proc.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> list[int]:
        """Start it; return the worker pids once every worker has started and the health
        endpoint answers 200."""
        argv = [str(self.executable), "--config", str(self.config_path), "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--num_workers", str(WORKERS)]
        self.proc = spawn(argv, self.log_file, env=OFFLINE_ENV)
        deadline = time.monotonic() + timeout
        state = "nothing yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited with code {self.proc.returncode}")
            workers = worker_pids(self.pid)
            started = self.log_file.read_text(errors="replace").count(
                "Application startup complete."
            )
            try:
                health = httpx.get(f"{self.base_url}/health/liveliness", timeout=5)
                status = str(health.status_code)
            except httpx.HTTPError as exc:
                status = repr(exc)
            if status == "200" and started >= WORKERS and len(workers) == WORKERS:
                return workers
            state = f"health: {status}; {len(workers)} workers, {started} started"
            time.sleep(0.5)
        raise RuntimeError(f"litellm not ready within {timeout:.0f}s ({state})")

    def stop(self, grace: float = 20) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds."""
        if self.proc is None or self._stopped:
            return  # never signal a group id twice: once reaped, it may be reused
        self._stopped = True
        group = self.proc.pid  # spawn() made it the leader of its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        deadline = time.monotonic() + 5
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)  # the workers' last moments, after the supervisor
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.proc.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class LiteLLMRow:
    """What the report says about the row: available or not (and why), what ran."""

    available: bool
    reason: str | None = None
    version: str = LITELLM_VERSION
    workers: int = WORKERS
    scenario: str = LITELLM
    supervisor_pid: int | None = None
    worker_pids: list[int] | None = None


def prepare(no_litellm: bool, environ: Mapping[str, str] = os.environ) -> Path | LiteLLMRow:
    """The `litellm` executable (installed if need be), or the row, unavailable, and why."""
    reason = skip_reason(no_litellm, environ)
    if reason is not None:
        log(f"LiteLLM: {reason}")
        return LiteLLMRow(False, reason)
    try:
        return ensure_installed()
    except InstallError as exc:
        log(f"LiteLLM: unavailable, the bench goes on without it: {exc}")
        return LiteLLMRow(False, f"install failed: {exc}")


def add_row(
    system: System, children: ProcessGroup, workdir: Path, executable: Path, fake_url: str
) -> LiteLLMRow:
    """Start the proxy (tracked by `children`) and add its scenario to `system.targets` once a
    real chat completion went through it; when it cannot start, the row is unavailable."""
    config_path = workdir / "litellm.yaml"
    config = proxy_config(fake_url, MODEL_PASSTHROUGH, CLIENT_KEY, UPSTREAM_ENV["BENCH_OPENAI_KEY"])
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log_file = workdir / "litellm.log"
    proxy = children.add(LiteLLMProxy(executable, config_path, free_port(), log_file))
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    try:
        workers = proxy.start()
        target = Target(
            LITELLM,
            f"{proxy.base_url}/v1/chat/completions",
            chat_body(MODEL_PASSTHROUGH),
            headers,
            envoy_pid=None,
            processor_pid=proxy.pid,
        )
        wait_for_200(target)
    except (RuntimeError, OSError) as exc:
        proxy.stop()
        log(f"LiteLLM: unavailable, the bench goes on without it: {exc}")
        return LiteLLMRow(False, f"did not start: {exc}; log: {log_file}")
    system.targets[LITELLM] = target
    log(f"LiteLLM {LITELLM_VERSION} (pid {proxy.pid}, workers {workers}) on {proxy.base_url}")
    return LiteLLMRow(True, supervisor_pid=proxy.pid, worker_pids=workers)


def worker_restarts(log_file: Path) -> int:
    """How many workers uvicorn's supervisor found dead (or hung) and replaced."""
    if not log_file.exists():
        return 0
    text = log_file.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if "Child process [" in line and "died" in line)


# --- the figures and their targets -----------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive."""
    return None if a is None or b is None or b <= 0 else a / b


def figures(scenarios: Mapping[str, Any]) -> dict[str, float | None]:
    """Gateway / LiteLLM throughput at 8 clients and LiteLLM's added p50 / the gateway's at
    1 client (added = scenario - plain-envoy), for the pass-through and, when present, the
    all-features row. Empty without a LiteLLM row."""
    if LITELLM not in scenarios:
        return {}
    litellm = scenarios[LITELLM]
    plain_p50 = scenarios[PLAIN]["one_client"]["p50_ms"]
    litellm_added = minus(litellm["one_client"]["p50_ms"], plain_p50)
    found: dict[str, float | None] = {}
    for key, name in (("passthrough", PASSTHROUGH), ("all_features", ALL_FEATURES)):
        if name not in scenarios:
            continue
        gateway = scenarios[name]
        found[f"throughput_{key}"] = _ratio(
            gateway["eight_clients"]["rps"], litellm["eight_clients"]["rps"]
        )
        found[f"added_p50_{key}"] = _ratio(
            litellm_added, minus(gateway["one_client"]["p50_ms"], plain_p50)
        )
    return found


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's LiteLLM targets (>= 10x each) in `report.evaluate_targets`' form; without
    a LiteLLM row they are listed as n/a."""
    values = figures(report["scenarios"])
    out = []
    for key, name in (("passthrough", PASSTHROUGH), ("all_features", ALL_FEATURES)):
        if name not in report["scenarios"]:
            continue
        for figure, description in (
            ("throughput", f"{name} / LiteLLM throughput, 8 clients"),
            ("added_p50", f"LiteLLM added p50 / {name} added p50, 1 client"),
        ):
            value = values.get(f"{figure}_{key}")
            verdict = "n/a" if value is None else "PASS" if value >= RATIO_TARGET else "MISS"
            out.append(
                {
                    "key": f"litellm_{figure}_{key}",
                    "target": description,
                    "threshold": f">= {RATIO_TARGET:g}x",
                    "measured": value,
                    "measured_text": "-" if value is None else f"{fmt(value, 1)}x",
                    "verdict": verdict,
                }
            )
    return out


def render(report: Mapping[str, Any]) -> str:
    """A short Markdown paragraph on the row: what ran and the two figures, or why it did not."""
    row = report["litellm"]
    head = f"\nLiteLLM proxy {row['version']}, row `{row['scenario']}`"
    if not row["available"]:
        return f"{head}: unavailable, {row['reason']}"
    restarts = row.get("worker_restarts", 0)
    lines = [f"{head}: same request and fake; CPU = supervisor + workers; {restarts} restarts"]
    for entry in targets(report):
        lines.append(f"- {entry['target']}: {entry['measured_text']} ({entry['verdict']})")
    return "\n".join(lines)
