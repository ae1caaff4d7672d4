"""End to end: graceful shutdown, processor outage and recovery, admin endpoints."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.decisions.auth import hash_key, key_id
from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import FULL_KEY, Stack, free_port, make_stack

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


def sample_value(metrics: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly `labels`; None when there is no such sample
    (a metric's `# HELP` line alone is not a sample)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def scrape(stack: Stack) -> str:
    response = httpx.get(f"{stack.admin_url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def vm_rss_bytes(pid: int) -> int:
    """The resident set size the kernel reports for `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_processor_admin_endpoints(stack: Stack) -> None:
    assert httpx.get(f"{stack.admin_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.admin_url}/readyz").status_code == 200
    # The processor's own RSS, for the memory alert (docs/operations.md): the kernel's figure
    # for the processor's pid, read just before and just after the scrape.
    assert stack.processor is not None
    low = vm_rss_bytes(stack.processor.pid)
    reported = sample_value(scrape(stack), "process_resident_memory_bytes")
    high = vm_rss_bytes(stack.processor.pid)
    assert reported is not None
    assert 0.9 * min(low, high) <= reported <= 1.1 * max(low, high), (low, reported, high)


def test_metrics_count_each_answered_request(stack: Stack, fake: FakeProviderServer) -> None:
    labels = {
        "tenant": "full",
        "key_id": key_id(hash_key(FULL_KEY)),
        "model": "chat-openai",
        "provider": "p-openai",
        "status": "200",
        "code": "",
    }
    before = sample_value(scrape(stack), "gateway_requests_total", **labels) or 0.0
    client = stack.client()
    for n in range(3):
        client.chat.completions.create(
            model="chat-openai", messages=[{"role": "user", "content": f"count {n}"}]
        )
    # Counted when each request's last ext_proc stream ends, maybe just after its answer.
    deadline = time.monotonic() + 10
    while (counted := sample_value(scrape(stack), "gateway_requests_total", **labels)) != (
        before + 3
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted == before + 3


def test_metrics_show_open_extproc_streams(stack: Stack, fake: FakeProviderServer) -> None:
    fake.set_behaviour(latency_s=2)
    worker = threading.Thread(
        target=httpx.post,
        args=(f"{stack.base_url}/v1/chat/completions",),
        kwargs={"json": CHAT, "headers": AUTH, "timeout": 30},
    )
    worker.start()
    try:
        fake.wait_for_requests(1, timeout=10)  # the request's ext_proc stream is open now
        during = sample_value(scrape(stack), "gateway_extproc_streams_active")
    finally:
        worker.join(30)
    assert during is not None and during >= 1, during


def test_processor_over_tcp_instead_of_a_unix_socket(tmp_path: Path) -> None:
    processor = {"unix_socket": None, "tcp_address": f"127.0.0.1:{free_port()}"}
    with make_stack(tmp_path, processor_overrides=processor) as stack:
        assert not (tmp_path / "extproc.sock").exists()
        reply = stack.client().chat.completions.create(
            model="chat-openai", messages=[{"role": "user", "content": "over tcp"}]
        )
        assert reply.choices[0].message.content == "echo: over tcp"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_processor_event_loop_is_configurable(tmp_path: Path, loop: str) -> None:
    with make_stack(tmp_path, processor_overrides={"event_loop": loop}) as stack:
        reply = stack.client().chat.completions.create(
            model="chat-anthropic", messages=[{"role": "user", "content": f"on {loop}"}]
        )
        assert reply.choices[0].message.content == f"echo: on {loop}"
    assert f"event loop {loop}" in stack.dump_logs(tail=None)


def test_fail_open_sends_requests_through_when_the_processor_is_down(tmp_path: Path) -> None:
    def customize(config: dict[str, object]) -> None:
        resilience = config["resilience"]
        assert isinstance(resilience, dict)
        resilience.update(processor_failure_open=True, fail_open_model="chat-vllm")

    with make_stack(tmp_path, customize=customize) as stack:
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
