"""Side-by-side benchmark: plain Envoy versus the gateway (Envoy + the ext_proc processor).

`make bench` (or `.venv/bin/python bench/run.py [--quick]`) starts, in one run:

- the bundled fake provider as its own process (zero latency, 200-event streams),
- the processor (`extproc serve`, log level WARNING) and its Envoy, on ONE rendered gateway
  config holding every benchmarked model,
- a second, minimal Envoy (listener -> router -> one static cluster, no ext_proc), built here as
  a dict: the physical limit of the same machine and the same fake.

It then measures with `hey` (installed with apt when missing) and a small httpx client:
throughput at 8 clients, p50/p95/p99 at 1 and 8 clients, processor CPU per request, streaming
time to first content event / last event, a 1 MB prompt, and the processor's RSS growth over many
requests. It prints side-by-side tables (Markdown) with the issue's targets marked PASS/MISS, and
writes the same figures as JSON to `bench/results/<UTC timestamp>.json` and `latest.json`.
Misses are reported, never asserted: the exit code is 0 whenever the measurement itself worked.
Every process it starts is stopped at the end, on errors and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from extproc.bootstrap import RUNTIME_FLAGS, render_yaml
from extproc.config.loading import load_config
from extproc.decisions.auth import hash_key
from extproc.dev.stack import find_envoy_binary, start_envoy, stop_process, wait_until_ok

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"

CLIENT_KEY = "sk-bench-client"
RBAC_KEY = "sk-bench-rbac-client"
UPSTREAM_ENV = {"BENCH_OPENAI_KEY": "sk-bench-upstream", "BENCH_ANTHROPIC_KEY": "sk-ant-bench"}
STREAM_EVENTS = 200
# ~200 tokens of 4 characters: each of the 200 stream events carries 4 characters.
REPLY = ("lorem ipsum dolor sit amet " * 30)[:800]
ONE_MB = 1024 * 1024

MODEL_PASSTHROUGH = "bench-passthrough"
MODEL_ANTHROPIC = "bench-anthropic"
MODEL_ALL = "bench-all"
MODEL_ALL_UPSTREAM = "bench-all-upstream"

PLAIN = "plain-envoy"
PASSTHROUGH = "gateway-passthrough"
ANTHROPIC = "gateway-anthropic"
ALL_FEATURES = "gateway-all-features"
ANTHROPIC_REFERENCE = "plain-envoy, Anthropic wire (reference)"
# Envoy + a do-nothing Python ext_proc server (bench/floor_processor.py): the floor.
FLOOR = "floor: Envoy + empty Python ext_proc"


@dataclass(frozen=True)
class Settings:
    """Durations and counts of one run (full or --quick)."""

    mode: str
    warmup_s: int  # per scenario, 8 clients
    one_client_rounds: int  # 1 client: rounds through all scenarios ...
    one_client_requests: int  # ... of this many requests per scenario
    eight_client_rounds: int  # 8 clients: rounds through all scenarios ...
    eight_client_slice_s: float  # ... of about this long per scenario
    stream_runs: int
    big_runs: int
    memory_requests: int


FULL = Settings("full", 3, 10, 400, 3, 5.0, 100, 20, 200_000)
QUICK = Settings("quick", 1, 4, 400, 2, 2.5, 30, 20, 20_000)

# The targets: (key, description, threshold text).
TARGETS: tuple[tuple[str, str, str], ...] = (
    ("throughput_ratio", "gateway/plain throughput, 8 clients, passthrough", ">= 0.35"),
    ("added_p50_1c", "added p50, 1 client, passthrough", "<= 0.5 ms"),
    ("added_p99_1c", "added p99, 1 client, passthrough", "<= 2 ms"),
    ("added_p50_anthropic", "added p50, 1 client, Anthropic translation", "<= 1 ms"),
    ("added_ttft", "added median TTFT, streaming passthrough", "<= 1 ms"),
    ("added_1mb", "added median latency, 1 MB prompt, passthrough", "<= 10 ms"),
    ("rss_growth", "processor RSS growth over the memory run", "< 10 %"),
)

# Every child process still running (the fake, the processor, both Envoys, hey): stopped at exit.
_CHILDREN: list[subprocess.Popen[Any]] = []
_T0 = time.monotonic()


def log(message: str) -> None:
    """One progress line, with the time since the run started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


# --- processes -------------------------------------------------------------------------------


def ensure_hey() -> str:
    """Path of `hey`; installs the Debian package with apt-get when it is missing."""
    found = shutil.which("hey")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit(
            "bench: the load generator `hey` is missing and apt-get is not available; "
            "install hey (https://github.com/rakyll/hey) and run again"
        )
    if os.geteuid() != 0:
        raise SystemExit("bench: `hey` is missing; install it as root: apt-get install -y hey")
    log("installing the load generator: apt-get install -y hey")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "hey"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        log("apt-get install failed; running apt-get update first")
        subprocess.run([apt, "update", "-qq"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench: apt-get install -y hey failed:\n{done.stderr.strip()}")
    found = shutil.which("hey")
    if found is None:
        raise SystemExit("bench: apt-get installed hey but it is not on PATH")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    argv: Sequence[str], log_file: Path, *, pipe_stdout: bool = False, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start a tracked child logging to `log_file` (stdout too, unless `pipe_stdout`)."""
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE if pipe_stdout else out,
            stderr=out,
            **kwargs,
        )
    _CHILDREN.append(proc)
    return proc


def start_fake(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The fake provider as its own process on a free port; returns it and the port."""
    argv = [
        sys.executable,
        "-m",
        "extproc.dev.fakes",
        "--port",
        "0",
        "--stream-chunk-count",
        str(STREAM_EVENTS),
        "--reply",
        REPLY,
    ]
    proc = spawn(argv, workdir / "fake.log", pipe_stdout=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        if proc.poll() is not None:
            raise RuntimeError(f"the fake provider exited with code {proc.returncode}")
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line += os.read(proc.stdout.fileno(), 4096)
    match = re.search(rb":(\d+)\s*$", line)
    if match is None:
        raise RuntimeError(f"the fake provider did not report its port (got {line!r})")
    return proc, int(match.group(1))


def start_processor(config_path: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """`extproc serve` at log level WARNING (no per-request logging)."""
    argv = [sys.executable, "-m", "extproc.cli", "--log-level", "WARNING", "serve"]
    argv += ["--config", str(config_path)]
    return spawn(argv, workdir / "processor.log", env={**os.environ, **UPSTREAM_ENV})


def start_tracked_envoy(bootstrap: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """`extproc.dev.stack.start_envoy` (1 worker thread), tracked for the final clean-up."""
    proc = start_envoy(bootstrap, log_file=log_file)
    _CHILDREN.append(proc)
    return proc


def stop_all() -> None:
    """Stop every child still running, newest first (hey, Envoys, processor, fake)."""
    while _CHILDREN:
        proc = _CHILDREN.pop()
        with contextlib.suppress(Exception):
            stop_process(proc, timeout=10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- configurations --------------------------------------------------------------------------


def gateway_config(fake: str, workdir: Path) -> dict[str, Any]:
    """ONE gateway config serving every gateway scenario from the same fake."""
    check = {"path": "/models", "interval_seconds": 1}
    return {
        "listener": {"address": "127.0.0.1", "port": free_port()},
        "envoy_admin": {"address": "127.0.0.1", "port": free_port()},
        "processor": {
            "unix_socket": str(workdir / "extproc.sock"),
            "admin_address": "127.0.0.1",
            "admin_port": free_port(),
            "shutdown_grace_seconds": 2,
        },
        "auth": {"enabled": True},
        "providers": [
            {
                "name": "p-openai",
                "type": "openai",
                "base_url": f"{fake}/v1",
                "api_key_env": "BENCH_OPENAI_KEY",
            },
            {
                "name": "p-anthropic",
                "type": "anthropic",
                "base_url": f"{fake}/anthropic/v1",
                "api_key_env": "BENCH_ANTHROPIC_KEY",
            },
            # All features: two health-checked providers, a cross-provider failover chain.
            {
                "name": "p-primary",
                "type": "openai",
                "base_url": f"{fake}/v1",
                "api_key_env": "BENCH_OPENAI_KEY",
                "health_check": check,
            },
            {
                "name": "p-secondary",
                "type": "anthropic",
                "base_url": f"{fake}/anthropic/v1",
                "api_key_env": "BENCH_ANTHROPIC_KEY",
                "health_check": check,
            },
        ],
        "models": [
            # Client model == upstream model: the body is forwarded byte for byte.
            {
                "name": MODEL_PASSTHROUGH,
                "targets": [{"provider": "p-openai", "model": MODEL_PASSTHROUGH}],
            },
            {
                "name": MODEL_ANTHROPIC,
                "targets": [{"provider": "p-anthropic", "model": "claude-bench"}],
            },
            # Model rewrite (body re-serialized), failover to another provider type.
            {
                "name": MODEL_ALL,
                "targets": [
                    {"provider": "p-primary", "model": MODEL_ALL_UPSTREAM},
                    {"provider": "p-secondary", "model": "claude-bench"},
                ],
            },
        ],
        "tenants": [
            {"name": "bench", "api_key_sha256": [hash_key(CLIENT_KEY)]},
            {
                "name": "bench-rbac",
                "api_key_sha256": [hash_key(RBAC_KEY)],
                "allowed_models": [MODEL_PASSTHROUGH, MODEL_ALL],
            },
        ],
    }


def plain_bootstrap(
    listen_port: int, admin_port: int, fake_port: int, ext_proc_socket: Path | None = None
) -> dict[str, Any]:
    """A minimal Envoy: listener -> router -> one STATIC cluster (the fake).

    With `ext_proc_socket`, an ext_proc filter before the router sends the gateway's
    pass-through phases (request headers, buffered request body, response headers) to the
    server on that unix socket: the floor scenario, with the same Envoy runtime flags as the
    gateway's bootstrap (Envoy waits for the server's closing status instead of resetting).
    """

    def address(port: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "plain",
        "codec_type": "AUTO",
        "route_config": {
            "name": "plain",
            "virtual_hosts": [
                {
                    "name": "fake",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "fake", "timeout": "120s"}}
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    clusters: list[dict[str, Any]] = [
        {
            "name": "fake",
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": "fake",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(fake_port)}}]}],
            },
        }
    ]
    runtime: dict[str, Any] = {}
    if ext_proc_socket is not None:
        hcm["http_filters"].insert(0, _floor_ext_proc_filter())
        clusters.append(_floor_ext_proc_cluster(ext_proc_socket))
        runtime = {
            "layered_runtime": {"layers": [{"name": "gateway", "static_layer": RUNTIME_FLAGS}]}
        }
    return {
        **runtime,
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "plain",
                    "address": address(listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _floor_ext_proc_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
            "ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "floor_ext_proc"}, "timeout": "2s"},
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "message_timeout": "2s",
        },
    }


def _floor_ext_proc_cluster(socket_path: Path) -> dict[str, Any]:
    return {
        "name": "floor_ext_proc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "floor_ext_proc",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(socket_path)}}}}]}
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


# --- the running system ----------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One scenario: where to send which request, and which processes serve it."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    envoy_pid: int
    processor_pid: int | None


@dataclass
class System:
    """The processes of one run and the scenarios they serve."""

    fake_pid: int
    processor_pid: int
    targets: dict[str, Target]
    anthropic_plain: Target  # plain Envoy straight to the fake's Messages API (reference)


def chat_body(model: str, content: str = "hello", *, stream: bool = False) -> bytes:
    """The benchmark's chat completion request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def anthropic_body(content: str = "hello", *, stream: bool = False) -> bytes:
    """An Anthropic Messages request, for plain Envoy's reference stream."""
    body: dict[str, Any] = {
        "model": "claude-bench",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def start_system(workdir: Path) -> System:
    """Fake, processor + gateway Envoy, plain Envoy; returns once every scenario answers 200."""
    fake, fake_port = start_fake(workdir)
    fake_url = f"http://127.0.0.1:{fake_port}"
    log(f"fake provider (pid {fake.pid}) on {fake_url}, {STREAM_EVENTS}-event streams")

    config = gateway_config(fake_url, workdir)
    config_path = workdir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    rendered = render_yaml(load_config(config_path, resolve_credentials=False).config)
    gateway_bootstrap = workdir / "gateway-envoy.yaml"
    gateway_bootstrap.write_text(rendered, encoding="utf-8")

    processor = start_processor(config_path, workdir)
    admin = f"http://127.0.0.1:{config['processor']['admin_port']}"
    wait_until_ok(f"{admin}/readyz", 30, processor)
    gateway_envoy = start_tracked_envoy(gateway_bootstrap, workdir / "gateway-envoy.log")
    gateway = f"http://127.0.0.1:{config['listener']['port']}"
    wait_until_ok(f"{gateway}/health", 30, gateway_envoy)
    log(f"processor (pid {processor.pid}) and gateway Envoy (pid {gateway_envoy.pid}) on {gateway}")

    plain_port = free_port()
    plain_bootstrap_path = workdir / "plain-envoy.yaml"
    plain_bootstrap_path.write_text(
        yaml.safe_dump(plain_bootstrap(plain_port, free_port(), fake_port)), encoding="utf-8"
    )
    plain_envoy = start_tracked_envoy(plain_bootstrap_path, workdir / "plain-envoy.log")
    plain = f"http://127.0.0.1:{plain_port}"
    log(f"plain Envoy (pid {plain_envoy.pid}) on {plain}")

    floor_socket = workdir / "floor.sock"
    floor_processor = spawn(
        [sys.executable, str(ROOT / "bench" / "floor_processor.py"), "--socket", str(floor_socket)],
        workdir / "floor-processor.log",
    )
    floor_port = free_port()
    floor_bootstrap_path = workdir / "floor-envoy.yaml"
    floor_bootstrap_path.write_text(
        yaml.safe_dump(plain_bootstrap(floor_port, free_port(), fake_port, floor_socket)),
        encoding="utf-8",
    )
    floor_envoy = start_tracked_envoy(floor_bootstrap_path, workdir / "floor-envoy.log")
    floor = f"http://127.0.0.1:{floor_port}"
    log(f"floor: empty Python ext_proc (pid {floor_processor.pid}) and its Envoy on {floor}")

    auth = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    chat = "/v1/chat/completions"
    targets = {
        PLAIN: Target(
            PLAIN, plain + chat, chat_body(MODEL_PASSTHROUGH), auth, plain_envoy.pid, None
        ),
        FLOOR: Target(
            FLOOR,
            floor + chat,
            chat_body(MODEL_PASSTHROUGH),
            auth,
            floor_envoy.pid,
            floor_processor.pid,
        ),
        PASSTHROUGH: Target(
            PASSTHROUGH,
            gateway + chat,
            chat_body(MODEL_PASSTHROUGH),
            auth,
            gateway_envoy.pid,
            processor.pid,
        ),
        ANTHROPIC: Target(
            ANTHROPIC,
            gateway + chat,
            chat_body(MODEL_ANTHROPIC),
            auth,
            gateway_envoy.pid,
            processor.pid,
        ),
        ALL_FEATURES: Target(
            ALL_FEATURES,
            gateway + chat,
            chat_body(MODEL_ALL),
            # A tenant with an explicit model list (RBAC) and a per-request timeout header.
            {**auth, "Authorization": f"Bearer {RBAC_KEY}", "x-gateway-timeout": "30"},
            gateway_envoy.pid,
            processor.pid,
        ),
    }
    anthropic_plain = Target(
        ANTHROPIC_REFERENCE,
        plain + "/anthropic/v1/messages",
        anthropic_body(),
        {"x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01", **auth},
        plain_envoy.pid,
        None,
    )
    for target in [*targets.values(), anthropic_plain]:
        wait_for_200(target)
    return System(fake.pid, processor.pid, targets, anthropic_plain)


def wait_for_200(target: Target, timeout: float = 30) -> None:
    """Retry one request until it answers 200 (Envoy's first health checks take a moment)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.post(target.url, content=target.body, headers=target.headers)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{target.name} does not answer 200 ({last})")


# --- load with hey ---------------------------------------------------------------------------


@dataclass
class HeyResult:
    """What one hey run reported (latencies in ms)."""

    responses: int
    total_s: float
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    status: dict[str, int]
    errors: dict[str, int]

    @property
    def non_200(self) -> int:
        """Responses other than 200 plus requests that got no response at all."""
        others = sum(n for code, n in self.status.items() if code != "200")
        return others + sum(self.errors.values())


_PCT_RE = re.compile(r"^\s*(\d+)% in ([\d.]+) secs", re.M)
_STATUS_RE = re.compile(r"^\s*\[(\d+)\]\s+(\d+) responses", re.M)


def parse_hey(text: str) -> HeyResult:
    """Parse hey's text report (Debian's hey 0.1.4; percentiles have 0.1 ms resolution)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"Total:\s+([\d.]+) secs", text)
    # hey prints a bogus "0% in 0.0000 secs" for a percentile it could not reach (few samples).
    pcts = {int(p): float(s) * 1000 for p, s in _PCT_RE.findall(text) if int(p) > 0}
    status = {code: int(n) for code, n in _STATUS_RE.findall(text)}
    errors: dict[str, int] = {}
    if "Error distribution:" in text:
        for line in text.split("Error distribution:", 1)[1].splitlines():
            match = re.match(r"\s*\[(\d+)\]\s+(.*)", line)
            if match:
                errors[match.group(2).strip()] = int(match.group(1))
    return HeyResult(
        responses=sum(status.values()),
        total_s=float(total.group(1)) if total else 0.0,
        rps=float(rps.group(1)) if rps else 0.0,
        p50_ms=pcts.get(50),
        p95_ms=pcts.get(95),
        p99_ms=pcts.get(99),
        status=status,
        errors=errors,
    )


def percentile(ordered: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


@dataclass
class CsvRun:
    """One `hey -o csv` run: latencies (ms), status counts, wall span (s), requests sent."""

    latencies: list[float]
    status: dict[str, int]
    span_s: float
    sent: int


def pooled(runs: Sequence[CsvRun]) -> HeyResult:
    """One HeyResult from several CSV runs: latencies pooled, statuses summed."""
    latencies = sorted(x for run in runs for x in run.latencies)
    status: dict[str, int] = {}
    for run in runs:
        for code, count in run.status.items():
            status[code] = status.get(code, 0) + count
    span = sum(run.span_s for run in runs)
    missing = sum(run.sent for run in runs) - len(latencies)
    return HeyResult(
        responses=len(latencies),
        total_s=span,
        rps=len(latencies) / span if span else 0.0,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        status=status,
        errors={"no response (transport error)": missing} if missing else {},
    )


class Hey:
    """Runs hey against a target."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def run(
        self, target: Target, clients: int, *, seconds: int = 0, requests: int = 0
    ) -> HeyResult:
        """`hey -c clients -z seconds` (or `-n requests`): hey's own summary, parsed."""
        return parse_hey(self._hey(target, clients, seconds, requests, as_csv=False))

    def run_csv(self, target: Target, clients: int, requests: int) -> CsvRun:
        """`hey -c clients -n requests -o csv`, every request's latency kept.

        hey leaves failed requests out of its CSV: requests sent - rows = transport errors.
        """
        text = self._hey(target, clients, 0, requests, as_csv=True)
        rows = list(csv.DictReader(io.StringIO(text)))
        latencies = [float(r["response-time"]) * 1000 for r in rows]
        status: dict[str, int] = {}
        for row in rows:
            status[row["status-code"]] = status.get(row["status-code"], 0) + 1
        span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=0.0)
        return CsvRun(latencies, status, span, requests)

    def _hey(
        self, target: Target, clients: int, seconds: int, requests: int, *, as_csv: bool
    ) -> str:
        argv = [self.binary, "-c", str(clients), "-m", "POST", "-t", "30"]
        argv += ["-z", f"{seconds}s"] if seconds else ["-n", str(requests)]
        argv += ["-o", "csv"] if as_csv else []
        argv += ["-d", target.body.decode()]
        for name, value in target.headers.items():
            argv += ["-T", value] if name == "Content-Type" else ["-H", f"{name}: {value}"]
        argv.append(target.url)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _CHILDREN.append(proc)
        try:
            out, err = proc.communicate(timeout=(seconds or 900) + 60)
        finally:
            stop_process(proc)
            _CHILDREN.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"hey failed ({proc.returncode}): {err.decode().strip()}")
        return out.decode()


@dataclass
class ScenarioResult:
    """Figures of one scenario."""

    name: str
    one_client: HeyResult
    eight_clients: HeyResult
    processor_cpu_ms_per_req: float | None
    envoy_cpu_ms_per_req: float
    fake_cpu_ms_per_req: float


def measure_load(hey: Hey, system: System, s: Settings) -> dict[str, ScenarioResult]:
    """Warm-up, then 1 client (latency) and 8 clients (throughput, latency, CPU per request).

    Both loads run in rounds that cycle through every scenario, so a transient slowdown of the
    machine hits all scenarios alike instead of skewing one scenario's comparison with plain
    Envoy. The 8-client slices are sized from the warm-up's rate to last about
    `eight_client_slice_s` each; CPU is read before and after each slice.
    """
    names = (PLAIN, FLOOR, PASSTHROUGH, ANTHROPIC, ALL_FEATURES)
    targets = [system.targets[name] for name in names]
    slice_requests = {}
    for target in targets:
        warm = hey.run(target, 8, seconds=s.warmup_s)
        # A multiple of 8: hey gives each client requests // clients and drops the remainder.
        slice_requests[target.name] = max(25, round(warm.rps * s.eight_client_slice_s / 8)) * 8
        log(f"{target.name}: warmed up ({s.warmup_s}s at 8 clients, {warm.rps:.0f} req/s)")

    log(f"1 client: {s.one_client_rounds} rounds of {s.one_client_requests} requests per scenario")
    one: dict[str, list[CsvRun]] = {t.name: [] for t in targets}
    for _ in range(s.one_client_rounds):
        for target in targets:
            one[target.name].append(hey.run_csv(target, 1, s.one_client_requests))

    log(f"8 clients: {s.eight_client_rounds} rounds of ~{s.eight_client_slice_s:g}s per scenario")
    eight: dict[str, list[CsvRun]] = {t.name: [] for t in targets}
    cpu = {t.name: [0.0, 0.0, 0.0] for t in targets}  # processor, Envoy, fake
    for _ in range(s.eight_client_rounds):
        for target in targets:
            processor = target.processor_pid or system.processor_pid
            pids = [processor, target.envoy_pid, system.fake_pid]
            before = [cpu_seconds(pid) for pid in pids]
            eight[target.name].append(hey.run_csv(target, 8, slice_requests[target.name]))
            for index, pid in enumerate(pids):
                cpu[target.name][index] += cpu_seconds(pid) - before[index]

    results = {}
    for target in targets:
        one_client, eight_clients = pooled(one[target.name]), pooled(eight[target.name])
        per_req = [c * 1000 / max(1, eight_clients.responses) for c in cpu[target.name]]
        results[target.name] = ScenarioResult(
            target.name,
            one_client,
            eight_clients,
            per_req[0] if target.processor_pid is not None else None,
            per_req[1],
            per_req[2],
        )
        log(
            f"{target.name}: {eight_clients.rps:.0f} req/s at 8 clients, p50 "
            f"{fmt(one_client.p50_ms)} ms at 1 client, "
            f"non-200: {one_client.non_200 + eight_clients.non_200}"
        )
    return results


# --- streaming and the 1 MB prompt (httpx) ----------------------------------------------------


@dataclass
class StreamResult:
    """Medians over sequential streamed requests (ms)."""

    name: str
    runs: int
    ttft_ms: float | None
    ttlt_ms: float | None
    events: int
    failures: int


def _has_content(event: bytes) -> bool:
    """True for an SSE event carrying text: an OpenAI delta, or Anthropic's own text_delta."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        try:
            data = json.loads(line[5:])
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        choices = data.get("choices")
        if choices and isinstance(choices[0], dict):
            return bool((choices[0].get("delta") or {}).get("content"))
        delta = data.get("delta")
        return isinstance(delta, dict) and bool(delta.get("text"))
    return False


def stream_once(client: httpx.Client, target: Target) -> tuple[float, float, int]:
    """Time to the first content event, to the last byte, and the number of events."""
    start = time.perf_counter()
    ttft = 0.0
    last = start
    events = 0
    buffer = b""
    with client.stream("POST", target.url, content=target.body, headers=target.headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {r.status_code}")
        for chunk in r.iter_raw():
            last = time.perf_counter()
            events += chunk.count(b"data:")
            if not ttft:
                buffer += chunk
                while b"\n\n" in buffer and not ttft:
                    event, buffer = buffer.split(b"\n\n", 1)
                    if _has_content(event):
                        ttft = last - start
    if not ttft:
        raise RuntimeError(f"{target.name}: no content event in the stream")
    return ttft * 1000, (last - start) * 1000, events


def measure_streams(targets: Sequence[Target], runs: int) -> list[StreamResult]:
    """Sequential streams, interleaved across targets so drift hits all of them alike."""
    samples: dict[str, list[tuple[float, float, int]]] = {t.name: [] for t in targets}
    failures = dict.fromkeys(samples, 0)
    with httpx.Client(timeout=30) as client:
        for index in range(runs + 3):  # three warm-up rounds
            for target in targets:
                try:
                    sample = stream_once(client, target)
                except (RuntimeError, httpx.HTTPError):
                    failures[target.name] += 1
                    continue
                if index >= 3:
                    samples[target.name].append(sample)
    return [
        StreamResult(
            t.name,
            len(samples[t.name]),
            median([s[0] for s in samples[t.name]]),
            median([s[1] for s in samples[t.name]]),
            max((s[2] for s in samples[t.name]), default=0),
            failures[t.name],
        )
        for t in targets
    ]


def median(values: Sequence[float]) -> float | None:
    """The median, or None without samples."""
    return statistics.median(values) if values else None


def big_prompt_body(model: str) -> bytes:
    """A chat request whose prompt makes the body about 1 MB (plain words)."""
    words = "the quick brown fox jumps over the lazy dog "
    content = (words * (ONE_MB // len(words) + 1))[: ONE_MB - 200]
    return chat_body(model, content)


def measure_big(targets: Sequence[Target], runs: int) -> dict[str, dict[str, Any]]:
    """Median latency of a ~1 MB request per target, sequential and interleaved."""
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    failures = dict.fromkeys(samples, 0)
    with httpx.Client(timeout=60) as client:
        for index in range(runs + 2):  # two warm-up rounds
            for target in targets:
                start = time.perf_counter()
                response = client.post(target.url, content=target.body, headers=target.headers)
                elapsed = (time.perf_counter() - start) * 1000
                if response.status_code != 200:
                    failures[target.name] += 1
                elif index >= 2:
                    samples[target.name].append(elapsed)
    return {
        name: {
            "runs": len(values),
            "median_ms": median(values),
            "failures": failures[name],
            "body_bytes": len(next(t.body for t in targets if t.name == name)),
        }
        for name, values in samples.items()
    }


# --- report ----------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for the tables; '-' when missing."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def minus(a: float | None, b: float | None) -> float | None:
    """a - b, or None when either is missing."""
    return None if a is None or b is None else a - b


def markdown(headers: Sequence[str], rows: Iterator[Sequence[str]] | list[list[str]]) -> str:
    """A Markdown table with padded columns."""
    body = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in body) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured figure and PASS/MISS."""
    scenarios = report["scenarios"]
    plain, passthrough = scenarios[PLAIN], scenarios[PASSTHROUGH]
    streams = {s["name"]: s for s in report["streaming"]}
    values: dict[str, float | None] = {
        "throughput_ratio": passthrough["eight_clients"]["rps"]
        / max(plain["eight_clients"]["rps"], 1e-9),
        "added_p50_1c": minus(passthrough["one_client"]["p50_ms"], plain["one_client"]["p50_ms"]),
        "added_p99_1c": minus(passthrough["one_client"]["p99_ms"], plain["one_client"]["p99_ms"]),
        "added_p50_anthropic": minus(
            scenarios[ANTHROPIC]["one_client"]["p50_ms"], plain["one_client"]["p50_ms"]
        ),
        "added_ttft": minus(streams[PASSTHROUGH]["ttft_ms"], streams[PLAIN]["ttft_ms"]),
        "added_1mb": minus(
            report["big_prompt"][PASSTHROUGH]["median_ms"], report["big_prompt"][PLAIN]["median_ms"]
        ),
        "rss_growth": report["memory"]["growth_pct"],
    }
    checks: dict[str, Callable[[float], bool]] = {
        "throughput_ratio": lambda v: v >= 0.35,
        "added_p50_1c": lambda v: v <= 0.5,
        "added_p99_1c": lambda v: v <= 2.0,
        "added_p50_anthropic": lambda v: v <= 1.0,
        "added_ttft": lambda v: v <= 1.0,
        "added_1mb": lambda v: v <= 10.0,
        "rss_growth": lambda v: v < 10.0,
    }
    units = {"throughput_ratio": "", "rss_growth": " %"}
    out = []
    for key, description, threshold in TARGETS:
        value = values[key]
        verdict = "PASS" if value is not None and checks[key](value) else "MISS"
        measured = fmt(value) + units.get(key, " ms") if value is not None else "-"
        out.append(
            {
                "key": key,
                "target": description,
                "threshold": threshold,
                "measured": value,
                "measured_text": measured,
                "verdict": verdict,
            }
        )
    return out


def render_tables(report: dict[str, Any]) -> str:
    """The side-by-side tables (Markdown), targets last."""
    scenarios = report["scenarios"]
    plain = scenarios[PLAIN]
    parts = []

    def added(name: str, run: str, pct: str) -> str:
        if name == PLAIN:
            return "—"
        return fmt(minus(scenarios[name][run][pct], plain[run][pct]))

    parts.append(
        "Latency at 1 client (ms, 0.1 ms resolution; interleaved rounds; "
        "added = scenario - plain-envoy)"
    )
    rows = []
    for name, s in scenarios.items():
        one = s["one_client"]
        rows.append(
            [name, fmt(one["rps"], 0)]
            + [fmt(one[p]) for p in ("p50_ms", "p95_ms", "p99_ms")]
            + [added(name, "one_client", p) for p in ("p50_ms", "p95_ms", "p99_ms")]
            + [str(one["non_200"])]
        )
    parts.append(
        markdown(
            ["scenario", "req/s", "p50", "p95", "p99", "+p50", "+p95", "+p99", "non-200"], rows
        )
    )

    parts.append(
        "\nThroughput and latency at 8 clients (ms; interleaved rounds; "
        "CPU = ms of CPU per request)"
    )
    rows = []
    for name, s in scenarios.items():
        eight = s["eight_clients"]
        ratio = eight["rps"] / max(plain["eight_clients"]["rps"], 1e-9)
        rows.append(
            [name, fmt(eight["rps"], 0), fmt(ratio)]
            + [fmt(eight[p]) for p in ("p50_ms", "p95_ms", "p99_ms")]
            + [added(name, "eight_clients", p) for p in ("p50_ms", "p99_ms")]
            + [
                fmt(s["processor_cpu_ms_per_req"], 3),
                fmt(s["envoy_cpu_ms_per_req"], 3),
                fmt(s["fake_cpu_ms_per_req"], 3),
                str(eight["non_200"]),
            ]
        )
    parts.append(
        markdown(
            [
                "scenario",
                "req/s",
                "vs plain",
                "p50",
                "p95",
                "p99",
                "+p50",
                "+p99",
                "processor CPU",
                "Envoy CPU",
                "fake CPU",
                "non-200",
            ],
            rows,
        )
    )

    streams = report["streaming"]
    base = next(s for s in streams if s["name"] == PLAIN)
    parts.append(
        f"\nStreaming, {STREAM_EVENTS} content events, sequential (medians in ms; "
        "added = vs plain-envoy OpenAI stream)"
    )
    parts.append(
        markdown(
            ["path", "runs", "TTFT", "TTLT", "+TTFT", "+TTLT", "events", "failures"],
            [
                [
                    s["name"],
                    str(s["runs"]),
                    fmt(s["ttft_ms"]),
                    fmt(s["ttlt_ms"]),
                    *(
                        ["—", "—"]
                        if s["name"] in (PLAIN, ANTHROPIC_REFERENCE)
                        else [
                            fmt(minus(s["ttft_ms"], base["ttft_ms"])),
                            fmt(minus(s["ttlt_ms"], base["ttlt_ms"])),
                        ]
                    ),
                    str(s["events"]),
                    str(s["failures"]),
                ]
                for s in streams
            ],
        )
    )

    big = report["big_prompt"]
    parts.append("\n1 MB prompt, sequential (median ms)")
    parts.append(
        markdown(
            ["path", "runs", "median", "added", "failures"],
            [
                [
                    name,
                    str(b["runs"]),
                    fmt(b["median_ms"]),
                    "—" if name == PLAIN else fmt(minus(b["median_ms"], big[PLAIN]["median_ms"])),
                    str(b["failures"]),
                ]
                for name, b in big.items()
            ],
        )
    )

    mem = report["memory"]
    parts.append(
        f"\nProcessor memory over {mem['requests']} requests (gateway-passthrough, 8 clients)"
    )
    parts.append(
        markdown(
            ["RSS at start", "RSS before", "RSS after", "growth", "per 1k req", "req/s", "non-200"],
            [
                [
                    f"{mem['rss_start_kib'] / 1024:.1f} MiB",
                    f"{mem['rss_before_kib'] / 1024:.1f} MiB",
                    f"{mem['rss_after_kib'] / 1024:.1f} MiB",
                    f"{mem['growth_pct']:.2f} %",
                    f"{mem['growth_kib_per_1k_requests']:.0f} KiB",
                    fmt(mem["rps"], 0),
                    str(mem["non_200"]),
                ]
            ],
        )
    )

    parts.append("\nTargets (from the issue)")
    parts.append(
        markdown(
            ["target", "threshold", "measured", "result"],
            [
                [t["target"], t["threshold"], t["measured_text"], t["verdict"]]
                for t in report["targets"]
            ],
        )
    )
    return "\n".join(parts)


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, kernel, Python, Envoy and hey versions."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy = subprocess.run(
        [str(find_envoy_binary()), "--version"], capture_output=True, text=True
    ).stdout
    version = re.search(r"version: \S+/([\d.]+)", envoy)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "envoy": version.group(1) if version else envoy.strip(),
    }


def write_results(report: dict[str, Any]) -> Path:
    """`bench/results/<UTC timestamp>.json` and `latest.json`, each written atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    path = RESULTS_DIR / f"{stamp}.json"
    for destination in (path, RESULTS_DIR / "latest.json"):
        tmp = destination.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(destination)
    return path


# --- main ------------------------------------------------------------------------------------


def run(settings: Settings, hey_binary: str, workdir: Path) -> dict[str, Any]:
    """Start everything, measure every section, and return the report."""
    system = start_system(workdir)
    rss_start = rss_kib(system.processor_pid)
    hey = Hey(hey_binary)
    report: dict[str, Any] = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "machine": machine_info(),
        "scenarios": {},
    }

    for name, result in measure_load(hey, system, settings).items():
        entry = asdict(result)
        for run_name, run_result in (
            ("one_client", result.one_client),
            ("eight_clients", result.eight_clients),
        ):
            entry[run_name]["non_200"] = run_result.non_200
        report["scenarios"][name] = entry

    # Right after the load, before the 1 MB bodies inflate the heap: "before" is the warm state.
    report["memory"] = measure_memory(hey, system, settings.memory_requests, rss_start)

    log(f"streaming: {settings.stream_runs} sequential streams per path")
    stream_targets = [
        _with_body(system.targets[PLAIN], chat_body(MODEL_PASSTHROUGH, stream=True)),
        _with_body(system.anthropic_plain, anthropic_body(stream=True)),
        _with_body(system.targets[PASSTHROUGH], chat_body(MODEL_PASSTHROUGH, stream=True)),
        _with_body(system.targets[ANTHROPIC], chat_body(MODEL_ANTHROPIC, stream=True)),
    ]
    report["streaming"] = [asdict(s) for s in measure_streams(stream_targets, settings.stream_runs)]

    log(f"1 MB prompt: {settings.big_runs} sequential requests per path")
    big = big_prompt_body(MODEL_PASSTHROUGH)
    report["big_prompt"] = measure_big(
        [_with_body(system.targets[PLAIN], big), _with_body(system.targets[PASSTHROUGH], big)],
        settings.big_runs,
    )

    report["targets"] = evaluate_targets(report)
    report["log_lines"] = log_lines(workdir)
    return report


def measure_memory(hey: Hey, system: System, n: int, rss_start: int) -> dict[str, Any]:
    """Processor RSS before and after `n` passthrough requests at 8 clients."""
    log(f"memory: {n} requests at 8 clients against {PASSTHROUGH}")
    rss_before = rss_kib(system.processor_pid)
    memory_run = hey.run(system.targets[PASSTHROUGH], 8, requests=n)
    time.sleep(1)
    rss_after = rss_kib(system.processor_pid)
    return {
        "requests": n,
        "rss_start_kib": rss_start,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "growth_pct": (rss_after - rss_before) * 100 / rss_before,
        "growth_kib_per_1k_requests": (rss_after - rss_before) * 1000 / n,
        "rps": memory_run.rps,
        "non_200": memory_run.non_200,
        "status": memory_run.status,
        "errors": memory_run.errors,
    }


def log_lines(workdir: Path, limit: int = 20) -> dict[str, list[str]]:
    """What the processor and the Envoys logged (at WARNING and above) during the run."""
    found = {}
    for name in ("processor.log", "gateway-envoy.log", "plain-envoy.log", "fake.log"):
        path = workdir / name
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        if lines:
            found[name] = lines[:limit]
        if lines and not name.endswith("envoy.log"):  # Envoy warns once about connection limits
            log(f"note: {name} has {len(lines)} line(s), e.g. {lines[0][:160]}")
    return found


def _with_body(target: Target, body: bytes) -> Target:
    return Target(
        target.name, target.url, body, target.headers, target.envoy_pid, target.processor_pid
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="shorter durations and fewer runs (< 2 min)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it measured (targets missed or not), 1 when it could not."""
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _raise_interrupt)
    hey_binary = ensure_hey()
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
    log(f"benchmark ({settings.mode}) on {os.cpu_count()} CPUs; logs in {workdir}")
    ok = False
    try:
        report = run(settings, hey_binary, workdir)
        report["wall_time_s"] = round(time.monotonic() - _T0, 1)
        path = write_results(report)
        print()
        print(render_tables(report))
        print(f"\nwall time {report['wall_time_s']} s; results in {path.relative_to(ROOT)}")
        ok = True
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
