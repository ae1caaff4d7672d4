"""Side-by-side benchmark: plain Envoy versus the gateway (Envoy + the ext_proc processor).

`make bench` (or `.venv/bin/python bench/run.py [--quick]`) starts, in one run:

- the bundled fake provider as its own process (zero latency, 200-event streams),
- the processor (`extproc serve`, log level WARNING) and its Envoy, on ONE rendered gateway
  config holding every benchmarked model,
- a second, minimal Envoy (listener -> router -> one static cluster, no ext_proc), built in
  `systems.py` as a dict: the physical limit of the same machine and the same fake,
- the floor: that Envoy plus an ext_proc filter answered by the do-nothing `floor_processor.py`.

It then measures with `hey` (installed with apt when missing) and a small httpx client:
throughput at 8 clients, p50/p95/p99 at 1 and 8 clients, processor CPU per request, streaming
time to first content event / last event, a 1 MB prompt (also under token limits), small requests'
p50/p99 alone and while 1 MB prompts run, and the processor's RSS growth over many requests.
It prints side-by-side tables (Markdown) with the issue's targets marked PASS/MISS, and writes
the same figures as JSON to `bench/results/<UTC timestamp>.json` and `latest.json`.
Misses are reported, never asserted: the exit code is 0 whenever the measurement itself worked.
Every process it starts is stopped at the end, on errors, Ctrl-C and SIGTERM too.

This file only orchestrates: `systems` starts the processes (on `extproc.dev.stack`), `hey` and
`measure` measure, `report` evaluates the targets, prints the tables and writes the JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import litellm
from bench.envoy_stats import by_message_count
from bench.hey import Hey, ensure_hey
from bench.measure import (
    FULL,
    QUICK,
    Settings,
    big_prompt_body,
    measure_beside_big,
    measure_big,
    measure_load,
    measure_memory,
    measure_streams,
    rss_kib,
)
from bench.progress import elapsed_s, log
from bench.report import evaluate_targets, log_lines, machine_info, render_tables, write_results
from bench.systems import (
    ALL_FEATURES,
    ALL_FEATURES_REDIS,
    ALL_FEATURES_UNLIMITED,
    ANTHROPIC,
    MODEL_ALL,
    MODEL_ALL_UNLIMITED,
    MODEL_ANTHROPIC,
    MODEL_PASSTHROUGH,
    PASSTHROUGH,
    PASSTHROUGH_UNREAD,
    PLAIN,
    ROOT,
    anthropic_body,
    chat_body,
    start_system,
)
from extproc.dev.stack import ProcessGroup, interrupt_on_signals


def run(
    settings: Settings,
    hey_binary: str,
    workdir: Path,
    children: ProcessGroup,
    no_litellm: bool = False,
) -> dict[str, Any]:
    """Start everything (tracked by `children`), measure every section, return the report."""
    # Installing LiteLLM (when its venv is missing or stale) comes first: nothing runs yet.
    litellm_executable = litellm.prepare(no_litellm)
    system = start_system(children, workdir)
    row = (
        litellm.add_row(system, children, workdir, litellm_executable, system.fake_url)
        if isinstance(litellm_executable, Path)
        else litellm_executable
    )
    rss_start = rss_kib(system.processor_pid)
    hey = Hey(hey_binary)
    report: dict[str, Any] = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "machine": machine_info(),
        "scenarios": {},
        "litellm": asdict(row),
    }

    for name, result in measure_load(hey, system, settings).items():
        entry = asdict(result)
        for run_name, run_result in (
            ("one_client", result.one_client),
            ("eight_clients", result.eight_clients),
        ):
            entry[run_name]["non_200"] = run_result.non_200
        report["scenarios"][name] = entry
    # The 8-client rows grouped by ext_proc messages per request (the table after them).
    report["ext_proc_by_messages"] = by_message_count(report["scenarios"])

    # Right after the load, before the 1 MB bodies inflate the heap: "before" is the warm state.
    report["memory"] = measure_memory(hey, system, settings.memory_requests, rss_start)

    log(f"streaming: {settings.stream_runs} sequential streams per path")
    stream_targets = [
        replace(system.targets[PLAIN], body=chat_body(MODEL_PASSTHROUGH, stream=True)),
        replace(system.anthropic_plain, body=anthropic_body(stream=True)),
        replace(system.targets[PASSTHROUGH], body=chat_body(MODEL_PASSTHROUGH, stream=True)),
        # The same stream not read for its usage: what reading it costs the client.
        replace(system.targets[PASSTHROUGH_UNREAD], body=chat_body(MODEL_PASSTHROUGH, stream=True)),
        replace(system.targets[ANTHROPIC], body=chat_body(MODEL_ANTHROPIC, stream=True)),
    ]
    report["streaming"] = [asdict(s) for s in measure_streams(stream_targets, settings.stream_runs)]

    log(f"1 MB prompt: {settings.big_runs} sequential requests per path")
    big = big_prompt_body(MODEL_PASSTHROUGH)
    # All features too, without limits and under token limits (in memory, on Redis): what the
    # prompt estimate and the reservation cost on a 1 MB body, by difference.
    big_all = {
        ALL_FEATURES_UNLIMITED: big_prompt_body(MODEL_ALL_UNLIMITED),
        ALL_FEATURES: big_prompt_body(MODEL_ALL),
        ALL_FEATURES_REDIS: big_prompt_body(MODEL_ALL),
    }
    report["big_prompt"] = measure_big(
        [
            replace(system.targets[PLAIN], body=big),
            replace(system.targets[PASSTHROUGH], body=big),
            *(replace(system.targets[name], body=body) for name, body in big_all.items()),
        ],
        settings.big_runs,
    )

    log(
        f"small requests beside 1 MB prompts: {settings.beside_big_rounds} rounds of "
        f"{settings.beside_big_requests} at 1 client, alone and beside"
    )
    report["beside_big_prompt"] = measure_beside_big(
        hey,
        [
            (system.targets[PLAIN], replace(system.targets[PLAIN], body=big)),
            # Small pass-through requests beside 1 MB prompts on the same Envoy and processor:
            # a pass-through model (what any 1 MB body costs the loop), the all-features model
            # without limits and with them (what the estimate and the limits add to it).
            (system.targets[PASSTHROUGH], replace(system.targets[PASSTHROUGH], body=big)),
            *(
                (system.targets[PASSTHROUGH], replace(system.targets[name], body=big_all[name]))
                for name in (ALL_FEATURES_UNLIMITED, ALL_FEATURES)
            ),
        ],
        settings.beside_big_rounds,
        settings.beside_big_requests,
    )

    report["litellm"]["figures"] = litellm.figures(report["scenarios"])
    report["litellm"]["worker_restarts"] = litellm.worker_restarts(workdir / "litellm.log")
    report["targets"] = evaluate_targets(report) + litellm.targets(report)
    report["log_lines"] = log_lines(workdir)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="shorter durations and fewer runs (< 2 min)"
    )
    parser.add_argument(
        "--no-litellm",
        action="store_true",
        help=f"skip the LiteLLM proxy row (so does {litellm.ENABLE_VARIABLE}=0)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when it measured (targets missed or not), 1 when it could not."""
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    hey_binary = ensure_hey()
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-bench-"))
    log(f"benchmark ({settings.mode}) on {os.cpu_count()} CPUs; logs in {workdir}")
    children = ProcessGroup()
    ok = False
    with interrupt_on_signals():
        try:
            report = run(settings, hey_binary, workdir, children, args.no_litellm)
            report["wall_time_s"] = round(elapsed_s(), 1)
            path = write_results(report)
            print()
            print(render_tables(report))
            print(litellm.render(report))
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
            children.stop()  # a second Ctrl-C waits until it is done
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
