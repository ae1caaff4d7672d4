"""End to end: graceful shutdown, processor outage and recovery, admin endpoints."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import FULL_KEY, Stack, free_port

pytestmark = pytest.mark.e2e

CHAT = {"model": "chat-openai", "messages": [{"role": "user", "content": "slow one"}]}
AUTH = {"authorization": f"Bearer {FULL_KEY}"}


def test_sigterm_lets_in_flight_requests_finish(fresh_stack: Stack) -> None:
    stack = fresh_stack
    stack.fake.set_behaviour(latency_s=2)
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(
            f"{stack.base_url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30
        )

    worker = threading.Thread(target=call)
    worker.start()
    stack.fake.wait_for_requests(1, timeout=10)  # the request is now waiting on the provider
    assert stack.processor is not None
    stack.processor.send_signal(signal.SIGTERM)
    worker.join(30)
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].json()["choices"][0]["message"]["content"] == "echo: slow one"
    assert stack.processor.wait(30) == 0
    log = stack.dump_logs()
    # The downstream stream and the attempt's upstream stream were both in flight.
    assert re.search(r"draining [1-9]\d* in-flight", log), log


def test_processor_outage_is_a_clear_503_and_recovers(fresh_stack: Stack) -> None:
    stack = fresh_stack
    assert stack.processor is not None
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                url = f"{stack.base_url}/v1/chat/completions"
                statuses.append(client.post(url, json=CHAT, headers=AUTH).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(0.3)
        stack.processor.send_signal(signal.SIGKILL)  # killed under traffic
        stack.processor.wait(10)
        time.sleep(0.3)
        reached = len(stack.fake.requests)
        response = httpx.post(
            f"{stack.base_url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "processor_unavailable"
        assert set(error) == {"message", "type", "param", "code"}
        assert httpx.get(f"{stack.base_url}/health", timeout=10).status_code == 503
        time.sleep(0.5)
        # Fail-closed: nothing reached the provider while the processor was down.
        assert len(stack.fake.requests) == reached

        stack.start_processor()  # same socket path; Envoy reconnects by itself
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and statuses[-5:] != [200] * 5:
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(30)
    # Traffic saw answers before the kill, clean 503s during the outage, answers after.
    assert statuses[0] == 200 and 503 in statuses and statuses[-5:] == [200] * 5
    assert set(statuses) <= {200, 503}, sorted(set(statuses))


def test_processor_admin_endpoints(stack: Stack) -> None:
    assert httpx.get(f"{stack.admin_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.admin_url}/readyz").status_code == 200
    metrics = httpx.get(f"{stack.admin_url}/metrics")
    assert metrics.status_code == 200
    assert "gateway_requests_total" in metrics.text
    assert "gateway_extproc_streams_active" in metrics.text
    # The processor's own RSS, for the memory alert (docs/operations.md).
    (rss,) = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("process_resident_memory_bytes ")
    ]
    assert float(rss.split()[1]) > 10 * 1024 * 1024


def test_processor_over_tcp_instead_of_a_unix_socket(tmp_path: Path) -> None:
    from tests.e2e.conftest import make_stack

    processor = {"unix_socket": None, "tcp_address": f"127.0.0.1:{free_port()}"}
    stack = make_stack(tmp_path, processor_overrides=processor)
    try:
        assert not (tmp_path / "extproc.sock").exists()
        reply = stack.client().chat.completions.create(
            model="chat-openai", messages=[{"role": "user", "content": "over tcp"}]
        )
        assert reply.choices[0].message.content == "echo: over tcp"
    finally:
        stack.stop()
        stack.fake.stop()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_processor_event_loop_is_configurable(tmp_path: Path, loop: str) -> None:
    from tests.e2e.conftest import make_stack

    stack = make_stack(tmp_path, processor_overrides={"event_loop": loop})
    try:
        reply = stack.client().chat.completions.create(
            model="chat-anthropic", messages=[{"role": "user", "content": f"on {loop}"}]
        )
        assert reply.choices[0].message.content == f"echo: on {loop}"
    finally:
        stack.stop()
        stack.fake.stop()
    assert f"event loop {loop}" in stack.dump_logs(tail=None)


def test_fail_open_sends_requests_through_when_the_processor_is_down(tmp_path: Path) -> None:
    from tests.e2e.conftest import make_stack

    def customize(config: dict[str, object]) -> None:
        resilience = config["resilience"]
        assert isinstance(resilience, dict)
        resilience.update(processor_failure_open=True, fail_open_model="chat-vllm")

    stack = make_stack(tmp_path, customize=customize)
    try:
        assert stack.processor is not None
        stack.processor.send_signal(signal.SIGKILL)
        stack.processor.wait(10)
        response = httpx.post(
            f"{stack.base_url}/v1/chat/completions",
            json={"model": "chat-vllm", "messages": [{"role": "user", "content": "unprocessed"}]},
            headers=AUTH,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "echo: unprocessed"
        (seen,) = stack.fake.requests
        # Unprocessed: the client's path, body and model name went through as they were.
        assert seen.path == "/v1/chat/completions"
        assert seen.json["model"] == "chat-vllm"
    finally:
        stack.stop()
        stack.fake.stop()
