"""Concurrency, end to end: a reload while 100 requests are in flight, 50 failures at once
against one target, and limits and budgets decided by three processors at once on one Redis —
each consistent with what was sent.

Real Envoy + processor (three of each for the limits, on one redis-server) + the fake provider,
whose stream gate and latency keep requests in flight for as long as a test needs.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from extproc.decisions.auth import hash_key
from extproc.dev.fakes import FakeProviderServer
from tests.e2e.answers import Answer, send_chat
from tests.e2e.conftest import (
    Stack,
    make_stack,
    metric,
    reset_breakers,
    wait_until,
)
from tests.e2e.redis_replicas import RedisReplicas, redis_replicas

pytestmark = pytest.mark.e2e

REPLY = "every word of the answer arrived"
Json = dict[str, Any]


def send(stack: Stack, model: str, stream: bool) -> Answer:
    return send_chat(stack, model, stream, timeout=120)


# -- one stack: reload and breaker ----------------------------------------------------------


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Breakers stay open 60 s: no half-open probe during a test, whatever the machine's speed.
    def customize(config: Json) -> None:
        config["resilience"]["breaker_open_seconds"] = 60

    with make_stack(tmp_path_factory.mktemp("concurrency"), customize=customize) as stack:
        yield stack


@pytest.fixture
def fake(one: Stack) -> Iterator[FakeProviderServer]:
    one.fake.clear()
    reset_breakers(one)
    yield one.fake
    one.fake.clear()
    reset_breakers(one)


def test_a_reload_while_100_requests_are_in_flight_loses_none_and_applies(
    one: Stack, fake: FakeProviderServer
) -> None:
    # Streams hold after their first chunk until the gate opens; whole answers wait 5 s first.
    gate = threading.Event()
    fake.set_behaviour(stream_gate=gate, latency_s=5.0, reply=REPLY)
    config = copy.deepcopy(one.config)
    config["models"].append(
        {"name": "chat-after-reload", "targets": [{"provider": "p-vllm", "model": "new-up"}]}
    )
    total = 100
    with ThreadPoolExecutor(total) as pool:
        try:
            futures = [
                pool.submit(send, one, "chat-openai" if i % 2 else "chat-anthropic", i % 2 == 0)
                for i in range(total)
            ]
            wait_until(lambda: len(fake.requests) == total, "100 requests at the provider")
            in_flight = metric(one, "gateway_requests_in_flight")
            answer = one.reload(config)
            done_at_reload = sum(f.done() for f in futures)
        finally:
            gate.set()
        answers = [f.result(timeout=120) for f in futures]
    print(f"reload with {in_flight:.0f} requests in flight: {answer['result']}")
    assert in_flight == total  # every one of them was in flight when the reload began
    assert done_at_reload < total  # the gated streams at least outlived the reload
    assert answer["result"] == "success", answer
    assert "models added: chat-after-reload" in answer["changes"]
    assert [a.status for a in answers] == [200] * total
    assert [a.text() for a in answers] == [REPLY] * total
    # The reload is in force: the new model answers; the old config retires once its
    # requests are done.
    fake.clear()
    after = send(one, "chat-after-reload", False)
    assert after.status == 200, after.body
    (seen,) = fake.requests
    assert seen.json["model"] == "new-up"
    wait_until(lambda: one.last_reload()["retiring_configs"] == 0, "the old config to retire")
    assert metric(one, "gateway_processor_exceptions_total") == 0


def opens(stack: Stack, target: str) -> float:
    """The breaker's open transitions so far (the series appears at the first one)."""
    try:
        return metric(stack, "gateway_breaker_transitions_total", target=target, state="open")
    except AssertionError:
        return 0.0


def test_fifty_concurrent_failures_of_one_target_open_its_breaker_exactly_once(
    one: Stack, fake: FakeProviderServer
) -> None:
    target = "p-vllm/llama-up"  # chat-vllm's only target
    opened = opens(one, target)
    # Every answer fails, 1 s late: the 50 are in flight together when the failures land.
    fake.set_behaviour(status=500, latency_s=1.0)
    total = 50
    barrier = threading.Barrier(total)

    def fail(index: int) -> Answer:
        barrier.wait(timeout=60)
        return send(one, "chat-vllm", index % 2 == 0)

    with ThreadPoolExecutor(total) as pool:
        answers = list(pool.map(fail, range(total)))
    statuses = Counter(a.status for a in answers)
    codes = Counter(a.error()["code"] for a in answers)
    print(f"50 concurrent failures: {dict(statuses)} {dict(codes)}")
    # Clean errors only: the provider's failure (502) or the breaker's / Envoy's 503.
    assert set(statuses) <= {502, 503}, statuses
    assert 500 not in statuses
    assert opens(one, target) - opened == 1
    breakers = httpx.get(f"{one.admin_url}/breakers", timeout=10).json()
    assert breakers[target]["state"] == "open"
    assert metric(one, "gateway_processor_exceptions_total") == 0


# -- three processors on one Redis: limits and budgets ---------------------------------------

RPM_KEY = "sk-conc-rpm"
RPM = 45
BUDGET_KEY = "sk-conc-budget"
MAX_TOKENS = 1000
# Room for 10 reservations of max_tokens plus a prompt estimate each (a few tokens for "hi";
# 50 would be far more than any estimate of it), not for 11.
BUDGET_REQUESTS = 10
BUDGET = BUDGET_REQUESTS * (MAX_TOKENS + 50)
CONC_KEY = "sk-conc-parallel"
CONCURRENT = 6
MODEL = "chat-openai"


def limited(redis_url: str) -> Callable[[Json], None]:
    def customize(config: Json) -> None:
        config["governance"] = {"backend": "redis", "redis": {"url": redis_url}}
        config["tenants"] += [
            {
                "name": "rpm",
                "api_key_sha256": [hash_key(RPM_KEY)],
                "limits": {"requests_per_minute": RPM, "concurrent_requests": 1000},
            },
            {
                "name": "budget",
                "api_key_sha256": [hash_key(BUDGET_KEY)],
                "limits": {"concurrent_requests": 1000},
                "budgets": [{"limit": BUDGET, "unit": "tokens", "period": "day"}],
            },
            {
                "name": "parallel",
                "api_key_sha256": [hash_key(CONC_KEY)],
                "limits": {"concurrent_requests": CONCURRENT},
            },
        ]

    return customize


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisReplicas]:
    with redis_replicas(tmp_path_factory.mktemp("conc-redis"), [limited] * 3) as replicas:
        yield replicas


def tenant_usage(stack: Stack, tenant: str) -> Json:
    answer = httpx.get(f"{stack.admin_url}/usage", params={"tenant": tenant}, timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["backend"] == "redis"
    usage: Json = body["tenants"][tenant]
    return usage


def window(usage: Json, limit: str) -> Json:
    (found,) = [w for w in usage["windows"] if w["scope"] == "tenant" and w["limit"] == limit]
    return found


class Result:
    """One SDK request: its status, error code and the usage the client was told."""

    def __init__(self, status: int, code: str | None = None, usage: Any = None) -> None:
        self.status = status
        self.code = code
        self.usage = usage


def refused(exc: openai.APIStatusError) -> Result:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return Result(exc.status_code, error.get("code"))


def spread(replicas: RedisReplicas, key: str, count: int) -> list[openai.OpenAI]:
    clients = [stack.client(key, timeout=120) for stack in replicas.stacks]
    cycle = itertools.cycle(clients)
    return [next(cycle) for _ in range(count)]


def held_streams(
    replicas: RedisReplicas, key: str, count: int, **create: Any
) -> tuple[list[Result], int]:
    """`count` streams at once over the three replicas, held open by the fake until every one
    is admitted or refused (so no settlement frees room meanwhile); their results, and the
    number the fake had open at that moment."""
    gate = threading.Event()
    replicas.fake.set_behaviour(stream_gate=gate, reply=REPLY)
    decided = threading.Semaphore(0)

    def stream(client: openai.OpenAI) -> Result:
        try:
            answer = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
                **create,
            )
        except openai.APIStatusError as exc:
            decided.release()
            return refused(exc)
        decided.release()
        usage = None
        text = ""
        with answer:
            for chunk in answer:
                if chunk.usage is not None:
                    usage = chunk.usage
                text += "".join(c.delta.content or "" for c in chunk.choices)
        assert text == REPLY
        return Result(200, usage=usage)

    try:
        with ThreadPoolExecutor(count) as pool:
            futures = [pool.submit(stream, c) for c in spread(replicas, key, count)]
            for _ in range(count):
                assert decided.acquire(timeout=120)
            open_streams = replicas.fake.stream_started
            gate.set()
            return [f.result(timeout=120) for f in futures], open_streams
    finally:
        gate.set()
        replicas.fake.clear()


def settled(replicas: RedisReplicas, tenant: str, requests: int) -> Json:
    """The tenant's usage once its `requests` are all settled, the same on every replica."""
    stack = replicas.stacks[0]
    wait_until(
        lambda: (
            tenant_usage(stack, tenant)["totals"].get("requests") == requests
            and window(tenant_usage(stack, tenant), "concurrency")["used"] == 0
        ),
        f"{tenant}'s {requests} requests to be settled",
    )
    usage = tenant_usage(stack, tenant)
    for other in replicas.stacks[1:]:
        seen = tenant_usage(other, tenant)
        assert seen["totals"] == usage["totals"]
    return usage


def no_exceptions(replicas: RedisReplicas) -> None:
    for stack in replicas.stacks:
        assert metric(stack, "gateway_processor_exceptions_total") == 0
        assert metric(stack, "gateway_limiter_local_decisions_total") == 0


def test_three_processors_admit_exactly_the_requests_per_minute_limit(
    replicas: RedisReplicas,
) -> None:
    replicas.fake.set_behaviour(reply=REPLY)
    total = 2 * RPM

    def ask(client: openai.OpenAI) -> Result:
        try:
            answer = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        except openai.APIStatusError as exc:
            return refused(exc)
        assert answer.choices[0].message.content == REPLY
        return Result(200, usage=answer.usage)

    try:
        with ThreadPoolExecutor(30) as pool:
            results = list(pool.map(ask, spread(replicas, RPM_KEY, total)))
    finally:
        replicas.fake.clear()
    statuses = Counter(r.status for r in results)
    print(f"requests per minute {RPM}, {total} sent over 3 processors: {dict(statuses)}")
    admitted = [r for r in results if r.status == 200]
    assert len(admitted) == RPM  # exactly: no over-admission, no under-admission
    assert {(r.status, r.code) for r in results if r.status != 200} == {
        (429, "rate_limit_exceeded")
    }
    usage = settled(replicas, "rpm", RPM)
    totals = usage["totals"]
    assert totals["input_tokens"] == sum(r.usage.prompt_tokens for r in admitted)
    assert totals["output_tokens"] == sum(r.usage.completion_tokens for r in admitted)
    assert window(usage, "requests")["used"] == RPM
    no_exceptions(replicas)


def test_three_processors_admit_exactly_what_a_token_budget_covers(replicas: RedisReplicas) -> None:
    results, open_streams = held_streams(replicas, BUDGET_KEY, 30, max_tokens=MAX_TOKENS)
    statuses = Counter(r.status for r in results)
    print(f"token budget for {BUDGET_REQUESTS} reservations, 30 sent: {dict(statuses)}")
    admitted = [r for r in results if r.status == 200]
    assert len(admitted) == BUDGET_REQUESTS == open_streams
    assert {(r.status, r.code) for r in results if r.status != 200} == {(429, "insufficient_quota")}
    usage = settled(replicas, "budget", BUDGET_REQUESTS)
    totals = usage["totals"]
    # Settled to what the provider reported (the client saw the same usage), not the estimate.
    reported = [r.usage for r in admitted]
    assert all(u is not None for u in reported)
    assert totals["input_tokens"] == sum(u.prompt_tokens for u in reported)
    assert totals["output_tokens"] == sum(u.completion_tokens for u in reported)
    spent = window(usage, "spend")  # a token budget: unit tokens
    assert spent["unit"] == "tokens"
    assert spent["used"] == totals["input_tokens"] + totals["output_tokens"]
    no_exceptions(replicas)


def test_three_processors_hold_exactly_the_concurrency_limit_and_free_it(
    replicas: RedisReplicas,
) -> None:
    results, open_streams = held_streams(replicas, CONC_KEY, 20)
    statuses = Counter(r.status for r in results)
    print(f"concurrency limit {CONCURRENT}, 20 held streams sent: {dict(statuses)}")
    assert statuses[200] == CONCURRENT == open_streams
    assert {(r.status, r.code) for r in results if r.status != 200} == {
        (429, "rate_limit_exceeded")
    }
    settled(replicas, "parallel", CONCURRENT)  # and the concurrency counter is back at 0
    # Freed: the same number again, at once.
    again, _ = held_streams(replicas, CONC_KEY, CONCURRENT)
    assert [r.status for r in again] == [200] * CONCURRENT
    settled(replicas, "parallel", 2 * CONCURRENT)
    no_exceptions(replicas)
