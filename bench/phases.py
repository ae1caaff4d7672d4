"""The floor by ext_proc phases: what a do-nothing Python ext_proc costs per message.

Plain Envoy, then the same Envoy with an ext_proc filter sending 3, 2 or 1 messages per request,
each answered by `bench/floor_processor.py` (grpc.aio on uvloop, decides nothing, closes the
stream after the last phase). Prints latency at 1 client and throughput and processor CPU at 8
clients, side by side. It shows how low any Python ext_proc design could go on this machine;
`docs/performance.md` has the figures. Not part of `make bench`; about a minute.

Usage: .venv/bin/python bench/phases.py
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

# name -> (processing mode, the phase after which the server closes the stream)
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "3 messages: request headers, body, response headers (the gateway's pass-through)": (
        {"request_header_mode": "SEND", "request_body_mode": "BUFFERED"},
        "response_headers",
    ),
    "2 messages: request headers, body": (
        {"request_body_mode": "BUFFERED", "response_header_mode": "SKIP"},
        "request_body",
    ),
    "1 message: request headers": (
        {"request_body_mode": "NONE", "response_header_mode": "SKIP"},
        "request_headers",
    ),
    "1 message: request body (headers not sent)": (
        {
            "request_header_mode": "SKIP",
            "request_body_mode": "BUFFERED",
            "response_header_mode": "SKIP",
        },
        "request_body",
    ),
}
ROUNDS = 4
ONE_CLIENT_REQUESTS = 500
EIGHT_CLIENT_REQUESTS = 8000


def start_variant(
    workdir: Path, fake_port: int, name: str, mode: dict[str, str], last_phase: str
) -> bench.Target:
    """A floor processor and its Envoy, with `mode` merged into the filter's processing mode."""
    index = list(VARIANTS).index(name)
    socket_path = workdir / f"floor{index}.sock"
    processor = bench.spawn(
        [
            sys.executable,
            str(bench.ROOT / "bench" / "floor_processor.py"),
            "--socket",
            str(socket_path),
            "--last-phase",
            last_phase,
        ],
        workdir / f"floor{index}.log",
    )
    port = bench.free_port()
    bootstrap: dict[str, Any] = bench.plain_bootstrap(
        port, bench.free_port(), fake_port, socket_path
    )
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"]["processing_mode"].update(mode)
    path = workdir / f"floor{index}-envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap), encoding="utf-8")
    envoy = bench.start_tracked_envoy(path, workdir / f"floor{index}-envoy.log")
    target = bench.Target(
        name,
        f"http://127.0.0.1:{port}/v1/chat/completions",
        bench.chat_body("m"),
        {"content-type": "application/json"},
        envoy.pid,
        processor.pid,
    )
    bench.wait_for_200(target)
    return target


def measure(workdir: Path) -> list[list[str]]:
    """Start everything, measure, and return the table rows."""
    _, fake_port = bench.start_fake(workdir)
    port = bench.free_port()
    plain_path = workdir / "plain-envoy.yaml"
    plain_path.write_text(
        yaml.safe_dump(bench.plain_bootstrap(port, bench.free_port(), fake_port)), encoding="utf-8"
    )
    envoy = bench.start_tracked_envoy(plain_path, workdir / "plain-envoy.log")
    plain = bench.Target(
        bench.PLAIN,
        f"http://127.0.0.1:{port}/v1/chat/completions",
        bench.chat_body("m"),
        {"content-type": "application/json"},
        envoy.pid,
        None,
    )
    bench.wait_for_200(plain)
    targets = [plain] + [
        start_variant(workdir, fake_port, name, mode, last)
        for name, (mode, last) in VARIANTS.items()
    ]
    hey = bench.Hey(bench.ensure_hey())
    one: dict[str, list[bench.CsvRun]] = {t.name: [] for t in targets}
    for _ in range(ROUNDS):  # interleaved, so drift hits every row alike
        for target in targets:
            one[target.name].append(hey.run_csv(target, 1, ONE_CLIENT_REQUESTS))
    eight: dict[str, list[bench.CsvRun]] = {t.name: [] for t in targets}
    cpu: dict[str, float] = {t.name: 0.0 for t in targets}
    for _ in range(ROUNDS // 2):
        for target in targets:
            pid = target.processor_pid
            before = bench.cpu_seconds(pid) if pid else 0.0
            eight[target.name].append(hey.run_csv(target, 8, EIGHT_CLIENT_REQUESTS))
            cpu[target.name] += bench.cpu_seconds(pid) - before if pid else 0.0
    plain_one = bench.pooled(one[plain.name])
    plain_rps = bench.pooled(eight[plain.name]).rps
    rows = []
    for target in targets:
        latency = bench.pooled(one[target.name])
        load = bench.pooled(eight[target.name])
        sent = sum(run.sent for run in eight[target.name])
        is_plain = target is plain
        rows.append(
            [
                target.name,
                bench.fmt(latency.p50_ms, 1),
                "—" if is_plain else bench.fmt(bench.minus(latency.p50_ms, plain_one.p50_ms), 1),
                bench.fmt(latency.p99_ms, 1),
                bench.fmt(load.rps, 0),
                bench.fmt(load.rps / plain_rps),
                "-" if is_plain else bench.fmt(cpu[target.name] * 1000 / sent, 3),
                str(latency.non_200 + load.non_200),
            ]
        )
    return rows


def main() -> int:
    """Run once; 0 when it measured, 1 when it could not."""
    signal.signal(signal.SIGTERM, bench._raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-phases-"))
    started = time.monotonic()
    try:
        rows = measure(workdir)
    except (RuntimeError, TimeoutError, OSError, KeyboardInterrupt) as exc:
        print(f"phases bench failed: {exc!r}; logs kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        bench.stop_all()
    shutil.rmtree(workdir, ignore_errors=True)
    headers = [
        "Envoy + do-nothing grpc.aio ext_proc",
        "p50, 1 client (ms)",
        "added p50",
        "p99",
        "req/s, 8 clients",
        "vs plain",
        "processor CPU (ms/request)",
        "non-200",
    ]
    print(bench.markdown(headers, rows))
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
