"""The benchmark's report: the issue's targets (PASS/MISS), the Markdown tables, the JSON file.

Reads the report dict `run.py` assembles; measures nothing and starts nothing (the Envoy binary
is only asked for its version).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.envoy_stats import by_message_count
from bench.progress import log
from bench.systems import (
    ALL_FEATURES,
    ANTHROPIC_REFERENCE,
    FLOOR,
    PASSTHROUGH,
    PLAIN,
    ROOT,
    STREAM_EVENTS,
)
from extproc.dev.stack import find_envoy_binary

RESULTS_DIR = ROOT / "bench" / "results"


# The targets of issue 16 (the earlier ones against plain Envoy's latency and throughput lie
# below what any Python ext_proc processor costs, `bench/phases.py`, and are retired), and two
# guards kept from issue 5: (key, description, threshold text, check).
TARGETS: tuple[tuple[str, str, str, Callable[[float], bool]], ...] = (
    (
        "cpu_above_floor",
        "processor CPU per pass-through request above the floor's, 8 clients",
        "<= 0.15 ms",
        lambda v: v <= 0.15,
    ),
    (
        "throughput_vs_floor",
        "pass-through throughput / the floor's, 8 clients",
        ">= 0.85",
        lambda v: v >= 0.85,
    ),
    (
        "all_features_cpu_ratio",
        "all-features processor CPU per request / pass-through's",
        "<= 1.5",
        lambda v: v <= 1.5,
    ),
    (
        "several_targets_messages",
        "a model with several targets (all-features): ext_proc messages per request",
        "<= 4",
        lambda v: v <= 4,
    ),
    (
        "added_1mb",
        "added median latency, 1 MB prompt, passthrough",
        "<= 10 ms",
        lambda v: v <= 10.0,
    ),
    ("rss_growth", "processor RSS growth over the memory run", "< 10 %", lambda v: v < 10.0),
)
_UNITS = {"cpu_above_floor": " ms", "added_1mb": " ms", "rss_growth": " %"}


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


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    return None if a is None or not b else a / b


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured figure and PASS/MISS."""
    scenarios = report["scenarios"]
    floor, passthrough = scenarios[FLOOR], scenarios[PASSTHROUGH]
    all_features = scenarios[ALL_FEATURES]
    cpu = "processor_cpu_ms_per_req"
    values: dict[str, float | None] = {
        "cpu_above_floor": minus(passthrough.get(cpu), floor.get(cpu)),
        "throughput_vs_floor": ratio(
            passthrough["eight_clients"]["rps"], floor["eight_clients"]["rps"]
        ),
        "all_features_cpu_ratio": ratio(all_features.get(cpu), passthrough.get(cpu)),
        "several_targets_messages": (all_features.get("ext_proc") or {}).get("msgs_per_req"),
        "added_1mb": minus(
            report["big_prompt"][PASSTHROUGH]["median_ms"], report["big_prompt"][PLAIN]["median_ms"]
        ),
        "rss_growth": report["memory"]["growth_pct"],
    }
    out = []
    for key, description, threshold, check in TARGETS:
        value = values[key]
        verdict = "PASS" if value is not None and check(value) else "MISS"
        measured = fmt(value) + _UNITS.get(key, "") if value is not None else "-"
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
        "CPU = ms of CPU per request; ext_proc streams and msgs (messages Envoy sent to the "
        "processor) per request from Envoy's counters; processor CPU - floor = above the floor "
        "row's)"
    )
    floor_cpu = scenarios.get(FLOOR, {}).get("processor_cpu_ms_per_req")
    rows = []
    for name, s in scenarios.items():
        eight = s["eight_clients"]
        ratio = eight["rps"] / max(plain["eight_clients"]["rps"], 1e-9)
        ext_proc = s.get("ext_proc") or {}
        rows.append(
            [name, fmt(eight["rps"], 0), fmt(ratio)]
            + [fmt(eight[p]) for p in ("p50_ms", "p95_ms", "p99_ms")]
            + [added(name, "eight_clients", p) for p in ("p50_ms", "p99_ms")]
            + [
                fmt(s["processor_cpu_ms_per_req"], 3),
                fmt(s["envoy_cpu_ms_per_req"], 3),
                fmt(s["fake_cpu_ms_per_req"], 3),
                fmt(s.get("redis_cpu_ms_per_req"), 3),
                fmt(ext_proc.get("streams_per_req")),
                fmt(ext_proc.get("msgs_per_req")),
                "—" if name == FLOOR else fmt(minus(s["processor_cpu_ms_per_req"], floor_cpu), 3),
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
                "Redis CPU",
                "ext_proc streams/req",
                "msgs/req",
                "processor CPU - floor",
                "non-200",
            ],
            rows,
        )
    )
    parts.append(messages_table(scenarios))

    streams = report["streaming"]
    base = next(s for s in streams if s["name"] == PLAIN)
    parts.append(
        f"\nStreaming, {STREAM_EVENTS} content events, sequential (medians in ms; "
        "added = vs plain-envoy OpenAI stream; processor CPU = mean ms per stream)"
    )
    parts.append(
        markdown(
            [
                "path",
                "runs",
                "TTFT",
                "TTLT",
                "+TTFT",
                "+TTLT",
                "events",
                "processor CPU",
                "failures",
            ],
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
                    fmt(s.get("processor_cpu_ms"), 2),
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

    beside = report["beside_big_prompt"]
    parts.append(
        f"\nSmall requests while 1 MB prompts run (1 client, {beside[0]['rounds']} x "
        f"{beside[0]['requests_per_round']} requests per phase; ms; beside = while a thread sends "
        "1 MB prompts back to back; added = beside - alone)"
    )
    rows = []
    for b in beside:
        alone, with_big = b["alone"], b["beside_big"]
        rows.append(
            [
                b["small"],
                b["big"],
                *(fmt(alone[p]) for p in ("p50_ms", "p99_ms")),
                *(fmt(with_big[p]) for p in ("p50_ms", "p99_ms")),
                *(fmt(minus(with_big[p], alone[p])) for p in ("p50_ms", "p99_ms")),
                str(b["big_requests"]),
                fmt(b["big_median_ms"]),
                str(alone["non_200"] + with_big["non_200"] + b["big_failures"]),
            ]
        )
    parts.append(
        markdown(
            [
                "small requests to",
                "1 MB prompts to",
                "p50 alone",
                "p99 alone",
                "p50 beside",
                "p99 beside",
                "+p50",
                "+p99",
                "1 MB sent",
                "1 MB median",
                "non-200",
            ],
            rows,
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


def messages_table(scenarios: dict[str, Any]) -> str:
    """The 8-client rows by ext_proc messages per request: which scenarios sent how many, and
    what the processor spent on them (Markdown, with its caption)."""
    rows = [
        [
            str(row["msgs_per_req"]),
            ", ".join(sorted({fmt(m["streams_per_req"]) for m in row["scenarios"]})),
            "; ".join(
                f"{m['name']} ({fmt(m['processor_cpu_ms_per_req'], 3)})" for m in row["scenarios"]
            ),
            _cpu_per_message(row["scenarios"]),
        ]
        for row in by_message_count(scenarios)
    ]
    headers = ["msgs/req", "streams/req", "scenarios (processor CPU ms/req)", "CPU ms/msg"]
    return (
        "\nBy ext_proc messages per request (8 clients; msgs = messages Envoy sent to the "
        "processor, rounded; CPU ms/msg = processor CPU / msgs, lowest-highest)\n"
        + markdown(headers, rows)
    )


def _cpu_per_message(members: Sequence[dict[str, Any]]) -> str:
    """Processor CPU per ext_proc message (ms) of a table row's scenarios: lowest-highest."""
    values = sorted(
        m["processor_cpu_ms_per_req"] / m["msgs_per_req"]
        for m in members
        if m["processor_cpu_ms_per_req"] is not None and m["msgs_per_req"] > 0
    )
    if not values:
        return "-"
    low, high = fmt(values[0], 3), fmt(values[-1], 3)
    return low if low == high else f"{low}-{high}"


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
