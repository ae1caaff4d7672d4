"""Endurance soak (`make soak`): steady mixed traffic on one real stack for a long time, the
processor's and Envoy's memory sampled all along; a leak, a lost request, a 5xx or too many
unexpected answers fail the verdict (exit 1).

One stack: the fake provider (its own process, 20 ms per answer, 50-event streams), the
processor (log level WARNING) and its Envoy, on `bench.systems.gateway_config` plus a tenant
with a small requests-per-minute limit; governance (limits, budgets, usage) on a throwaway
redis-server. A few client threads, each paced to a fixed rate (moderate, not max load), cycle
through a mix whose every entry has the answers it may get:

    pass-through, whole and streamed ............ 200
    Anthropic-translated, whole and streamed .... 200
    cached model at temperature 0 ............... 200 (hits after the first of each prompt)
    the rate-limited tenant ..................... 200 or 429
    a model the tenant may not use .............. 403
    a request without `messages` ................ 400
    an unknown key .............................. 401

Anything else (or a 200 whose body is not a complete answer) is unexpected; no answer at all
(a transport error or timeout) is lost. Every `--sample-s` seconds the RSS (VmRSS) of the
processor and of Envoy is read (and Envoy's own `/memory` allocated bytes); every minute a row
is printed: requests, answers by class, latency p50/p95/p99, RSS. After the warm-up the
least-squares slope of each process's RSS is the leak figure. Thresholds are in `Thresholds`
and `docs/reliability.md`, "Endurance soak". JSON goes to `bench/results/soak-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hey import percentile
from bench.measure import rss_kib
from bench.progress import elapsed_s, log
from bench.systems import (
    CLIENT_KEY,
    MODEL_ANTHROPIC,
    MODEL_CACHED,
    MODEL_PASSTHROUGH,
    RBAC_UNLIMITED_KEY,
    REPLY,
    ROOT,
    chat_body,
    gateway_config,
    start_stack,
)
from bench.traffic import ClientThreads
from extproc.decisions.auth import hash_key
from extproc.dev.redis_server import RedisServer
from extproc.dev.stack import FakeProcess, ProcessGroup, interrupt_on_signals

LIMITED_KEY = "sk-soak-limited-client"
LIMITED_RPM = 60
CACHED_PROMPTS = 16
CHAT = "/v1/chat/completions"


# --- the verdict (pure functions; tests/unit/test_soak_verdict.py) ---------------------------


@dataclass(frozen=True)
class Thresholds:
    """What fails the verdict.

    A leak is a fitted RSS slope (after the warm-up) above `leak_kib_per_1k` KiB per 1 000
    requests (32 bytes per request) AND a fitted growth over the measured window above
    `noise_floor_kib`: allocator and interpreter noise moves RSS by a few hundred KiB either
    way. At the default rate (16 requests/s) the floor makes the smallest leak caught about
    270 bytes per request in 10 minutes and about 45 bytes per request in an hour. Fewer than
    `min_samples` samples after the warm-up is no verdict on memory, so a failure.
    """

    leak_kib_per_1k: float = 32.0
    noise_floor_kib: float = 2048.0
    min_samples: int = 3
    max_unexpected_share: float = 0.001
    max_lost: int = 0
    max_5xx: int = 0
    warmup_share: float = 0.2
    warmup_min_s: float = 120.0


def warmup(duration_s: float, t: Thresholds) -> float:
    """Seconds left out of the fit: `warmup_share` of the run, at least `warmup_min_s`, at
    most half the run (so a short smoke run still fits something)."""
    return min(max(t.warmup_min_s, t.warmup_share * duration_s), duration_s / 2)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def leak_check(
    samples: Sequence[tuple[float, float, float]], warmup_s: float, t: Thresholds
) -> dict[str, Any]:
    """Samples (seconds, requests so far, RSS KiB) -> slope per 1 000 requests and per hour,
    fitted growth over the window after `warmup_s`, and whether that is a leak."""
    kept = [s for s in samples if s[0] >= warmup_s]
    per_request = slope([(r, kib) for _, r, kib in kept])
    per_second = slope([(s, kib) for s, _, kib in kept])
    requests = kept[-1][1] - kept[0][1] if len(kept) >= 2 else 0.0
    growth = per_request * requests
    leak = per_request * 1000 > t.leak_kib_per_1k and growth > t.noise_floor_kib
    return {
        "samples_fitted": len(kept),
        "rss_start_kib": kept[0][2] if kept else None,
        "rss_end_kib": kept[-1][2] if kept else None,
        "kib_per_1k_requests": round(per_request * 1000, 3),
        "mib_per_hour": round(per_second * 3600 / 1024, 3),
        "fitted_growth_kib": round(growth, 1),
        "leak": leak,
    }


def verdict(
    counts: dict[str, int], memory: dict[str, dict[str, Any]], t: Thresholds
) -> tuple[bool, list[str]]:
    """Counts (total, lost, 5xx, unexpected) and each process's `leak_check` -> pass?, reasons."""
    reasons = []
    total = counts["total"]
    if total == 0:
        reasons.append("no request was sent")
    if counts["lost"] > t.max_lost:
        reasons.append(f"{counts['lost']} requests got no answer (allowed {t.max_lost})")
    if counts["5xx"] > t.max_5xx:
        reasons.append(f"{counts['5xx']} answers were 5xx (allowed {t.max_5xx})")
    share = counts["unexpected"] / total if total else 0.0
    if share > t.max_unexpected_share:
        reasons.append(
            f"unexpected answers {counts['unexpected']} of {total} ({share:.3%}) "
            f"above {t.max_unexpected_share:.3%}"
        )
    for name, check in memory.items():
        if check["samples_fitted"] < t.min_samples:
            reasons.append(
                f"{name}: {check['samples_fitted']} memory samples after the warm-up "
                f"(need {t.min_samples}): run longer"
            )
        if check["leak"]:
            reasons.append(
                f"{name} RSS grows {check['kib_per_1k_requests']} KiB per 1000 requests "
                f"(> {t.leak_kib_per_1k}), {check['fitted_growth_kib']} KiB over the window "
                f"(> {t.noise_floor_kib})"
            )
    return not reasons, reasons


# --- the traffic ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One entry of the mix: the request, and the statuses it may get."""

    name: str
    body: Callable[[int], bytes]
    key: str
    expected: frozenset[int]
    stream: bool = False


def _bad_request(_: int) -> bytes:
    return json.dumps({"model": MODEL_PASSTHROUGH, "max_tokens": 16}).encode()


MIX: tuple[Kind, ...] = (
    Kind(
        "passthrough",
        lambda n: chat_body(MODEL_PASSTHROUGH, f"hello {n}"),
        CLIENT_KEY,
        frozenset({200}),
    ),
    Kind(
        "passthrough-stream",
        lambda n: chat_body(MODEL_PASSTHROUGH, f"hello {n}", stream=True),
        CLIENT_KEY,
        frozenset({200}),
        stream=True,
    ),
    Kind(
        "anthropic", lambda n: chat_body(MODEL_ANTHROPIC, f"hi {n}"), CLIENT_KEY, frozenset({200})
    ),
    Kind(
        "anthropic-stream",
        lambda n: chat_body(MODEL_ANTHROPIC, f"hi {n}", stream=True),
        CLIENT_KEY,
        frozenset({200}),
        stream=True,
    ),
    Kind(
        "cached",
        lambda n: chat_body(MODEL_CACHED, f"same {n % CACHED_PROMPTS}", temperature=0),
        CLIENT_KEY,
        frozenset({200}),
    ),
    Kind(
        "limited",
        lambda n: chat_body(MODEL_PASSTHROUGH, f"limited {n}"),
        LIMITED_KEY,
        frozenset({200, 429}),
    ),
    Kind(
        "forbidden",
        lambda n: chat_body(MODEL_ANTHROPIC, f"no {n}"),
        RBAC_UNLIMITED_KEY,
        frozenset({403}),
    ),
    Kind("bad-request", _bad_request, CLIENT_KEY, frozenset({400})),
    Kind("unknown-key", lambda n: chat_body(MODEL_PASSTHROUGH), "sk-soak-nobody", frozenset({401})),
)


def complete(kind: Kind, status: int, body: bytes) -> bool:
    """A 200 is a whole answer: the stream ends with [DONE], a JSON answer has choices."""
    if status != 200:
        return True
    if kind.stream:
        return body.rstrip().endswith(b"data: [DONE]")
    try:
        return bool(json.loads(body).get("choices"))
    except ValueError:
        return False


@dataclass
class Minute:
    """What one minute of traffic saw."""

    requests: int = 0
    lost: int = 0
    server_errors: int = 0
    unexpected: int = 0
    cache_hits: int = 0
    status: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)


class Traffic(ClientThreads):
    """Client threads sending the mix at a fixed rate each, recording per minute."""

    def __init__(self, base_url: str, clients: int, rate: float, t0: float) -> None:
        super().__init__(clients, timeout=30, rate=rate)
        self._url = base_url + CHAT
        self._t0 = t0
        self.minutes: dict[int, Minute] = {}
        self.total = 0
        self.examples: list[str] = []

    def stop(self) -> None:
        """Stop sending and wait for the requests in flight."""
        self.halt(60)

    def send_one(self, client: httpx.Client, index: int, turn: int) -> float:
        """Client `index` sends the entries `index`, `index + clients`, … of the mix in turn."""
        n = index + turn * self._clients
        self._send(client, MIX[n % len(MIX)], n)
        return 0.0

    def _send(self, client: httpx.Client, kind: Kind, n: int) -> None:
        headers = {"Authorization": f"Bearer {kind.key}", "Content-Type": "application/json"}
        start = time.monotonic()
        status: int | None = None
        hit = False
        ok = False
        try:
            response = client.post(self._url, content=kind.body(n), headers=headers)
            status = response.status_code
            hit = response.headers.get("x-gateway-cache") == "hit"
            ok = status in kind.expected and complete(kind, status, response.content)
            detail = response.text[:200]
        except httpx.HTTPError as exc:
            detail = repr(exc)
        latency = (time.monotonic() - start) * 1000
        with self.lock:
            minute = self.minutes.setdefault(int((start - self._t0) // 60), Minute())
            minute.requests += 1
            self.total += 1
            label = str(status) if status is not None else "lost"
            minute.status[label] = minute.status.get(label, 0) + 1
            per_kind = minute.by_kind.setdefault(kind.name, {})
            per_kind[label] = per_kind.get(label, 0) + 1
            if status is None:
                minute.lost += 1
            else:
                minute.latencies_ms.append(latency)
                minute.server_errors += status >= 500
                minute.cache_hits += hit
            if status is not None and not ok:
                minute.unexpected += 1
            if (status is None or not ok) and len(self.examples) < 20:
                self.examples.append(f"{kind.name}: {label}: {detail}")


# --- the run ----------------------------------------------------------------------------------


def soak_config(fake_url: str, workdir: Path, redis_url: str) -> dict[str, Any]:
    """The bench's config, a tenant limited to `LIMITED_RPM`, governance on Redis."""
    config = gateway_config(fake_url, workdir)
    config["tenants"].append(
        {
            "name": "soak-limited",
            "api_key_sha256": [hash_key(LIMITED_KEY)],
            "limits": {"requests_per_minute": LIMITED_RPM},
        }
    )
    config["governance"] = {"backend": "redis", "redis": {"url": redis_url}}
    return config


def envoy_allocated_kib(client: httpx.Client, admin_url: str) -> float | None:
    """Envoy's own view: bytes its allocator has handed out (admin `/memory`), in KiB."""
    try:
        return int(client.get(f"{admin_url}/memory").json()["allocated"]) / 1024
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def row(index: int, m: Minute, rss: dict[str, float]) -> dict[str, Any]:
    """The printed and saved figures of one minute."""
    ordered = sorted(m.latencies_ms)
    return {
        "minute": index + 1,
        "requests": m.requests,
        "status": dict(sorted(m.status.items())),
        "cache_hits": m.cache_hits,
        "lost": m.lost,
        "5xx": m.server_errors,
        "unexpected": m.unexpected,
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        **{k: round(v) for k, v in rss.items()},
    }


def print_row(r: dict[str, Any]) -> None:
    """One line of the live table."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    statuses = " ".join(f"{k}:{v}" for k, v in r["status"].items())
    print(
        f"| {r['minute']:>3} | {r['requests']:>5} | {statuses} | {r['cache_hits']} "
        f"| {r['unexpected']} | {ms(r['p50_ms'])} / {ms(r['p95_ms'])} / {ms(r['p99_ms'])} "
        f"| {r['processor_rss_kib'] / 1024:.1f} | {r['envoy_rss_kib'] / 1024:.1f} "
        f"| {r.get('envoy_allocated_kib', 0) / 1024:.1f} |",
        flush=True,
    )


def soak(args: argparse.Namespace, workdir: Path, children: ProcessGroup) -> dict[str, Any]:
    """Start the stack, run the traffic for `args.minutes`, sample memory; the report."""
    redis = children.add(RedisServer(workdir / "redis")).start()
    fake = FakeProcess(
        workdir / "fake.log", "--stream-chunk-count", "50", "--reply", REPLY, "--latency-s", "0.02"
    )
    stack = start_stack(
        children,
        workdir,
        lambda url: soak_config(url, workdir, redis.url),
        fake,
        envoy_name="soak-envoy",
    )
    assert stack.processor is not None and stack.envoy is not None
    pids = {"processor": stack.processor.pid, "envoy": stack.envoy.pid}
    log(f"processor pid {pids['processor']}, Envoy pid {pids['envoy']}, on {stack.base_url}")
    log(f"governance on redis-server {redis.url}; logs in {workdir}")
    duration = args.minutes * 60
    t = Thresholds()
    warmup_s = warmup(duration, t)
    t0 = time.monotonic()
    traffic = Traffic(stack.base_url, args.clients, args.rate, t0)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in pids}
    rows: list[dict[str, Any]] = []
    print(
        f"\n{args.clients} clients x {args.rate:g} req/s for {args.minutes} min; "
        f"warm-up {warmup_s:.0f} s\n"
        "| min | requests | answers by status | cache hits | unexpected "
        "| p50 / p95 / p99 ms | processor RSS MiB | Envoy RSS MiB | Envoy allocated MiB |\n"
        "|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    traffic.start()
    last_rss: dict[str, float] = {}
    with httpx.Client(timeout=5) as admin:
        next_sample = t0
        while (now := time.monotonic()) < t0 + duration:
            if now >= next_sample:
                with traffic.lock:
                    done = traffic.total
                for name, pid in pids.items():
                    samples[name].append((now - t0, float(done), float(rss_kib(pid))))
                    last_rss[f"{name}_rss_kib"] = samples[name][-1][2]
                allocated = envoy_allocated_kib(admin, stack.envoy_admin_url)
                if allocated is not None:
                    last_rss["envoy_allocated_kib"] = allocated
                next_sample += args.sample_s
            minute = int((now - t0) // 60)
            if minute > len(rows):
                with traffic.lock:
                    m = traffic.minutes.get(len(rows), Minute())
                rows.append(row(len(rows), m, last_rss))
                print_row(rows[-1])
            if stack.exited():
                log(f"a process exited: {stack.exited()}")
                break
            time.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
    traffic.stop()
    while len(rows) < len(traffic.minutes):
        rows.append(row(len(rows), traffic.minutes[len(rows)], last_rss))
        print_row(rows[-1])
    return report(args, traffic, samples, rows, warmup_s, t)


def report(
    args: argparse.Namespace,
    traffic: Traffic,
    samples: dict[str, list[tuple[float, float, float]]],
    rows: list[dict[str, Any]],
    warmup_s: float,
    t: Thresholds,
) -> dict[str, Any]:
    """Totals, the memory fits, the verdict."""
    minutes = traffic.minutes.values()
    counts = {
        "total": traffic.total,
        "lost": sum(m.lost for m in minutes),
        "5xx": sum(m.server_errors for m in minutes),
        "unexpected": sum(m.unexpected for m in minutes),
        "cache_hits": sum(m.cache_hits for m in minutes),
    }
    by_kind: dict[str, dict[str, int]] = {}
    for m in minutes:
        for kind, statuses in m.by_kind.items():
            for label, n in statuses.items():
                by_kind.setdefault(kind, {})[label] = by_kind.setdefault(kind, {}).get(label, 0) + n
    memory = {name: leak_check(s, warmup_s, t) for name, s in samples.items()}
    passed, reasons = verdict(counts, memory, t)
    return {
        "kind": "soak",
        "started_utc": args.started,
        "minutes": args.minutes,
        "clients": args.clients,
        "rate_per_client": args.rate,
        "cpus": os.cpu_count(),
        "governance": "redis",
        "warmup_s": warmup_s,
        "thresholds": asdict(t),
        "counts": counts,
        "by_kind": by_kind,
        "memory": memory,
        "passed": passed,
        "reasons": reasons,
        "examples": traffic.examples,
        "rows": rows,
        "samples": samples,
        "wall_time_s": round(elapsed_s(), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; 0 when the verdict passes, 1 when it fails, 2 when it could not run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="duration (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--rate", type=float, default=4, help="requests/s per client (4)")
    parser.add_argument("--sample-s", type=float, default=10, help="memory sampling interval")
    args = parser.parse_args(argv)
    args.started = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="llm-gateway-soak-"))
    with interrupt_on_signals(), ProcessGroup() as children:
        try:
            result = soak(args, workdir, children)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"soak: could not run: {exc}", file=sys.stderr)
            return 2
    path = ROOT / "bench" / "results" / f"soak-{args.started}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    c = result["counts"]
    print(f"\nrequests {c['total']}, by kind: {json.dumps(result['by_kind'])}")
    for name, check in result["memory"].items():
        print(f"{name}: {json.dumps(check)}")
    for example in result["examples"][:10]:
        print(f"  unexpected: {example}")
    print(f"\nverdict: {'PASS' if result['passed'] else 'FAIL'}")
    for reason in result["reasons"]:
        print(f"  - {reason}")
    print(f"results in {path.relative_to(ROOT)}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
