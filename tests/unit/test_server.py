"""Servicer tests over a real in-process gRPC channel (no Envoy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import json_format, struct_pb2
from pydantic import SecretStr

import extproc.server.messages as server_module
from extproc.config.loading import LoadedConfig, parse_config
from extproc.contract import UPSTREAM_TARGET_ATTRIBUTE as TARGET_ATTRIBUTE
from extproc.decisions.auth import hash_key
from extproc.gateway import Gateway
from extproc.pipeline.actions import Continue
from extproc.server.messages import to_response
from extproc.server.serve import ProcessorServer

KEY = "sk-server-test"


def make_gateway() -> Gateway:
    config = parse_config(
        {
            "providers": [{"name": "oa", "type": "openai", "base_url": "http://up/v1"}],
            "models": [{"name": "m", "targets": [{"provider": "oa", "model": "m-up"}]}],
            "tenants": [{"name": "t", "api_key_sha256": [hash_key(KEY)]}],
            # Answers pass through at their headers (no body read for usage).
            "telemetry": {"usage_accounting": False},
        }
    )
    return Gateway(LoadedConfig(config, {"oa": SecretStr("sk-up")}, "test"))


def header_msg(
    path: str, method: str = "POST", eos: bool = False, **extra: str
) -> pb.ProcessingRequest:
    values = {":path": path, ":method": method, "authorization": f"Bearer {KEY}", **extra}
    return pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()
                ]
            ),
            end_of_stream=eos,
        )
    )


def body_msg(body: bytes) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[tuple[Any, ProcessorServer]]:
    server = ProcessorServer(make_gateway(), 16 * 1024 * 1024)
    sock = tmp_path / "p.sock"
    server.bind(sock, None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix:{sock}")
    yield pb_grpc.ExternalProcessorStub(channel), server
    await channel.close()
    await server.stop(0)


async def exchange(stub: Any, *messages: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
    async def requests() -> AsyncIterator[pb.ProcessingRequest]:
        for m in messages:
            yield m

    return [r async for r in stub.Process(requests())]


async def test_chat_request_flow(stub: tuple[Any, ProcessorServer]) -> None:
    client, _ = stub
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    first, second = await exchange(client, header_msg("/v1/chat/completions"), body_msg(body))
    assert first.WhichOneof("response") == "request_headers"
    assert second.WhichOneof("response") == "request_body"
    common = second.request_body.response
    assert common.clear_route_cache
    # One target: translated here, once (the client's key replaced by the provider's).
    assert orjson.loads(common.body_mutation.body)["model"] == "m-up"
    assert "authorization" not in common.header_mutation.remove_headers
    set_headers = {h.header.key: h.header for h in common.header_mutation.set_headers}
    assert set_headers["authorization"].raw_value == b"Bearer sk-up"
    # All header values travel in raw_value only.
    assert all(not h.value and h.raw_value for h in set_headers.values())
    metadata = json_format.MessageToDict(second.dynamic_metadata)
    assert metadata["gw"]["model"] == "m"
    assert metadata["gw"]["route"]


def attempt_headers(
    target: str, gateway: Gateway | None = None, body: bytes | None = None
) -> pb.ProcessingRequest:
    """An upstream-filter stream's request headers; with `body`, as Envoy sends them after the
    downstream stream forwarded it (its request's open record holds it, by x-request-id)."""
    message = header_msg("/v1/chat/completions")
    if gateway is not None and body is not None:
        record = gateway.telemetry.new_record()
        record.request_id = f"req-{id(record)}"
        assert gateway.telemetry.records.open(record)
        record.attempt_body = body
        message.request_headers.headers.headers.append(
            base_pb2.HeaderValue(key="x-request-id", raw_value=record.request_id.encode())
        )
    attributes = struct_pb2.Struct()
    attributes.update({TARGET_ATTRIBUTE: target})
    message.attributes["envoy.filters.http.ext_proc"].CopyFrom(attributes)
    return message


async def test_attempt_stream_is_translated_for_its_target(
    stub: tuple[Any, ProcessorServer],
) -> None:
    client, server = stub
    target = server.gateway.models["m"].targets[0]
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    # The upstream filter is sent no body: the headers answer carries the translated one.
    (answer,) = await exchange(client, attempt_headers(target.id, server.gateway, body))
    assert answer.WhichOneof("response") == "request_headers"
    common = answer.request_headers.response
    assert common.status == pb.CommonResponse.CONTINUE_AND_REPLACE
    assert not answer.HasField("mode_override")  # the filter's own mode: no request body
    assert orjson.loads(common.body_mutation.body)["model"] == "m-up"
    set_headers = {
        h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers
    }
    assert set_headers[":path"] == "/v1/chat/completions"
    assert set_headers["content-length"] == str(len(common.body_mutation.body))
    assert not common.clear_route_cache


async def test_attempt_for_an_unknown_target_is_a_500(stub: tuple[Any, ProcessorServer]) -> None:
    client, _ = stub
    (answer,) = await exchange(client, attempt_headers("nope.t9"))
    assert answer.immediate_response.status.code == 500


async def test_immediate_error_ends_the_stream(stub: tuple[Any, ProcessorServer]) -> None:
    client, _ = stub
    answers = await exchange(
        client, header_msg("/v1/chat/completions"), body_msg(b"{nope"), body_msg(b"ignored")
    )
    # The stream ends with the immediate response; the extra message gets no answer.
    assert [a.WhichOneof("response") for a in answers] == ["request_headers", "immediate_response"]
    immediate = answers[1].immediate_response
    assert immediate.status.code == 400
    assert orjson.loads(immediate.body)["error"]["code"] == "invalid_json"


async def test_models_answered_in_header_phase(stub: tuple[Any, ProcessorServer]) -> None:
    client, _ = stub
    (answer,) = await exchange(client, header_msg("/v1/models", "GET", eos=True))
    assert answer.immediate_response.status.code == 200
    assert [m["id"] for m in orjson.loads(answer.immediate_response.body)["data"]] == ["m"]


async def test_unexpected_exception_becomes_500_and_server_survives(
    stub: tuple[Any, ProcessorServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, _server = stub

    def boom(*args: Any) -> Any:
        raise RuntimeError("secret-laden internal detail")

    monkeypatch.setattr("extproc.pipeline.request.RequestPipeline.on_request_body", boom)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    _, answer = await exchange(client, header_msg("/v1/chat/completions"), body_msg(body))
    immediate = answer.immediate_response
    assert immediate.status.code == 500
    assert b"secret-laden" not in immediate.body
    assert orjson.loads(immediate.body)["error"]["code"] == "internal_error"
    monkeypatch.undo()
    (ok,) = await exchange(client, header_msg("/v1/models", "GET", eos=True))
    assert ok.immediate_response.status.code == 200


async def test_unrequested_phases_pass_through(stub: tuple[Any, ProcessorServer]) -> None:
    client, _ = stub
    answers = await exchange(
        client,
        pb.ProcessingRequest(response_trailers=pb.HttpTrailers()),
        pb.ProcessingRequest(),  # no phase at all: ignored
        pb.ProcessingRequest(response_body=pb.HttpBody(body=b"x", end_of_stream=False)),
    )
    assert [a.WhichOneof("response") for a in answers] == ["response_trailers", "response_body"]


async def test_the_processor_ends_the_stream_after_the_last_answer(
    stub: tuple[Any, ProcessorServer],
) -> None:
    # Envoy never half-closes here: the client keeps its side open, as Envoy does, and the
    # call still completes because the processor returns after the last expected answer.
    client, _ = stub
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    more = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ProcessingRequest]:
        yield header_msg("/v1/chat/completions")
        yield body_msg(body)
        status = base_pb2.HeaderValue(key=":status", raw_value=b"200")
        kind = base_pb2.HeaderValue(key="content-type", raw_value=b"application/json")
        headers = pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=[status, kind]))
        yield pb.ProcessingRequest(response_headers=headers)
        await more.wait()  # never set: no half-close from this side

    call = client.Process(requests())

    async def answers() -> list[str | None]:
        return [a.WhichOneof("response") async for a in call]

    try:
        # All answers arrive and the call ends OK while this side is still open.
        got = await asyncio.wait_for(answers(), 10)
        assert got == ["request_headers", "request_body", "response_headers"]
        assert await call.code() == grpc.StatusCode.OK
        assert not more.is_set()
    finally:
        call.cancel()
        more.set()  # let grpc's request-consuming task finish before the channel closes


def test_answers_without_a_body_are_built_once_and_shared() -> None:
    routed = Continue(
        set_headers={":path": "/v1/chat/completions", "authorization": "Bearer up"},
        remove_headers=["accept-encoding"],
        metadata={"gw": {"route": "m0_m", "model": "m"}},
        clear_route_cache=True,
    )
    first = to_response("request_body", routed)
    again = to_response("request_body", replace(routed, set_headers=dict(routed.set_headers)))
    assert again is first
    assert first.request_body.response.clear_route_cache
    assert json_format.MessageToDict(first.dynamic_metadata) == routed.metadata
    # Anything that differs is a different answer.
    other_route = replace(routed, metadata={"gw": {"route": "m1_m", "model": "m"}})
    assert to_response("request_body", other_route) is not first
    assert to_response("response_headers", routed) is not first
    assert to_response("request_body", replace(routed, remove_headers=[])) is not first


def test_answers_with_a_body_or_unhashable_metadata_are_built_each_time() -> None:
    translated = Continue(set_headers={"content-length": "2"}, body=b"{}")
    assert to_response("request_body", translated) is not to_response("request_body", translated)
    nested = Continue(metadata={"gw": {"tags": ["a", "b"]}})
    answer = to_response("request_body", nested)
    assert answer is not to_response("request_body", nested)
    assert json_format.MessageToDict(answer.dynamic_metadata) == {"gw": {"tags": ["a", "b"]}}
    # True == 1 and they hash alike, but a Struct tells a bool from a number.
    flag = to_response("request_body", Continue(metadata={"gw": {"x": True}}))
    number = to_response("request_body", Continue(metadata={"gw": {"x": 1}}))

    def kind(answer: pb.ProcessingResponse) -> str | None:
        value = answer.dynamic_metadata.fields["gw"].struct_value.fields["x"]
        return value.WhichOneof("kind")

    assert (kind(flag), kind(number)) == ("bool_value", "number_value")


def test_the_answer_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "_RESPONSES", {})
    for n in range(server_module.RESPONSE_CACHE_SIZE * 3):
        to_response("response_headers", Continue(set_headers={"x-n": str(n)}))
        assert len(server_module._RESPONSES) <= server_module.RESPONSE_CACHE_SIZE


def test_every_mode_override_spells_out_the_whole_mode() -> None:
    """An override replaces the filter's mode, and the listener's filter skips response headers
    by default: each override the processor sends turns them back on (issue 15)."""
    from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb

    from extproc.pipeline.actions import Continue
    from extproc.providers.base import ResponseMode
    from extproc.server.messages import to_response

    answers = [to_response("request_headers", Continue())] + [
        to_response("response_headers", Continue(mode_override=mode)) for mode in ResponseMode
    ]
    for answer in answers:
        assert answer.HasField("mode_override")
        mode = answer.mode_override
        assert mode.response_header_mode == mode_pb.ProcessingMode.SEND
        assert mode.request_body_mode == mode_pb.ProcessingMode.BUFFERED
    assert answers[0].mode_override.response_body_mode == mode_pb.ProcessingMode.NONE
    bodies = {a.mode_override.response_body_mode for a in answers[1:]}
    assert bodies == {
        mode_pb.ProcessingMode.NONE,
        mode_pb.ProcessingMode.BUFFERED,
        mode_pb.ProcessingMode.BUFFERED_PARTIAL,
        mode_pb.ProcessingMode.STREAMED,
    }
