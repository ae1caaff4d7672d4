"""Limits shared through Redis, end to end: several gateway replicas (each its own Envoy and
processor) on one real redis-server enforce one global limit under concurrent load, keep
serving on local limits (or refuse with 503, fail-closed) while Redis is down, and share their
limits again once it is back, without a restart. No request ever gets a 500.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from extproc.decisions.auth import hash_key
from tests.e2e.conftest import Stack, metric, wait_until
from tests.e2e.redis_replicas import RedisReplicas, redis_replicas

pytestmark = pytest.mark.e2e

BURST_KEY = "sk-gov-burst"  # tenant "burst": 300 requests per minute
TOKENS_KEY = "sk-gov-tokens"  # tenant "tokens": 20 000 tokens per minute
SHARED_KEY = "sk-gov-shared"  # tenant "shared": 30 requests per minute
BURST_RPM = 300
TOKENS_TPM = 20_000
SHARED_RPM = 30
MODEL = "chat-openai"


def governed(redis_url: str, on_failure: str) -> Callable[[dict[str, Any]], None]:
    def customize(config: dict[str, Any]) -> None:
        config["governance"] = {
            "backend": "redis",
            "redis": {"url": redis_url, "retry_seconds": 0.5, "timeout_ms": 500},
            "on_redis_failure": on_failure,
        }
        config["tenants"] += [
            {
                "name": "burst",
                "api_key_sha256": [hash_key(BURST_KEY)],
                "limits": {"requests_per_minute": BURST_RPM},
            },
            {
                "name": "tokens",
                "api_key_sha256": [hash_key(TOKENS_KEY)],
                "limits": {"tokens_per_minute": TOKENS_TPM},
            },
            {
                "name": "shared",
                "api_key_sha256": [hash_key(SHARED_KEY)],
                "limits": {"requests_per_minute": SHARED_RPM},
            },
        ]

    return customize


class Replicas:
    """Three replicas failing open (`local`) and one failing closed (`deny`), one Redis."""

    def __init__(self, shared: RedisReplicas) -> None:
        self.redis = shared.redis
        self.fake = shared.fake
        self.open = shared.stacks[:3]
        self.closed = shared.stacks[3]

    @property
    def all(self) -> list[Stack]:
        return [*self.open, self.closed]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    modes = ["local", "local", "local", "deny"]
    customizers = [functools.partial(governed, on_failure=mode) for mode in modes]
    with redis_replicas(tmp_path_factory.mktemp("gov-redis"), customizers) as shared:
        yield Replicas(shared)


def client(stack: Stack, key: str) -> openai.OpenAI:
    return stack.client(key, timeout=60)


def usage_window(stack: Stack, tenant: str) -> dict[str, Any]:
    answer = httpx.get(f"{stack.admin_url}/usage", params={"tenant": tenant}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["backend"] == "redis"
    (window,) = body["tenants"][tenant]["windows"]
    return window  # type: ignore[no-any-return]


class Outcome:
    """A request's status, error code and Retry-After (from the SDK's answer or error)."""

    def __init__(self, status: int, code: str | None = None, retry: str | None = None) -> None:
        self.status = status
        self.code = code
        self.retry = retry


def ask(sdk: openai.OpenAI, text: str = "hello") -> Outcome:
    try:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error", body) if isinstance(body, dict) else {}
        return Outcome(exc.status_code, error.get("code"), exc.response.headers.get("retry-after"))
    return Outcome(200)


def no_processor_exceptions(stacks: list[Stack]) -> None:
    for stack in stacks:
        assert metric(stack, "gateway_processor_exceptions_total") == 0, stack.dump_logs()


# -- one global limit, three replicas ------------------------------------------------------


def test_three_replicas_enforce_one_requests_per_minute_limit_under_load(
    replicas: Replicas,
) -> None:
    clients = [client(stack, BURST_KEY) for stack in replicas.open]
    total = 2 * BURST_RPM
    spread = itertools.cycle(range(3))
    plan = [next(spread) for _ in range(total)]
    started = time.monotonic()
    with ThreadPoolExecutor(48) as pool:
        outcomes = list(pool.map(lambda index: (index, ask(clients[index])), plan))
    took = time.monotonic() - started  # reported, not asserted: all of it in one window

    statuses = Counter(o.status for _, o in outcomes)
    admitted = statuses[200]
    print(f"admitted {admitted} of {total} (limit {BURST_RPM}) in {took:.1f} s: {dict(statuses)}")
    assert admitted <= BURST_RPM  # never more
    assert admitted >= BURST_RPM * 0.99
    assert admitted == BURST_RPM  # exactly, in fact: one sliding window in Redis
    assert statuses[429] == total - admitted
    refused = [o for _, o in outcomes if o.status == 429]
    assert {o.code for o in refused} == {"rate_limit_exceeded"}
    assert all(o.retry is not None and 1 <= int(o.retry) <= 60 for o in refused)
    # Every replica admitted some: the limit is the sum over all three, not each one's own.
    per_replica = Counter(index for index, o in outcomes if o.status == 200)
    assert sorted(per_replica) == [0, 1, 2], per_replica
    # Every replica sees the same window in Redis.
    for stack in replicas.open:
        window = usage_window(stack, "burst")
        assert window["used"] == BURST_RPM
        assert window["remaining"] == 0
    for stack in replicas.open:
        assert metric(stack, "gateway_limiter_local_decisions_total") == 0
        assert metric(stack, "gateway_limiter_redis_up") == 1
    no_processor_exceptions(replicas.all)


def test_three_replicas_enforce_one_tokens_per_minute_limit_under_load(
    replicas: Replicas,
) -> None:
    # Each request reserves its prompt estimate (a few tokens) + max_tokens 1000: 19 fit in
    # 20 000. Streams held open by the fake keep every reservation unsettled until all
    # requests have been decided, so settlement cannot free room during the burst.
    gate = threading.Event()
    replicas.fake.set_behaviour(stream_gate=gate)
    clients = [client(stack, TOKENS_KEY) for stack in replicas.open]
    decided = threading.Semaphore(0)

    def stream(index: int) -> Outcome:
        try:
            answer = clients[index].chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "count my tokens"}],
                max_tokens=1000,
                stream=True,
            )
        except openai.APIStatusError as exc:
            decided.release()
            return Outcome(exc.status_code, None, exc.response.headers.get("retry-after"))
        decided.release()
        with answer:
            text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
        assert text
        return Outcome(200)

    total = 90
    try:
        with ThreadPoolExecutor(total) as pool:
            futures = [pool.submit(stream, index % 3) for index in range(total)]
            for _ in range(total):  # every request admitted (its stream open) or refused
                assert decided.acquire(timeout=60)
            gate.set()
            outcomes = [f.result() for f in futures]
    finally:
        gate.set()
        replicas.fake.clear()
    statuses = Counter(o.status for o in outcomes)
    print(f"tokens per minute: admitted {statuses[200]} of {total}: {dict(statuses)}")
    assert statuses[200] == TOKENS_TPM // 1010
    assert statuses[429] == total - statuses[200]
    no_processor_exceptions(replicas.all)


# -- Redis down, then back ------------------------------------------------------------------


def test_redis_down_serves_on_local_limits_or_refuses_then_shares_again(
    replicas: Replicas,
) -> None:
    a, b, c = replicas.open
    sdk = {stack.admin_url: client(stack, SHARED_KEY) for stack in replicas.all}
    outcomes: list[Outcome] = []

    def send(stack: Stack, count: int) -> list[Outcome]:
        got = [ask(sdk[stack.admin_url]) for _ in range(count)]
        outcomes.extend(got)
        return got

    # Shared: requests through two replicas land in one window.
    assert {o.status for o in send(a, 3) + send(b, 2)} == {200}
    assert usage_window(a, "shared")["used"] == usage_window(b, "shared")["used"] == 5

    local_before = metric(a, "gateway_limiter_local_decisions_total")
    replicas.redis.kill()
    try:
        # Fail-open: replica a keeps answering 200, on its own limits (its own window of 30).
        down = send(a, SHARED_RPM)
        assert {o.status for o in down} == {200}, Counter(o.status for o in down)
        refused = send(a, 1)[0]
        assert (refused.status, refused.code) == (429, "rate_limit_exceeded")
        assert metric(a, "gateway_limiter_local_decisions_total") - local_before >= SHARED_RPM
        assert metric(a, "gateway_limiter_redis_up") == 0
        assert metric(a, "gateway_limiter_redis_failures_total", operation="admission") >= 1
        log = (a.processor_log or Path("/nonexistent")).read_text(errors="replace")
        assert "redis unreachable during admission" in log
        assert "using local limits" in log
        # Fail-closed: the deny replica refuses with 503 rate_limiter_unavailable.
        for closed in send(replicas.closed, 3):
            assert (closed.status, closed.code) == (503, "rate_limiter_unavailable")
            assert closed.retry == "1"
        assert metric(replicas.closed, "gateway_limiter_redis_up") == 0
    finally:
        replicas.redis.start()  # same port, empty

    # Back: no processor restarted, and their limits are shared again. Redis came back empty,
    # so the shared window counts only what follows. Until replica a tries Redis again its
    # own window (full: 30 served) refuses; every 200 from now on was admitted by Redis.
    probes: list[Outcome] = []

    def shared_again() -> bool:
        probes.extend(send(a, 1))
        return metric(a, "gateway_limiter_redis_up") == 1

    # Polled every 0.1 s (each check sends a request) for at most 30 s.
    wait_until(shared_again, "replica a to use Redis again", timeout=30, poll=0.1)
    # The probe that saw Redis back may itself have been decided locally (429): the next
    # request is Redis's, on its empty window.
    probes.extend(send(a, 1))
    assert probes[-1].status == 200, probes[-1]
    assert {o.status for o in probes} <= {200, 429}
    after_a = sum(1 for o in probes if o.status == 200)
    assert usage_window(a, "shared")["used"] == after_a >= 1
    assert {o.status for o in send(b, 10) + send(c, 5)} == {200}
    used = [usage_window(stack, "shared")["used"] for stack in (a, b, c)]
    assert used == [after_a + 15] * 3
    # The limit is global again: fill it through b and c, and a (which served 31 locally a
    # moment ago) is refused at exactly the shared limit.
    rest = SHARED_RPM - int(used[0])
    assert {o.status for o in send(b, rest // 2) + send(c, rest - rest // 2)} == {200}
    for stack in (a, b, c):
        refused = send(stack, 1)[0]
        assert (refused.status, refused.code) == (429, "rate_limit_exceeded")
    assert usage_window(c, "shared")["used"] == SHARED_RPM
    for stack in (a, b, c):
        assert metric(stack, "gateway_limiter_redis_up") == 1
    # The deny replica answers from Redis again too: 429 (the shared window is full), no 503.
    wait_until(
        lambda: ask(sdk[replicas.closed.admin_url]).status == 429,
        "the deny replica to answer from Redis again",
        timeout=30,
        poll=0.1,
    )
    assert "redis answers again" in (a.processor_log or Path("/nonexistent")).read_text()
    assert Counter(o.status for o in outcomes).keys() <= {200, 429, 503}
    no_processor_exceptions(replicas.all)
