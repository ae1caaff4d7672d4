"""End to end: graceful shutdown, processor outage and recovery, admin endpoints."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.decisions.auth import hash_key, key_id
from extproc.dev.fakes import FakeProviderServer
from extproc.dev.stack import StackExit, stop_process
from extproc.server.envoy_admin import EnvoyAdmin
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


@dataclass
class StreamRun:
    """One streamed completion read to its end on its own thread."""

    model: str
    text: str
    raw: bool  # raw httpx (sees the SSE bytes, `[DONE]` included) instead of the openai SDK
    first_chunk: threading.Event = field(default_factory=threading.Event)
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    body: bytes = b""
    error: BaseException | None = None


def read_stream(stack: Stack, run: StreamRun) -> None:
    messages = [{"role": "user", "content": run.text}]
    try:
        if run.raw:
            with (
                httpx.Client(timeout=120) as client,
                client.stream(
                    "POST",
                    f"{stack.base_url}/v1/chat/completions",
                    json={"model": run.model, "messages": messages, "stream": True},
                    headers=AUTH,
                ) as response,
            ):
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    run.body += chunk
                    run.first_chunk.set()
            return
        stream = stack.client(timeout=120).chat.completions.create(
            model=run.model,
            messages=messages,
            stream=True,
        )
        for chunk in stream:
            run.first_chunk.set()
            if chunk.choices:
                run.pieces.append(chunk.choices[0].delta.content or "")
                run.finish_reason = chunk.choices[0].finish_reason or run.finish_reason
    except BaseException as exc:
        run.error = exc
    finally:
        run.first_chunk.set()


def poll(read: Callable[[], Any], until: Callable[[Any], bool], timeout: float = 30) -> Any:
    """`read()` again and again until `until(value)` holds; the last value at the deadline."""
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from, innermost last."""
    current: BaseException | None = exc
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


def readyz(stack: Stack) -> tuple[int, Any]:
    response = httpx.get(f"{stack.admin_url}/readyz", timeout=10)
    return response.status_code, orjson.loads(response.content)


def test_drain_finishes_streams_in_flight_and_refuses_new_connections(fresh_stack: Stack) -> None:
    stack = fresh_stack
    gate = threading.Event()  # the fake holds every stream after its first content chunk
    stack.fake.set_behaviour(stream_gate=gate, stream_chunk_count=8)
    runs = [
        # Pass-through streams (Envoy alone carries them) and translated ones (the processor
        # translates every chunk, so it must outlive them), through the SDK and raw.
        StreamRun("chat-openai", "first pass-through stream", raw=False),
        StreamRun("chat-openai", "second pass-through stream", raw=True),
        StreamRun("chat-anthropic", "first translated stream", raw=False),
        StreamRun("chat-anthropic", "second translated stream", raw=True),
    ]
    readers = [threading.Thread(target=read_stream, args=(stack, run)) for run in runs]
    # A client whose connection is open (idle, kept alive) when the drain starts.
    kept_alive = httpx.Client(base_url=stack.base_url, headers=AUTH, timeout=30)
    result: dict[str, StackExit] = {}
    drain = threading.Thread(target=lambda: result.update(exit=stack.drain_and_stop(grace=60)))
    try:
        before = kept_alive.post("/v1/chat/completions", json=CHAT)
        assert before.status_code == 200 and "connection" not in before.headers
        for reader in readers:
            reader.start()
        for run in runs:
            assert run.first_chunk.wait(30) and run.error is None, run
        envoy = EnvoyAdmin(stack.envoy_admin_url)

        drain.start()
        assert poll(lambda: envoy.stat("listener_manager.listener_stopped"), bool) == 1

        # New connections are refused at once: no hang, no reset mid-request.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", stack.gateway_config.listener.port), 10)
        with pytest.raises(openai.APIConnectionError) as refused:
            stack.client().chat.completions.create(
                model="chat-openai", messages=[{"role": "user", "content": "too late"}]
            )
        assert any(isinstance(e, ConnectionRefusedError) for e in chain(refused.value)), repr(
            list(chain(refused.value))
        )
        # The pair reports draining; a load balancer's probe sees it.
        assert poll(lambda: readyz(stack), lambda answer: answer[0] != 200) == (
            503,
            {"status": "draining", "envoy": "DRAINING"},
        )
        # A connection opened before is served (the processor is still there) and told to close.
        during = kept_alive.post(
            "/v1/chat/completions",
            json={"model": "chat-anthropic", "messages": [{"role": "user", "content": "last"}]},
        )
        assert during.status_code == 200, during.text
        assert during.json()["choices"][0]["message"]["content"] == "echo: last"
        assert during.headers["connection"] == "close"
        # Envoy waits for the streams it still carries.
        assert drain.is_alive()
        assert all(reader.is_alive() for reader in readers)
    finally:
        gate.set()
        for reader in readers:
            reader.join(60)
        drain.join(90)
        kept_alive.close()

    for run in runs:
        assert run.error is None, (run.model, run.raw, run.error)
        if run.raw:
            assert run.body.endswith(b"data: [DONE]\n\n"), run.body[-200:]
            text = "".join(
                choice["delta"].get("content") or ""
                for line in run.body.split(b"\n\n")
                if line.startswith(b"data: {")
                for choice in orjson.loads(line[6:])["choices"]
            )
        else:
            text = "".join(run.pieces)
            assert run.finish_reason == "stop", run
        assert text == f"echo: {run.text}", (run.model, run.raw, text)
    outcome = result["exit"]
    assert outcome.drain.in_flight == 0, outcome
    assert (outcome.envoy, outcome.processor) == (0, 0), (outcome, stack.dump_logs())


def test_the_charts_shutdown_hooks_drain_envoy_then_let_the_processor_go(
    fresh_stack: Stack,
) -> None:
    # The pod's sequence with the commands the chart runs: both preStop hooks start together;
    # the kubelet sends SIGTERM to each container once its own hook returned.
    stack = fresh_stack
    assert stack.envoy is not None and stack.processor is not None
    gate = threading.Event()
    stack.fake.set_behaviour(stream_gate=gate)
    run = StreamRun("chat-anthropic", "held while the pod stops", raw=True)
    reader = threading.Thread(target=read_stream, args=(stack, run))
    reader.start()
    assert run.first_chunk.wait(30) and run.error is None, run
    cli = [sys.executable, "-m", "extproc.cli"]
    config = ["--config", str(stack.config_path)]
    processor_hook = subprocess.Popen([*cli, "wait-envoy-exit", *config, "--timeout", "120"])
    envoy_hook = subprocess.Popen([*cli, "drain", *config, "--delay", "0"])
    try:
        envoy = EnvoyAdmin(stack.envoy_admin_url)
        assert poll(lambda: envoy.stat("listener_manager.listener_stopped"), bool) == 1
        # Envoy's hook waits for the stream it carries, the processor's for Envoy.
        assert envoy_hook.poll() is None and processor_hook.poll() is None
    finally:
        gate.set()
        reader.join(60)
    try:
        assert envoy_hook.wait(60) == 0
        assert run.error is None and run.body.endswith(b"data: [DONE]\n\n"), run
        assert processor_hook.poll() is None  # Envoy has drained but still runs
        stack.envoy.send_signal(signal.SIGTERM)
        assert stack.envoy.wait(30) == 0
        assert processor_hook.wait(30) == 0
        stack.processor.send_signal(signal.SIGTERM)
        assert stack.processor.wait(30) == 0
    finally:
        for hook in (envoy_hook, processor_hook):
            stop_process(hook)


def test_readyz_is_ready_only_while_envoy_is_up(fresh_stack: Stack) -> None:
    stack = fresh_stack
    assert readyz(stack) == (200, {"status": "ready"})
    stop_process(stack.envoy)
    assert poll(lambda: readyz(stack), lambda answer: answer[0] != 200) == (
        503,
        {"status": "envoy_not_ready", "envoy": "unreachable"},
    )
    # Liveness is the processor alone.
    assert httpx.get(f"{stack.admin_url}/healthz", timeout=10).json() == {"status": "ok"}
    stack.start_envoy()
    assert poll(lambda: readyz(stack), lambda answer: answer[0] != 503) == (
        200,
        {"status": "ready"},
    )


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
        # Killed under traffic, once traffic got an answer (a busy machine can take a while).
        poll(lambda: len(statuses), bool)
        stack.processor.send_signal(signal.SIGKILL)
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
