"""Load with `hey`: installing it, running it, and parsing what it reports.

`Hey.run` parses hey's text summary; `Hey.run_csv` keeps every request's latency, and `pooled`
merges several CSV runs into one result with nearest-rank percentiles.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from bench.progress import log
from bench.systems import Target


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
        rows = self.rows(target, clients, requests)
        latencies = [float(r["response-time"]) * 1000 for r in rows]
        status: dict[str, int] = {}
        for row in rows:
            status[row["status-code"]] = status.get(row["status-code"], 0) + 1
        span = max((float(r["offset"]) + float(r["response-time"]) for r in rows), default=0.0)
        return CsvRun(latencies, status, span, requests)

    def rows(self, target: Target, clients: int, requests: int) -> list[dict[str, str]]:
        """`hey -c clients -n requests -o csv`: one row per answered request (hey's columns:
        `response-time` in seconds, `status-code`, `offset`, ...)."""
        text = self._hey(target, clients, 0, requests, as_csv=True)
        return list(csv.DictReader(io.StringIO(text)))

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
        # run() kills hey on a timeout and on Ctrl-C as well.
        try:
            done = subprocess.run(argv, capture_output=True, timeout=(seconds or 900) + 60)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"hey did not finish within {exc.timeout:.0f}s") from None
        if done.returncode != 0:
            raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr.decode().strip()}")
        return done.stdout.decode()
