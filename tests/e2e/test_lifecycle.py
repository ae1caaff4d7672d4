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
    stack.processor.send_signal(signal.SIGKILL)
    stack.processor.wait(10)
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "processor_unavailable"
    assert set(error) == {"message", "type", "param", "code"}
    health = httpx.get(f"{stack.base_url}/health", timeout=10)
    assert health.status_code == 503
    assert stack.fake.requests == []  # fail-closed: nothing reached the provider

    stack.start_processor()  # same socket path; Envoy reconnects by itself
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = httpx.post(
            f"{stack.base_url}/v1/chat/completions", json=CHAT, headers=AUTH, timeout=30
        )
        if response.status_code == 200:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.text


def test_processor_admin_endpoints(stack: Stack) -> None:
    assert httpx.get(f"{stack.admin_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.admin_url}/readyz").status_code == 200
    metrics = httpx.get(f"{stack.admin_url}/metrics")
    assert metrics.status_code == 200
    assert "gateway_requests_total" in metrics.text
    assert "gateway_extproc_streams_active" in metrics.text


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
