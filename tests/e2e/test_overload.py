"""Overload, end to end: a processor at its `processor.max_in_flight` sheds the excess with
503 `overloaded` + `Retry-After` + an OpenAI-style body, answered at once instead of queued;
the requests it admitted finish whole; every request gets an answer (never a 500); the metric
and the access log count exactly the shed ones; and it serves everything again by itself once
the load drops.

Real Envoy + processor + the fake provider (its stream gate and latency make it slow).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.access_log import access_lines
from tests.e2e.answers import Answer, send_chat
from tests.e2e.conftest import Stack, make_stack, metric, wait_until

pytestmark = pytest.mark.e2e

MAX_IN_FLIGHT = 8
MODEL = "chat-openai"
REPLY = "admitted and answered in full"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose processor admits 8 requests at once."""
    with make_stack(
        tmp_path_factory.mktemp("overload"), processor_overrides={"max_in_flight": MAX_IN_FLIGHT}
    ) as stack:
        yield stack


@pytest.fixture
def fake(small: Stack) -> Iterator[Any]:
    small.fake.clear()
    yield small.fake
    small.fake.clear()


def send(stack: Stack, stream: bool) -> Answer:
    return send_chat(stack, MODEL, stream, timeout=60)


def shed_total(stack: Stack) -> float:
    return metric(stack, "gateway_shed_requests_total", reason="in_flight")


def overloaded_lines(stack: Stack) -> int:
    return sum(1 for line in access_lines(stack) if line["error_code"] == "overloaded")


def assert_shed(answer: Answer) -> None:
    assert answer.status == 503, (answer.status, answer.body)
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.error()
    assert (error["code"], error["type"]) == ("overloaded", "service_unavailable")


def test_at_capacity_new_requests_are_shed_at_once_and_admitted_ones_finish(
    small: Stack, fake: Any
) -> None:
    # The fake holds every stream after its first chunk: 8 requests stay in flight.
    gate = threading.Event()
    fake.set_behaviour(stream_gate=gate, reply=REPLY)
    shed_before = shed_total(small)
    lines_before = overloaded_lines(small)
    with ThreadPoolExecutor(MAX_IN_FLIGHT + 16) as pool:
        try:
            held = [pool.submit(send, small, True) for _ in range(MAX_IN_FLIGHT)]
            wait_until(lambda: fake.stream_started == MAX_IN_FLIGHT, "8 streams to be held")
            assert metric(small, "gateway_requests_in_flight") == MAX_IN_FLIGHT
            # Full: 16 more, streams and not, are each answered at once with a 503 (they
            # return while the 8 are still held: nothing waits in a queue).
            extra = [pool.submit(send, small, index % 2 == 0) for index in range(16)]
            shed = [f.result(timeout=60) for f in extra]
            assert not any(f.done() for f in held)
            # Health checks through the listener are not shed.
            health = httpx.get(f"{small.base_url}/health", timeout=10)
            assert health.status_code == 200
        finally:
            gate.set()
        admitted = [f.result(timeout=60) for f in held]
    for answer in shed:
        assert_shed(answer)
    for answer in admitted:
        assert answer.status == 200
        assert answer.text() == REPLY
    # The shed requests never reached the provider.
    assert len(fake.requests) == MAX_IN_FLIGHT
    assert shed_total(small) - shed_before == len(shed)
    wait_until(lambda: overloaded_lines(small) - lines_before == len(shed), "the access log")
    wait_until(lambda: metric(small, "gateway_requests_in_flight") == 0, "every slot freed")
    # The load dropped: everything is served again, with no restart and nothing to reset.
    fake.set_behaviour(reply=REPLY)
    with ThreadPoolExecutor(MAX_IN_FLIGHT // 2) as pool:
        after = list(pool.map(lambda i: send(small, i % 2 == 0), range(24)))
    assert [a.status for a in after] == [200] * 24
    assert {a.text() for a in after} == {REPLY}
    assert shed_total(small) - shed_before == len(shed)
    assert metric(small, "gateway_processor_exceptions_total") == 0


def test_a_burst_above_capacity_gets_every_request_answered_200_or_503(
    small: Stack, fake: Any
) -> None:
    # 40 clients at once against a provider taking 2 s: at most 8 are admitted at a time.
    fake.set_behaviour(latency_s=2.0, reply=REPLY)
    total = 40
    shed_before = shed_total(small)
    barrier = threading.Barrier(total)

    def one(index: int) -> Answer:
        barrier.wait(timeout=60)
        return send(small, index % 2 == 0)

    with ThreadPoolExecutor(total) as pool:
        answers = list(pool.map(one, range(total)))  # every request got an answer
    statuses = Counter(a.status for a in answers)
    print(f"burst of {total} at max_in_flight {MAX_IN_FLIGHT}: {dict(statuses)}")
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= MAX_IN_FLIGHT  # the first 8 to arrive found room
    assert statuses[503] >= 1
    for answer in answers:
        if answer.status == 503:
            assert_shed(answer)
        else:
            assert answer.text() == REPLY
    assert shed_total(small) - shed_before == statuses[503]
    assert len(fake.requests) == statuses[200]
    wait_until(lambda: metric(small, "gateway_requests_in_flight") == 0, "every slot freed")
    assert metric(small, "gateway_processor_exceptions_total") == 0
