"""Overload figures (`make bench-overload`): what the processor's admission control does to the
requests it admits when more clients come than a replica can serve.

One fake provider process (50 ms per answer) and, in turn, two gateways on the lean
pass-through config: one with `processor.max_in_flight` far above the load (nothing is shed:
every request waits its turn in the processor's event loop and in Envoy) and one with a small
bound (the excess is answered 503 `overloaded` at once). Each is driven by `hey` at a load the
replica can serve and at one far above; the table gives, per run, the answers by status and the
latency percentiles of the admitted (200) requests only. Then the load drops again: the last
row shows the bounded gateway recovering by itself. Reported, never asserted; figures go to
docs/reliability.md, "Overload".
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hey import Hey, ensure_hey
from bench.systems import (
    CLIENT_KEY,
    MODEL_PASSTHROUGH,
    UPSTREAM_ENV,
    SharedFake,
    Target,
    chat_body,
    lean_config,
)
from extproc.dev.stack import FakeProcess, GatewayStack, ProcessGroup


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile (None without values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def run(hey: Hey, target: Target, clients: int, requests: int) -> dict[str, Any]:
    """One hey run: answers by status, and the latency of the admitted (200) ones."""
    rows = hey.rows(target, clients, requests)
    ok = [float(r["response-time"]) * 1000 for r in rows if r["status-code"] == "200"]
    status: dict[str, int] = {}
    for row in rows:
        status[row["status-code"]] = status.get(row["status-code"], 0) + 1
    # hey sends requests // clients per client; it leaves transport errors out of its CSV.
    sent = requests // clients * clients
    span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=0.0)
    return {
        "clients": clients,
        "sent": sent,
        "status": status,
        "lost": sent - len(rows),
        "admitted_per_s": len(ok) / span if span else 0.0,
        "p50_ms": percentile(ok, 0.5),
        "p99_ms": percentile(ok, 0.99),
        "max_ms": max(ok, default=None),
    }


def gateway(children: ProcessGroup, root: Path, fake: FakeProcess, bound: int) -> GatewayStack[Any]:
    """A started processor + Envoy on the lean config with `max_in_flight` = `bound`."""
    workdir = root / f"bound-{bound}"
    workdir.mkdir()

    def config(fake_url: str) -> dict[str, Any]:
        data = lean_config(fake_url, workdir, access_log=False)
        data["processor"]["max_in_flight"] = bound
        return data

    stack = GatewayStack(
        workdir,
        config,
        SharedFake(fake),
        processor_env=UPSTREAM_ENV,
        processor_log_level="WARNING",
        envoy_name=f"overload-envoy-{bound}",
    )
    return children.add(stack).start()


def main() -> None:
    """Run the four loads on both gateways and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bound", type=int, default=32, help="the small max_in_flight")
    parser.add_argument("--clients", type=int, default=256, help="clients of the overload run")
    parser.add_argument("--requests", type=int, default=4096, help="requests per run")
    args = parser.parse_args()
    hey = Hey(ensure_hey())
    body = chat_body(MODEL_PASSTHROUGH)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp, ProcessGroup() as children:
        root = Path(tmp)
        fake = children.add(FakeProcess(root / "fake.log", "--latency-s", "0.05")).start()
        for bound in (100_000, args.bound):
            stack = gateway(children, root, fake, bound)
            target = Target("chat", f"{stack.base_url}/v1/chat/completions", body, headers, 0, None)
            run(hey, target, 8, 200)  # warm up
            name = f"max_in_flight {bound}"
            rows.append((f"{name}, 16 clients", run(hey, target, 16, args.requests // 2)))
            rows.append(
                (f"{name}, {args.clients} clients", run(hey, target, args.clients, args.requests))
            )
            if bound == args.bound:
                rows.append((f"{name}, 16 clients again", run(hey, target, 16, args.requests // 2)))
            stack.stop()
    print("| run | answers by status | lost | admitted/s | admitted p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:

        def ms(value: float | None) -> str:
            return "—" if value is None else f"{value:.0f}"

        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(r["status"].items()))
        print(
            f"| {name} | {statuses} | {r['lost']} | {r['admitted_per_s']:.0f} "
            f"| {ms(r['p50_ms'])} | {ms(r['p99_ms'])} "
            f"| {ms(r['max_ms'])} |"
        )


if __name__ == "__main__":
    main()
