"""The benchmark's measurements: the load rounds, processor memory, streaming, the 1 MB prompt,
small requests while 1 MB prompts run.

Load runs interleave scenarios in rounds (drift hits every scenario alike) and read CPU from
`/proc` around each 8-client slice; streaming and the 1 MB prompt use httpx, sequentially; the
small requests beside 1 MB prompts are hey's, the 1 MB prompts an httpx thread's.
Results are dataclasses and dicts; turning them into tables is `report`'s job.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.envoy_stats import ExtProcTally, read_ext_proc_stats
from bench.hey import CsvRun, Hey, HeyResult, pooled
from bench.proctree import tree_cpu_seconds
from bench.progress import log
from bench.report import fmt
from bench.systems import (
    PASSTHROUGH,
    System,
    Target,
    chat_body,
)

ONE_MB = 1024 * 1024


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
    # Small requests while 1 MB prompts run: rounds of this many small requests at 1 client,
    # alone, then with 1 MB prompts sent back to back.
    beside_big_rounds: int
    beside_big_requests: int


FULL = Settings("full", 3, 10, 400, 3, 5.0, 100, 20, 200_000, 5, 1000)
QUICK = Settings("quick", 1, 4, 400, 2, 2.5, 30, 20, 20_000, 2, 500)


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


# --- load with hey ---------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """Figures of one scenario."""

    name: str
    one_client: HeyResult
    eight_clients: HeyResult
    processor_cpu_ms_per_req: float | None
    envoy_cpu_ms_per_req: float | None  # None: no Envoy (the LiteLLM row)
    fake_cpu_ms_per_req: float
    # The redis-server holding the scenario's limits (None: no Redis behind it).
    redis_cpu_ms_per_req: float | None = None
    # ext_proc streams and messages per request, from its Envoy's counters (`envoy_stats`;
    # None: no ext_proc filter).
    ext_proc: dict[str, Any] | None = None


def measure_load(hey: Hey, system: System, s: Settings) -> dict[str, ScenarioResult]:
    """Warm-up, then 1 client (latency) and 8 clients (throughput, latency, CPU per request).

    Both loads run in rounds that cycle through every scenario, so a transient slowdown of the
    machine hits all scenarios alike instead of skewing one scenario's comparison with plain
    Envoy. The 8-client slices are sized from the warm-up's rate to last about
    `eight_client_slice_s` each; CPU is read before and after each slice, and outside that
    the ext_proc counters of the scenario's Envoy (its admin answering costs Envoy CPU).
    """
    targets = list(system.targets.values())  # every scenario, in the order they were made
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
    cpu = {t.name: [0.0, 0.0, 0.0, 0.0] for t in targets}  # processor, Envoy, fake, Redis
    ext_proc = ExtProcTally()
    for _ in range(s.eight_client_rounds):
        for target in targets:
            processor = target.processor_pid or system.processor_pid
            # Process trees: LiteLLM's "processor" is a supervisor and its workers.
            pids = [processor, target.envoy_pid, system.fake_pid, target.redis_pid]
            counters = read_ext_proc_stats(target.envoy_admin)
            before = [tree_cpu_seconds(pid) if pid else 0.0 for pid in pids]
            eight[target.name].append(hey.run_csv(target, 8, slice_requests[target.name]))
            for index, pid in enumerate(pids):
                cpu[target.name][index] += tree_cpu_seconds(pid) - before[index] if pid else 0.0
            ext_proc.add(target.name, counters, read_ext_proc_stats(target.envoy_admin))

    results = {}
    for target in targets:
        one_client, eight_clients = pooled(one[target.name]), pooled(eight[target.name])
        per_req = [c * 1000 / max(1, eight_clients.responses) for c in cpu[target.name]]
        results[target.name] = ScenarioResult(
            target.name,
            one_client,
            eight_clients,
            per_req[0] if target.processor_pid is not None else None,
            per_req[1] if target.envoy_pid is not None else None,
            per_req[2],
            per_req[3] if target.redis_pid is not None else None,
            ext_proc.per_request(target.name, eight_clients.responses),
        )
        log(
            f"{target.name}: {eight_clients.rps:.0f} req/s at 8 clients, p50 "
            f"{fmt(one_client.p50_ms)} ms at 1 client, "
            f"non-200: {one_client.non_200 + eight_clients.non_200}"
        )
    return results


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
    # Processor CPU per measured stream (ms; None for paths without a processor).
    processor_cpu_ms: float | None = None


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
    cpu = dict.fromkeys(samples, 0.0)
    with httpx.Client(timeout=30) as client:
        for index in range(runs + 3):  # three warm-up rounds
            for target in targets:
                pid = target.processor_pid
                before = cpu_seconds(pid) if pid else 0.0
                try:
                    sample = stream_once(client, target)
                except (RuntimeError, httpx.HTTPError):
                    failures[target.name] += 1
                    continue
                if index >= 3:
                    samples[target.name].append(sample)
                    if pid:
                        cpu[target.name] += cpu_seconds(pid) - before
    return [
        StreamResult(
            t.name,
            len(samples[t.name]),
            median([s[0] for s in samples[t.name]]),
            median([s[1] for s in samples[t.name]]),
            max((s[2] for s in samples[t.name]), default=0),
            failures[t.name],
            cpu[t.name] * 1000 / len(samples[t.name])
            if t.processor_pid and samples[t.name]
            else None,
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


def measure_beside_big(
    hey: Hey, pairs: Sequence[tuple[Target, Target]], rounds: int, requests: int
) -> list[dict[str, Any]]:
    """p50/p95/p99 of small requests at 1 client, alone and while 1 MB prompts run.

    Per pair (small, big), each round runs `requests` small requests with hey alone, then again
    while a thread sends `big` (a 1 MB prompt) back to back, one at a time: whether a big body
    stalls the requests behind it. Rounds interleave the pairs and both phases, so drift hits
    them alike. A pair on plain Envoy shows what the machine, the client and the fake alone do.
    """
    alone: list[list[CsvRun]] = [[] for _ in pairs]
    beside: list[list[CsvRun]] = [[] for _ in pairs]
    senders = [_BigSender(big) for _, big in pairs]
    for _ in range(rounds):
        for index, (small, _big) in enumerate(pairs):
            alone[index].append(hey.run_csv(small, 1, requests))
            with senders[index].running():
                beside[index].append(hey.run_csv(small, 1, requests))
    results = []
    for index, (small, big) in enumerate(pairs):
        sender = senders[index]
        result: dict[str, Any] = {
            "small": small.name,
            "big": big.name,
            "big_body_bytes": len(big.body),
            "rounds": rounds,
            "requests_per_round": requests,
            "big_requests": sender.done,
            "big_failures": sender.failures,
            "big_median_ms": median(sender.latencies),
        }
        for phase, runs in (("alone", alone), ("beside_big", beside)):
            run = pooled(runs[index])
            result[phase] = {
                "responses": run.responses,
                "p50_ms": run.p50_ms,
                "p95_ms": run.p95_ms,
                "p99_ms": run.p99_ms,
                "non_200": run.non_200,
            }
        log(
            f"{small.name} beside 1 MB prompts to {big.name}: p99 "
            f"{fmt(result['alone']['p99_ms'])} ms alone, {fmt(result['beside_big']['p99_ms'])} "
            f"ms beside {sender.done} of them ({sender.failures} failed)"
        )
        results.append(result)
    return results


class _BigSender:
    """Sends one target's request back to back, one at a time, while `running()` is entered."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.done = 0
        self.failures = 0
        self.latencies: list[float] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """A thread sends from entry until exit (it finishes its request in flight first)."""
        stop = threading.Event()
        thread = threading.Thread(target=self._send_until, args=(stop,), daemon=True)
        thread.start()
        time.sleep(0.2)  # the first 1 MB request is on its way before the small ones start
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _send_until(self, stop: threading.Event) -> None:
        target = self.target
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    response = client.post(target.url, content=target.body, headers=target.headers)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.done += 1
                    self.latencies.append((time.perf_counter() - start) * 1000)
                else:
                    self.failures += 1
