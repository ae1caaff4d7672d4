"""Chaos under load (`make chaos`): kill -9 one component of a live stack during steady traffic.

The stack is real: Envoy, the processor, two fake provider processes (the model's primary target
on one, its failover target on the other) and governance on a `redis-server` started here. For
each fault in turn (the processor, the primary's provider, Redis, Envoy) client threads send
mixed traffic (streams and whole answers, each with a client deadline), the component is killed
with SIGKILL, restarted after a short outage with the same command on the same ports (as a
supervisor would), and traffic goes on until the clients see N successes in a row again. Then
every request is classified:

- ok: 200 with the whole answer (the fake's echo; a stream ends with `[DONE]`);
- clean error: an HTTP answer with an OpenAI-style `{"error": {...}}` body (or, in a stream, an
  error event), by status and code;
- connection: refused or reset before any answer (only while a process in front is gone);
- cut: a 200 whose body was reset by the gateway mid-answer: the client sees a transport error;
- lost: no answer within the client deadline, a 200 with a wrong or truncated body, a stream that
  ended without `[DONE]` and without an error, or an error without an OpenAI-style body. Must be 0.

Each fault has its own tenant, so its `/usage` counters (in Redis, read from the processor's
admin) are its own: after the traffic stops the tenant's `requests` total must lie between the
requests known to be admitted and those plus the ones whose fate the kill made ambiguous, and the
concurrency counter must be back at 0 (after a processor kill: at most the leases the dead
processor held, which lapse after the request timeout + 60 s). The table goes to stdout, the
figures to `bench/results/chaos-<timestamp>.json`; exit 1 when anything is lost or a counter is
inconsistent. `tests/e2e/test_chaos.py` runs the same with short windows.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.systems import SharedFake, start_stack
from bench.traffic import ClientThreads
from extproc.decisions.auth import hash_key
from extproc.dev.redis_server import RedisServer
from extproc.dev.stack import FakeProcess, ProcessGroup, loopback_sections

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL = "chaos-chat"
FAULTS = ("processor", "provider", "redis", "envoy")
# Far above what the clients send: the counters are checked, never a 429 expected.
LIMITS = {"requests_per_minute": 1_000_000, "concurrent_requests": 500}
REQUEST_TIMEOUT_S = 10  # limits.default_timeout_seconds: a dead processor's leases lapse after it
LEASE_MARGIN_S = 60  # extproc.governance.governor.LEASE_MARGIN_MS
# Codes a request gets before any admission: it cannot be counted.
# A client's pause after a failed request (as the SDKs back off), so an outage answered at once
# with 503s does not turn the client threads into a busy loop.
BACKOFF_S = 0.1
# A settlement runs in a task after its answer: one that ended this long before Redis was
# back may still have been written to the new, empty Redis.
SETTLE_SLACK_S = 1.0
NOT_ADMITTED = {"processor_unavailable", "rate_limit_exceeded", "rate_limiter_unavailable"}


def key_for(fault: str) -> str:
    """The client key of the fault's tenant (`chaos-<fault>`)."""
    return f"sk-chaos-{fault}"


def chaos_config(primary: str, secondary: str, workdir: Path, redis_url: str) -> dict[str, Any]:
    """The stack's config: one model, an OpenAI-type primary and an Anthropic-type failover
    target on separate fakes, a tenant per fault, limits in Redis (fail-open: `local`)."""
    check = {"path": "/models", "interval_seconds": 0.5, "timeout_seconds": 1}
    config = loopback_sections(workdir)
    config["processor"]["shutdown_grace_seconds"] = 2
    return {
        **config,
        "auth": {"enabled": True},
        "limits": {"default_timeout_seconds": REQUEST_TIMEOUT_S},
        "resilience": {
            "max_retries": 2,
            "retry_base_interval_ms": 50,
            "retry_max_interval_ms": 200,
            "health_check_interval_ms": 200,
            "breaker_open_seconds": 3,
        },
        "providers": [
            {
                "name": "p-primary",
                "type": "openai",
                "base_url": f"{primary}/v1",
                "api_key_env": "BENCH_OPENAI_KEY",
                "health_check": check,
            },
            {
                "name": "p-secondary",
                "type": "anthropic",
                "base_url": f"{secondary}/anthropic/v1",
                "api_key_env": "BENCH_ANTHROPIC_KEY",
                "health_check": check,
            },
        ],
        "models": [
            {
                "name": MODEL,
                "targets": [
                    {"provider": "p-primary", "model": "chaos-up"},
                    {"provider": "p-secondary", "model": "claude-chaos"},
                ],
            }
        ],
        "tenants": [
            {
                "name": f"chaos-{fault}",
                "api_key_sha256": [hash_key(key_for(fault))],
                "limits": LIMITS,
            }
            for fault in FAULTS
        ],
        "governance": {
            "backend": "redis",
            "redis": {"url": redis_url, "retry_seconds": 0.5, "timeout_ms": 250},
            "on_redis_failure": "local",
        },
    }


# --- one request -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one request got: `kind` (ok, error, connection, cut, lost) and a detail."""

    kind: str
    detail: str
    stream: bool
    start: float
    end: float


def judge(status: int, body: bytes, stream: bool, expected: str) -> tuple[str, str]:
    """(kind, detail) of a whole HTTP answer."""
    if status != 200:
        try:
            error = orjson.loads(body)["error"]
            return "error", f"{status} {error['code']}"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return "lost", f"{status} without an OpenAI-style error body: {body[:80]!r}"
    if not stream:
        try:
            content = orjson.loads(body)["choices"][0]["message"]["content"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return "lost", f"200 with an invalid body: {body[:80]!r}"
        return ("ok", "200") if content == expected else ("lost", f"200 wrong text {content!r}")
    events = [e[6:] for e in body.decode(errors="replace").split("\n\n") if e.startswith("data: ")]
    done = bool(events) and events[-1] == "[DONE]"
    pieces, errors = [], []
    for event in events:
        with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
            data = orjson.loads(event)
            if isinstance(data, dict) and "error" in data:
                errors.append(str(data["error"].get("code")))
            for choice in data.get("choices") or []:
                pieces.append((choice.get("delta") or {}).get("content") or "")
    if errors:
        return "error", f"200 stream error event {errors[0]}" + ("" if done else " (no [DONE])")
    if not done:
        return "lost", "stream ended without [DONE] and without an error"
    text = "".join(pieces)
    return ("ok", "200") if text == expected else ("lost", f"stream wrong text {text!r}")


def send(
    client: httpx.Client, url: str, key: str, stream: bool, text: str, deadline: float
) -> Outcome:
    """One chat completion, read to its end and judged."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    start = time.monotonic()
    answered = False
    try:
        with client.stream(
            "POST", url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=deadline
        ) as response:
            answered = True
            status = response.status_code
            data = b"".join(response.iter_bytes())
    except httpx.TimeoutException as exc:
        return Outcome(
            "lost",
            f"no answer within {deadline} s ({type(exc).__name__})",
            stream,
            start,
            time.monotonic(),
        )
    except httpx.TransportError as exc:
        kind = "cut" if answered else "connection"
        what = f"{type(exc).__name__} ({'stream' if stream else 'whole answer'})"
        return Outcome(kind, what, stream, start, time.monotonic())
    end = time.monotonic()
    if end - start > deadline:
        return Outcome("lost", f"answered after the {deadline} s deadline", stream, start, end)
    kind, detail = judge(status, data, stream, "echo: " + text)
    return Outcome(kind, detail, stream, start, end)


class Traffic(ClientThreads):
    """Client threads sending mixed requests (every other one a stream) until stopped."""

    def __init__(self, url: str, key: str, clients: int, deadline: float, label: str) -> None:
        super().__init__(clients, timeout=deadline)
        self.url = f"{url}/v1/chat/completions"
        self.key = key
        self.deadline = deadline
        self.label = label
        self.outcomes: list[Outcome] = []
        self._numbers = itertools.count()

    def stop(self) -> list[Outcome]:
        """Let each client finish its request, then stop; every outcome."""
        if not self.halt(self.deadline + 30):
            raise RuntimeError("a client thread outlived its request deadline")
        return self.snapshot()

    def snapshot(self) -> list[Outcome]:
        """The outcomes so far."""
        with self.lock:
            return list(self.outcomes)

    def send_one(self, client: httpx.Client, index: int, turn: int) -> float:
        """Streams and whole answers by turns (even clients start with a stream); a pause of
        `BACKOFF_S` after anything but a success."""
        stream = (index + turn) % 2 == 0
        text = f"chaos {self.label} {next(self._numbers)}"
        outcome = send(client, self.url, self.key, stream, text, self.deadline)
        with self.lock:
            self.outcomes.append(outcome)
        return 0.0 if outcome.kind == "ok" else BACKOFF_S


def timeline(outcomes: list[Outcome], t_kill: float, t_restart: float) -> dict[str, Any]:
    """When each kind of failure was seen (answer times, seconds after the kill), and when
    the restart happened: `{"restart": s, "<kind> <detail>": [first, last, count]}`."""
    seen: dict[str, list[float]] = {}
    for outcome in outcomes:
        if outcome.kind != "ok":
            seen.setdefault(f"{outcome.kind} {outcome.detail}", []).append(outcome.end - t_kill)
    spans: dict[str, Any] = {"restart": round(t_restart - t_kill, 3)}
    for name, times in sorted(seen.items()):
        spans[name] = [round(min(times), 3), round(max(times), 3), len(times)]
    return spans


def recovery_s(outcomes: list[Outcome], since: float, run: int) -> float | None:
    """From `since` to the end of the first of `run` consecutive successes (by end time)."""
    after = sorted((o for o in outcomes if o.end >= since), key=lambda o: o.end)
    streak: list[Outcome] = []
    for outcome in after:
        streak = [*streak, outcome] if outcome.kind == "ok" else []
        if len(streak) == run:
            return max(0.0, streak[0].end - since)
    return None


# --- the stack and its faults ----------------------------------------------------------------


class ChaosStack:
    """Redis, two fakes, the processor and Envoy; kill and restart each by name."""

    def __init__(self, root: Path, children: ProcessGroup) -> None:
        self.root = root
        fake_args = (
            "--latency-s",
            "0.05",
            "--stream-chunk-count",
            "8",
            "--chunk-interval-s",
            "0.05",
        )
        self.redis = children.add(RedisServer(root / "redis")).start()
        self.primary = children.add(FakeProcess(root / "primary.log", *fake_args)).start()
        self.secondary = children.add(FakeProcess(root / "secondary.log", *fake_args)).start()
        workdir = root / "gateway"
        workdir.mkdir()

        def config(_: str) -> dict[str, Any]:
            return chaos_config(
                self.primary.base_url, self.secondary.base_url, workdir, self.redis.url
            )

        self.gateway = start_stack(
            children, workdir, config, SharedFake(self.primary), envoy_name="chaos-envoy"
        )

    def kill(self, fault: str) -> None:
        """SIGKILL the component (and reap it)."""
        proc = {
            "processor": self.gateway.processor,
            "provider": self.primary.proc,
            "redis": self.redis.proc,
            "envoy": self.gateway.envoy,
        }[fault]
        assert proc is not None and proc.poll() is None, f"{fault} is not running"
        proc.kill()
        proc.wait()
        if proc.stdout is not None:  # the fake's pipe (its first line: the port)
            proc.stdout.close()

    def restart(self, fault: str) -> None:
        """Start the component again, same command, same ports; return once it is ready."""
        if fault == "processor":
            self.gateway.start_processor()
        elif fault == "provider":
            self.primary.start()
        elif fault == "redis":
            self.redis.start()
        else:
            self.gateway.start_envoy()

    def metric(self, name: str) -> float:
        """A processor sample without labels (0 when absent)."""
        text = httpx.get(f"{self.gateway.admin_url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
        return 0.0

    def usage(self, tenant: str) -> dict[str, Any]:
        """The tenant's `/usage` entry (totals, windows) from Redis."""
        answer = httpx.get(f"{self.gateway.admin_url}/usage", params={"tenant": tenant}, timeout=10)
        answer.raise_for_status()
        entry: dict[str, Any] = answer.json()["tenants"][tenant]
        return entry

    def primary_healthy(self) -> bool:
        """Whether the processor sees the primary provider healthy again."""
        answer = httpx.get(f"{self.gateway.admin_url}/breakers", timeout=10).json()
        return bool(answer.get("providers", {}).get("p-primary", {}).get("healthy"))

    def logs(self) -> str:
        """The processor's and Envoy's logs (their tails)."""
        return self.gateway.dump_logs()


def wait_for(check: Callable[[], bool], timeout: float, poll: float = 0.1) -> float | None:
    """Seconds until `check()` held (None: not within `timeout`); errors count as not yet."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(httpx.HTTPError, OSError):
            if check():
                return time.monotonic() - start
        time.sleep(poll)
    return None


# --- one fault -------------------------------------------------------------------------------


@dataclass
class Windows:
    """How long each part of a fault's run lasts (seconds) and how recovery is judged."""

    warm: float = 10.0
    outage: float = 3.0
    tail: float = 10.0
    recover_timeout: float = 60.0
    streak: int = 5
    clients: int = 8
    deadline: float = 15.0
    lease_wait: float = 0.0  # after a processor kill, wait this long for leaked leases to lapse


@dataclass
class FaultResult:
    """The figures of one fault."""

    fault: str
    sent: int = 0
    ok: int = 0
    clean_errors: dict[str, int] = field(default_factory=dict)
    connection_errors: dict[str, int] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    in_flight_at_kill: int = 0
    restart_ready_s: float = 0.0
    recovery_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def lost_total(self) -> int:
        """Requests lost."""
        return sum(self.lost.values())


def run_fault(
    stack: ChaosStack, fault: str, windows: Windows, say: Callable[[str], None]
) -> FaultResult:
    """Traffic, kill -9, outage, restart, traffic until recovered, then the counters."""
    tenant = f"chaos-{fault}"
    result = FaultResult(fault)
    local_before = stack.metric("gateway_limiter_local_decisions_total")
    traffic = Traffic(
        stack.gateway.base_url, key_for(fault), windows.clients, windows.deadline, fault
    )
    traffic.start()
    try:
        time.sleep(windows.warm)
        warm = traffic.snapshot()
        if not any(o.kind == "ok" for o in warm):
            result.problems.append("no success before the fault")
        say(f"{fault}: kill -9 after {len(warm)} requests")
        t_kill = time.monotonic()
        stack.kill(fault)
        time.sleep(windows.outage)
        t_restart = time.monotonic()
        stack.restart(fault)
        result.restart_ready_s = time.monotonic() - t_restart
        say(f"{fault}: restarted, ready after {result.restart_ready_s:.2f} s")
        t_redis_up: float | None = None
        if fault == "redis":
            up = wait_for(
                lambda: stack.metric("gateway_limiter_redis_up") == 1, windows.recover_timeout
            )
            t_redis_up = None if up is None else time.monotonic()
            result.extra["processor_uses_redis_again_s"] = up
        if fault == "provider":
            result.extra["primary_healthy_again_s"] = wait_for(
                stack.primary_healthy, windows.recover_timeout
            )
        wait_for(
            lambda: recovery_s(traffic.snapshot(), t_restart, windows.streak) is not None,
            windows.recover_timeout,
        )
        time.sleep(windows.tail)
    finally:
        outcomes = traffic.stop()
    result.recovery_s = recovery_s(outcomes, t_restart, windows.streak)
    if result.recovery_s is None:
        result.problems.append(f"no {windows.streak} successes in a row after the restart")
    result.sent = len(outcomes)
    by_kind: dict[str, Counter[str]] = {
        k: Counter() for k in ("ok", "error", "connection", "cut", "lost")
    }
    for outcome in outcomes:
        by_kind[outcome.kind][outcome.detail] += 1
    result.ok = sum(by_kind["ok"].values())
    result.clean_errors = dict(by_kind["error"])
    result.connection_errors = dict(by_kind["connection"])
    result.cut = dict(by_kind["cut"])
    result.lost = dict(by_kind["lost"])
    if result.lost:
        result.problems.append(f"lost {result.lost_total}: {result.lost}")
    internal = {d: n for d, n in result.clean_errors.items() if d.startswith("500 ")}
    if internal:
        result.problems.append(f"500 internal errors: {internal}")
    result.extra["timeline_s"] = timeline(outcomes, t_kill, t_restart)
    if fault == "redis":
        local = stack.metric("gateway_limiter_local_decisions_total") - local_before
        result.extra["local_decisions"] = local
    around_kill = [o for o in outcomes if o.start <= t_kill <= o.end]
    result.in_flight_at_kill = len(around_kill)
    check_counters(stack, tenant, fault, outcomes, t_kill, t_restart, t_redis_up, windows, result)
    return result


def check_counters(
    stack: ChaosStack,
    tenant: str,
    fault: str,
    outcomes: list[Outcome],
    t_kill: float,
    t_restart: float,
    t_redis_up: float | None,
    windows: Windows,
    result: FaultResult,
) -> None:
    """The tenant's counters after the traffic: `requests` within bounds, concurrency 0."""

    def at_kill(o: Outcome) -> bool:
        return o.start <= t_kill <= o.end

    def admitted(o: Outcome) -> bool | None:
        """True: counted for sure; False: never counted; None: either."""
        if at_kill(o):
            return None
        if o.kind == "ok":
            return True
        if o.kind == "connection" or o.detail.split(" ")[-1] in NOT_ADMITTED:
            return False
        return None

    # Redis comes back empty (no persistence): it counts only what it admitted since it is
    # back. Requests admitted on local limits meanwhile are counted in the processor's memory.
    redis = fault == "redis"
    up = t_redis_up if t_redis_up is not None else float("inf")
    low = high = 0
    for o in outcomes:
        verdict = admitted(o)
        low += verdict is True and (not redis or o.start >= up)
        high += verdict is not False and (not redis or o.end >= t_restart - SETTLE_SLACK_S)

    def settled() -> bool:
        return concurrency(stack.usage(tenant)) == 0

    # Settlements reach Redis in a task after each answer: give them a moment.
    wait_for(settled, 10)
    usage = stack.usage(tenant)
    requests = usage["totals"].get("requests", 0.0)
    in_flight = concurrency(usage)
    counters: dict[str, Any] = {
        "requests_counted": requests,
        "requests_expected_min": low,
        "requests_expected_max": high,
        "concurrency_after": in_flight,
        "requests_window_used": window(usage, "requests"),
    }
    if not low <= requests <= high:
        result.problems.append(f"requests counted {requests:g}, expected {low}..{high}")
    if fault == "processor":
        # Leases the dead processor held: they lapse after the request timeout + 60 s.
        counters["concurrency_expected_max"] = result.in_flight_at_kill
        if not 0 <= in_flight <= result.in_flight_at_kill:
            result.problems.append(
                f"concurrency {in_flight:g} after the traffic, "
                f"expected 0..{result.in_flight_at_kill}"
            )
        if in_flight and windows.lease_wait:
            lapsed = wait_for(settled, windows.lease_wait, poll=1)
            # Since the kill: the leases were taken just before it.
            counters["leaked_leases_lapsed_s_after_kill"] = (
                None if lapsed is None else round(time.monotonic() - t_kill, 1)
            )
            if lapsed is None:
                result.problems.append(f"leaked leases did not lapse within {windows.lease_wait} s")
    else:
        counters["concurrency_expected_max"] = 0
        if in_flight != 0:
            result.problems.append(f"concurrency {in_flight:g} after the traffic, expected 0")
    result.counters = counters


def window(usage: dict[str, Any], limit: str) -> float:
    """`used` of the tenant's window of this kind."""
    for entry in usage["windows"]:
        if entry["limit"] == limit:
            return float(entry["used"])
    raise KeyError(limit)


def concurrency(usage: dict[str, Any]) -> float:
    """The tenant's requests in flight, as Redis counts them."""
    return window(usage, "concurrency")


@contextlib.contextmanager
def chaos_stack(root: Path) -> Iterator[ChaosStack]:
    """A started `ChaosStack` in `root`, stopped at the end."""
    with ProcessGroup() as children:
        yield ChaosStack(root, children)


def run_all(
    root: Path, faults: list[str], windows: Windows, say: Callable[[str], None]
) -> list[FaultResult]:
    """Every fault in turn on one stack."""
    results = []
    with chaos_stack(root) as stack:
        for fault in faults:
            result = run_fault(stack, fault, windows, say)
            results.append(result)
            say(f"{fault}: {summary(result)}")
            if result.problems:
                say(f"{fault}: problems: {result.problems}")
                result.extra["logs"] = stack.logs()[-6000:]
    return results


def summary(result: FaultResult) -> str:
    """One line of a fault's figures."""
    return (
        f"sent {result.sent}, ok {result.ok}, clean errors {result.clean_errors}, "
        f"connection {result.connection_errors}, cut {result.cut}, lost {result.lost_total}, "
        f"recovery {result.recovery_s}, counters {result.counters}"
    )


def table(results: list[FaultResult]) -> str:
    """The markdown table of the figures."""

    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(values.items())) or "0"

    lines = [
        "| fault | sent | ok | clean errors | connection errors | cut mid-answer | lost "
        "| restart ready s | recovered s | requests counted (expected) | concurrency after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.counters
        recovered = "—" if r.recovery_s is None else f"{r.recovery_s:.2f}"
        lines.append(
            f"| {r.fault} | {r.sent} | {r.ok} | {counts(r.clean_errors)} "
            f"| {counts(r.connection_errors)} | {counts(r.cut)} | {r.lost_total} "
            f"| {r.restart_ready_s:.2f} | {recovered} "
            f"| {c.get('requests_counted', 0):g} ({c.get('requests_expected_min')}.."
            f"{c.get('requests_expected_max')}) "
            f"| {c.get('concurrency_after', 0):g} (≤ {c.get('concurrency_expected_max')}) |"
        )
    return "\n".join(lines)


def main() -> int:
    """Run every fault, print the table, write the JSON; 1 when anything failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warm", type=float, default=20)
    parser.add_argument("--outage", type=float, default=5)
    parser.add_argument("--tail", type=float, default=20)
    parser.add_argument("--deadline", type=float, default=15, help="client deadline per request")
    parser.add_argument("--lease-wait", type=float, default=REQUEST_TIMEOUT_S + LEASE_MARGIN_S + 20)
    args = parser.parse_args()
    windows = Windows(
        warm=args.warm,
        outage=args.outage,
        tail=args.tail,
        clients=args.clients,
        deadline=args.deadline,
        lease_wait=args.lease_wait,
    )
    from bench.progress import log
    from bench.report import machine_info

    faults = [f for f in args.faults.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        results = run_all(Path(tmp), faults, windows, log)
    print(table(results))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"chaos-{stamp}.json"
    report = {
        "command": "make chaos",
        "machine": machine_info(),
        "windows": asdict(windows),
        "faults": [{**asdict(r), "lost_total": r.lost_total} for r in results],
    }
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {path}")
    failed = [r.fault for r in results if r.problems]
    if failed:
        log(f"FAILED: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
