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
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hey import CsvRun, Hey, ensure_hey, pooled
from bench.measure import cpu_seconds
from bench.report import fmt, markdown, minus
from bench.systems import (
    PLAIN,
    bench_fake,
    chat_body,
    start_floor,
    start_plain_envoy,
    wait_for_200,
)
from extproc.dev.stack import ProcessGroup, interrupt_on_signals

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


def measure(workdir: Path, children: ProcessGroup) -> list[list[str]]:
    """Start everything (tracked by `children`), measure, and return the table rows."""
    fake = children.add(bench_fake(workdir)).start()
    headers = {"content-type": "application/json"}
    chat = "/v1/chat/completions"
    plain = start_plain_envoy(children, workdir, fake.port).target(
        PLAIN, chat, chat_body("m"), headers
    )
    targets = [plain]
    for index, (name, (mode, last_phase)) in enumerate(VARIANTS.items()):
        floor = start_floor(children, workdir, fake.port, f"floor{index}", mode, last_phase)
        targets.append(floor.target(name, chat, chat_body("m"), headers))
    for target in targets:
        wait_for_200(target)
    hey = Hey(ensure_hey())
    one: dict[str, list[CsvRun]] = {t.name: [] for t in targets}
    for _ in range(ROUNDS):  # interleaved, so drift hits every row alike
        for target in targets:
            one[target.name].append(hey.run_csv(target, 1, ONE_CLIENT_REQUESTS))
    eight: dict[str, list[CsvRun]] = {t.name: [] for t in targets}
    cpu: dict[str, float] = {t.name: 0.0 for t in targets}
    for _ in range(ROUNDS // 2):
        for target in targets:
            pid = target.processor_pid
            before = cpu_seconds(pid) if pid else 0.0
            eight[target.name].append(hey.run_csv(target, 8, EIGHT_CLIENT_REQUESTS))
            cpu[target.name] += cpu_seconds(pid) - before if pid else 0.0
    plain_one = pooled(one[plain.name])
    plain_rps = pooled(eight[plain.name]).rps
    rows = []
    for target in targets:
        latency = pooled(one[target.name])
        load = pooled(eight[target.name])
        sent = sum(run.sent for run in eight[target.name])
        is_plain = target is plain
        rows.append(
            [
                target.name,
                fmt(latency.p50_ms, 1),
                "—" if is_plain else fmt(minus(latency.p50_ms, plain_one.p50_ms), 1),
                fmt(latency.p99_ms, 1),
                fmt(load.rps, 0),
                fmt(load.rps / plain_rps),
                "-" if is_plain else fmt(cpu[target.name] * 1000 / sent, 3),
                str(latency.non_200 + load.non_200),
            ]
        )
    return rows


def main() -> int:
    """Run once; 0 when it measured, 1 when it could not."""
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-phases-"))
    started = time.monotonic()
    children = ProcessGroup()
    with interrupt_on_signals():
        try:
            rows = measure(workdir, children)
        except (RuntimeError, TimeoutError, OSError, KeyboardInterrupt) as exc:
            print(f"phases bench failed: {exc!r}; logs kept in {workdir}", file=sys.stderr)
            return 1
        finally:
            children.stop()
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
    print(markdown(headers, rows))
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
