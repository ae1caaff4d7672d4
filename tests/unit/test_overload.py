"""The processor's admission control: the shedder's bookkeeping, and the servicer shedding
over a real in-process gRPC channel (no Envoy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from pydantic import SecretStr

from extproc.config.loading import LoadedConfig, parse_config
from extproc.decisions.auth import hash_key
from extproc.decisions.overload import LoadShedder, ShedReason
from extproc.gateway import Gateway
from extproc.server.loop_lag import watch_loop_lag
from extproc.server.serve import ProcessorServer
from tests.unit.test_server import KEY, header_msg

# -- the shedder ------------------------------------------------------------------------------


def test_shedder_admits_up_to_the_bound_and_a_refusal_takes_nothing() -> None:
    shedder = LoadShedder()
    assert [shedder.enter(3, None) for _ in range(3)] == [None, None, None]
    assert shedder.enter(3, None) is ShedReason.IN_FLIGHT
    assert shedder.enter(3, None) is ShedReason.IN_FLIGHT
    assert shedder.in_flight == 3  # the refusals took no slot
    shedder.leave()
    assert shedder.enter(3, None) is None
    assert shedder.in_flight == 3


def test_shedder_sheds_on_loop_lag_only_when_a_bound_is_set() -> None:
    shedder = LoadShedder()
    shedder.lagged(0.5)
    assert shedder.enter(10, None) is None  # no lag bound: lag alone never sheds
    assert shedder.enter(10, 0.2) is ShedReason.LOOP_LAG
    assert shedder.in_flight == 1
    shedder.lagged(0.1)
    assert shedder.enter(10, 0.2) is None
    shedder.lagged(-0.01)  # a timer a hair early is no negative lag
    assert shedder.lag == 0.0


async def test_loop_lag_watch_sees_a_blocked_loop() -> None:
    shedder = LoadShedder()
    watch = asyncio.create_task(watch_loop_lag(shedder, interval=0.01))
    try:
        await asyncio.sleep(0.05)
        blocked = 0.3
        time.sleep(blocked)  # the loop can run nothing, the watch's timer neither
        for _ in range(100):
            await asyncio.sleep(0.001)
            if shedder.lag > 0:
                break
        # The timer due during the block ran at its end: late by most of the block (a slower
        # machine only makes it later).
        assert shedder.lag >= blocked / 2
    finally:
        watch.cancel()


# -- the servicer -----------------------------------------------------------------------------


def make_gateway(**processor: Any) -> Gateway:
    config = parse_config(
        {
            "processor": processor,
            "providers": [{"name": "oa", "type": "openai", "base_url": "http://up/v1"}],
            "models": [{"name": "m", "targets": [{"provider": "oa", "model": "m-up"}]}],
            "tenants": [
                {
                    "name": "t",
                    "api_key_sha256": [hash_key(KEY)],
                    "limits": {"concurrent_requests": 5},
                }
            ],
            "telemetry": {"usage_accounting": False},
        }
    )
    return Gateway(LoadedConfig(config, {"oa": SecretStr("sk-up")}, "test"))


class Held:
    """An ext_proc stream kept open after its request-headers answer, like a request in flight."""

    def __init__(self, client: Any, path: str = "/v1/chat/completions") -> None:
        self.release = asyncio.Event()
        self.path = path
        self.call = client.Process(self._messages())

    async def _messages(self) -> AsyncIterator[pb.ProcessingRequest]:
        yield header_msg(self.path)
        await self.release.wait()

    async def first_answer(self) -> pb.ProcessingResponse:
        answer: pb.ProcessingResponse = await asyncio.wait_for(self.call.read(), 10)
        return answer

    async def end(self) -> None:
        self.release.set()
        self.call.cancel()
        await asyncio.sleep(0)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Any, ProcessorServer]]:
    server = ProcessorServer(make_gateway(max_in_flight=2), 16 * 1024 * 1024)
    sock = tmp_path / "p.sock"
    server.bind(sock, None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix:{sock}")
    yield pb_grpc.ExternalProcessorStub(channel), server
    await channel.close()
    await server.stop(0)


async def one_answer(client: Any, message: pb.ProcessingRequest) -> pb.ProcessingResponse:
    async def messages() -> AsyncIterator[pb.ProcessingRequest]:
        yield message

    answers = [a async for a in client.Process(messages())]
    assert len(answers) == 1
    return answers[0]


def sample(server: ProcessorServer, name: str, **labels: str) -> float:
    value = server.gateway.metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


async def wait_in_flight(server: ProcessorServer, count: int) -> None:
    for _ in range(1000):
        if server.servicer.shedder.in_flight == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"in flight {server.servicer.shedder.in_flight}, expected {count}")


async def test_beyond_max_in_flight_a_request_is_shed_with_503_and_retry_after(
    served: tuple[Any, ProcessorServer],
) -> None:
    client, server = served
    held = [Held(client), Held(client)]
    try:
        for stream in held:
            answer = await stream.first_answer()
            assert answer.WhichOneof("response") == "request_headers"  # admitted, going on
        assert sample(server, "gateway_requests_in_flight") == 2
        shed = await one_answer(client, header_msg("/v1/chat/completions"))
        immediate = shed.immediate_response
        assert immediate.status.code == 503
        headers = {h.header.key: h.header.raw_value for h in immediate.headers.set_headers}
        assert headers["retry-after"] == b"1"
        assert headers["content-type"] == b"application/json"
        error = orjson.loads(immediate.body)["error"]
        assert error["code"] == "overloaded"
        assert error["type"] == "service_unavailable"
        assert set(error) == {"message", "type", "param", "code"}
        assert sample(server, "gateway_shed_requests_total", reason="in_flight") == 1
        assert sample(server, "gateway_shed_requests_total", reason="loop_lag") == 0
        # The shed request took no slot (and it never reached authentication or limits).
        assert server.servicer.shedder.in_flight == 2
        # Health checks through the listener are never shed.
        health = await one_answer(client, header_msg("/health", "GET", eos=True))
        assert health.immediate_response.status.code == 200
        assert sample(server, "gateway_shed_requests_total", reason="in_flight") == 1
    finally:
        for stream in held:
            await stream.end()
    await wait_in_flight(server, 0)
    # Load gone: admitted again, by itself.
    again = await one_answer(client, header_msg("/v1/models", "GET", eos=True))
    assert again.immediate_response.status.code == 200
    errors = sample(server, "gateway_errors_total", code="overloaded")
    assert errors == 1
    answered = sample(
        server,
        "gateway_requests_total",
        tenant="",
        key_id="",
        model="",
        provider="",
        status="503",
        code="overloaded",
    )
    assert answered == 1


async def test_a_reload_changes_max_in_flight_for_new_requests(
    served: tuple[Any, ProcessorServer],
) -> None:
    client, server = served
    held = Held(client)
    try:
        await held.first_answer()
        server.servicer.gateways.swap(
            Gateway(make_gateway(max_in_flight=1).loaded, previous=server.gateway)
        )
        shed = await one_answer(client, header_msg("/v1/models", "GET", eos=True))
        assert shed.immediate_response.status.code == 503
    finally:
        await held.end()
    await wait_in_flight(server, 0)
    ok = await one_answer(client, header_msg("/v1/models", "GET", eos=True))
    assert ok.immediate_response.status.code == 200


async def test_a_lagging_loop_sheds_when_max_loop_lag_is_set(tmp_path: Path) -> None:
    server = ProcessorServer(make_gateway(max_loop_lag_ms=100), 16 * 1024 * 1024)
    sock = tmp_path / "p.sock"
    server.bind(sock, None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix:{sock}")
    client = pb_grpc.ExternalProcessorStub(channel)
    try:
        server.servicer.shedder.lagged(0.25)  # what the lag watch reports of a busy loop
        shed = await one_answer(client, header_msg("/v1/models", "GET", eos=True))
        assert shed.immediate_response.status.code == 503
        assert orjson.loads(shed.immediate_response.body)["error"]["code"] == "overloaded"
        assert sample(server, "gateway_shed_requests_total", reason="loop_lag") == 1
        assert sample(server, "gateway_event_loop_lag_seconds") == 0.25
        server.servicer.shedder.lagged(0.01)
        ok = await one_answer(client, header_msg("/v1/models", "GET", eos=True))
        assert ok.immediate_response.status.code == 200
    finally:
        await channel.close()
        await server.stop(0)
