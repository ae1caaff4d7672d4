"""Tracing in the processor, over a real in-process gRPC channel (no Envoy): which spans a
stream makes, their parent (Envoy's span in the call's metadata), their attributes, and that
tracing off makes none. End-to-end proof with Envoy's own spans: tests/e2e/test_tracing.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from hypothesis import example, given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import SecretStr

from extproc.config.loading import LoadedConfig, parse_config
from extproc.config.schema import TracingConfig
from extproc.decisions.auth import hash_key
from extproc.gateway import Gateway
from extproc.server.serve import ProcessorServer
from extproc.telemetry.reporter import Telemetry
from extproc.telemetry.tracing import StreamTrace, Tracing, remote_parent
from tests.unit.test_server import KEY, attempt_headers, body_msg, header_msg

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{ENVOY_SPAN}-01"
TRACESTATE = "envoy=1,vendor=abc"
NOT_SAMPLED = f"00-{TRACE_ID}-{ENVOY_SPAN}-00"
CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
# What the (imaginary) provider answers: the values the spans must report.
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m-up-2024",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "x"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }
)


def config_data(**telemetry: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "oa", "type": "openai", "base_url": "http://up/v1"}],
        "models": [
            {"name": "m", "targets": [{"provider": "oa", "model": "m-up"}]},
            {
                "name": "two",
                "targets": [{"provider": "oa", "model": "a-up"}, {"provider": "oa", "model": "b"}],
            },
        ],
        "tenants": [{"name": "t", "api_key_sha256": [hash_key(KEY)]}],
        "telemetry": {"access_log": {"enabled": False}, **telemetry},
    }


def traced_gateway(exporter: InMemorySpanExporter, ratio: float = 1.0) -> Gateway:
    config = parse_config(config_data())
    settings = TracingConfig(enabled=True, sampling_ratio=ratio)
    telemetry = Telemetry(access_log=False, tracing=Tracing(settings, exporter=exporter))
    loaded = LoadedConfig(config, {"oa": SecretStr("sk-up")}, "test")
    return Gateway(loaded, telemetry=telemetry)


async def serve(gateway: Gateway, tmp_path: Path) -> tuple[ProcessorServer, grpc.aio.Channel]:
    server = ProcessorServer(gateway, 16 * 1024 * 1024)
    sock = tmp_path / "p.sock"
    server.bind(sock, None)
    await server.start()
    return server, grpc.aio.insecure_channel(f"unix:{sock}")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(
    exporter: InMemorySpanExporter, tmp_path: Path
) -> AsyncIterator[tuple[Any, Gateway]]:
    gateway = traced_gateway(exporter)
    server, channel = await serve(gateway, tmp_path)
    yield pb_grpc.ExternalProcessorStub(channel), gateway
    await channel.close()
    await server.stop(0)
    gateway.telemetry.close()


async def exchange(
    stub: Any, *messages: pb.ProcessingRequest, traceparent: str | None = SAMPLED
) -> list[pb.ProcessingResponse]:
    async def requests() -> AsyncIterator[pb.ProcessingRequest]:
        for m in messages:
            yield m

    metadata = (("traceparent", traceparent), ("tracestate", TRACESTATE)) if traceparent else None
    return [r async for r in stub.Process(requests(), metadata=metadata)]


def response_headers(status: int = 200) -> pb.ProcessingRequest:
    values = {":status": str(status), "content-type": "application/json"}
    return pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()
                ]
            )
        )
    )


def response_body(body: bytes) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=True))


def finished(gateway: Gateway, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing = gateway.telemetry.tracing
    assert tracing is not None
    assert tracing.flush()
    return list(exporter.get_finished_spans())


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


async def test_a_request_span_continues_envoys_span_with_a_child_per_phase(
    traced: tuple[Any, Gateway], exporter: InMemorySpanExporter
) -> None:
    client, gateway = traced
    await exchange(
        client,
        header_msg("/v1/chat/completions"),
        body_msg(CHAT),
        response_headers(),
        response_body(ANSWER),
    )
    spans = by_name(finished(gateway, exporter))
    assert set(spans) == {
        "chat m",
        "ext_proc request_headers",
        "ext_proc request_body",
        "ext_proc response_headers",
        "ext_proc response_body",
    }
    request = spans["chat m"]
    assert request.kind is SpanKind.SERVER
    assert request.context is not None and request.parent is not None
    # Envoy's span of this call (the metadata's traceparent) is the parent; same trace.
    assert f"{request.context.trace_id:032x}" == TRACE_ID
    assert f"{request.parent.span_id:016x}" == ENVOY_SPAN
    assert request.context.trace_flags.sampled
    assert request.context.trace_state.to_header() == TRACESTATE  # carried on, untouched
    for name, span in spans.items():
        if name != "chat m":
            assert span.parent is not None and span.parent.span_id == request.context.span_id
            assert span.start_time is not None and request.start_time is not None
            assert span.start_time >= request.start_time
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "m"
    assert attributes["gen_ai.response.model"] == "m-up-2024"
    assert attributes["gen_ai.usage.input_tokens"] == 11
    assert attributes["gen_ai.usage.output_tokens"] == 7
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert attributes["http.response.status_code"] == 200
    assert attributes["gateway.tenant"] == "t"
    assert attributes["gateway.attempts"] == 1
    assert "error.type" not in attributes
    # Nothing secret: neither key, nor the prompt.
    text = repr(attributes)
    assert KEY not in text and "sk-up" not in text and '"hi"' not in text


async def test_an_error_is_reported_with_its_code(
    traced: tuple[Any, Gateway], exporter: InMemorySpanExporter
) -> None:
    client, gateway = traced
    missing = orjson.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    await exchange(client, header_msg("/v1/chat/completions"), body_msg(missing))
    (request,) = [s for s in finished(gateway, exporter) if s.kind is SpanKind.SERVER]
    attributes = dict(request.attributes or {})
    assert attributes["http.response.status_code"] == 404
    assert attributes["error.type"] == "model_not_found"
    assert request.name == "POST /v1/chat/completions"  # no configured model was named


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/v1/models/some-model", "GET /v1/models/{model}"),
        ("GET", "/v1/whatever/the/client/likes", "GET"),
        ("BREW", "/coffee", "HTTP"),
    ],
)
async def test_span_names_never_take_a_clients_own_path_or_method(
    traced: tuple[Any, Gateway],
    exporter: InMemorySpanExporter,
    method: str,
    path: str,
    name: str,
) -> None:
    client, gateway = traced
    await exchange(client, header_msg(path, method, eos=True))
    (request,) = [s for s in finished(gateway, exporter) if s.kind is SpanKind.SERVER]
    assert request.name == name
    assert dict(request.attributes or {})["url.path"] == path  # the path is an attribute


async def test_a_stream_envoy_did_not_sample_makes_no_spans(
    traced: tuple[Any, Gateway], exporter: InMemorySpanExporter
) -> None:
    client, gateway = traced
    await exchange(
        client, header_msg("/v1/chat/completions"), body_msg(CHAT), traceparent=NOT_SAMPLED
    )
    assert finished(gateway, exporter) == []


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, 0), (1.0, 1)])
async def test_without_envoys_span_the_ratio_decides(
    exporter: InMemorySpanExporter, tmp_path: Path, ratio: float, expected: int
) -> None:
    gateway = traced_gateway(exporter, ratio)
    server, channel = await serve(gateway, tmp_path)
    try:
        client = pb_grpc.ExternalProcessorStub(channel)
        await exchange(client, header_msg("/v1/models", "GET", eos=True), traceparent=None)
        roots = [s for s in finished(gateway, exporter) if s.kind is SpanKind.SERVER]
        assert len(roots) == expected
        assert all(s.parent is None and s.name == "GET /v1/models" for s in roots)
    finally:
        await channel.close()
        await server.stop(0)
        gateway.telemetry.close()


async def test_an_attempt_stream_has_its_own_span(
    traced: tuple[Any, Gateway], exporter: InMemorySpanExporter
) -> None:
    client, gateway = traced
    target = gateway.models["two"].targets[0]
    provider_error = orjson.dumps({"error": {"message": "down", "type": "server_error"}})
    two = orjson.dumps({"model": "two", "messages": [{"role": "user", "content": "hi"}]})
    await exchange(
        client,
        attempt_headers(target.id, gateway, two),
        response_headers(503),
        response_body(provider_error),
    )
    (attempt,) = [s for s in finished(gateway, exporter) if s.kind is SpanKind.SERVER]
    assert attempt.name == "chat a-up"
    assert attempt.parent is not None and f"{attempt.parent.span_id:016x}" == ENVOY_SPAN
    attributes = dict(attempt.attributes or {})
    assert attributes["gen_ai.request.model"] == "a-up"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["http.response.status_code"] == 503
    assert attributes["gateway.target"] == target.id
    assert attributes["gateway.attempt.outcome"] == "failure"
    # The request's record carries the gateway's error code for the provider's 503.
    assert attributes["error.type"] == "provider_overloaded"
    assert attempt.status.status_code is StatusCode.ERROR


async def test_tracing_off_makes_no_tracer_and_no_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    # Every span, the SDK's or ours, reaches an exporter through a span processor's on_end.
    for processor in (BatchSpanProcessor, SimpleSpanProcessor):
        monkeypatch.setattr(processor, "on_end", lambda self, span: started.append(span.name))
    monkeypatch.setattr(Tracing, "stream", lambda *args: started.append("stream"))
    loaded = LoadedConfig(parse_config(config_data()), {"oa": SecretStr("sk-up")}, "test")
    gateway = Gateway(loaded)
    assert gateway.telemetry.tracing is None
    server, channel = await serve(gateway, tmp_path)
    try:
        client = pb_grpc.ExternalProcessorStub(channel)
        answers = await exchange(
            client,
            header_msg("/v1/chat/completions"),
            body_msg(CHAT),
            response_headers(),
            response_body(ANSWER),
        )
        assert len(answers) == 4  # the request was handled, with Envoy's traceparent sent
    finally:
        await channel.close()
        await server.stop(0)
    assert started == []


def test_tracing_off_never_loads_the_opentelemetry_sdk() -> None:
    script = (
        "import sys\n"
        "from pydantic import SecretStr\n"
        "from extproc.config.loading import LoadedConfig, parse_config\n"
        "from extproc.gateway import Gateway\n"
        "from extproc.server.serve import ProcessorServer\n"
        f"config = parse_config({config_data()!r})\n"
        "ProcessorServer(Gateway(LoadedConfig(config, {}, 'x')), 1 << 20)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.fixture
def stream_trace(exporter: InMemorySpanExporter) -> Iterator[StreamTrace]:
    tracing = Tracing(TracingConfig(enabled=True), exporter=exporter)
    trace = tracing.stream([("traceparent", SAMPLED)], attempt=False)
    assert trace is not None
    yield trace
    tracing.shutdown()


FINAL_EVENT = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'


def test_a_finish_reason_split_at_any_byte_is_found_once(exporter: InMemorySpanExporter) -> None:
    tracing = Tracing(TracingConfig(enabled=True), exporter=exporter)
    try:
        head = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}\n\n'
        stream = head + FINAL_EVENT + b"data: [DONE]\n\n"
        for cut in range(1, len(stream)):
            trace = tracing.stream([("traceparent", SAMPLED)], attempt=False)
            assert trace is not None
            trace.answer(stream[:cut])
            trace.answer(stream[cut:])
            assert trace.finish_reasons == ["tool_calls"], cut
    finally:
        tracing.shutdown()


def test_finish_reason_text_inside_content_is_not_a_finish_reason(
    stream_trace: StreamTrace,
) -> None:
    content = orjson.dumps({"content": 'say "finish_reason":"stop" please'})
    stream_trace.answer(b'{"choices":[{"message":' + content + b',"finish_reason":"stop"}]}')
    assert stream_trace.finish_reasons == ["stop"]


def propagator_parent(traceparent: str, tracestate: str) -> SpanContext | None:
    """What OpenTelemetry's own W3C propagator makes of the same header (the oracle)."""
    carrier = {"traceparent": traceparent, "tracestate": tracestate}
    context = get_current_span(TraceContextTextMapPropagator().extract(carrier))
    span = context.get_span_context()
    return span if span.is_valid else None


traceparents = st.one_of(
    st.text(max_size=80),
    st.builds(
        "{}-{}-{}-{}{}".format,
        st.sampled_from(["00", "01", "ff", "0g", "AB", "cc"]),
        st.sampled_from(["0" * 32, TRACE_ID, TRACE_ID.upper(), TRACE_ID[:31]]),
        st.sampled_from(["0" * 16, ENVOY_SPAN, ENVOY_SPAN + "0"]),
        st.sampled_from(["00", "01", "03", "f", "0G", "011"]),
        st.sampled_from(["", "-", "-extra", " ", "\t"]),
    ),
)


VALID = f"{TRACE_ID}-{ENVOY_SPAN}-01"


@given(traceparents, st.sampled_from(["", "a=1", "envoy=1,vendor=abc", "bad key=1"]))
@example(f"00-{VALID}", "envoy=1,vendor=abc")  # the common case, with its tracestate
@example(f"ff-{VALID}", "")  # version ff is invalid
@example(f"00-{VALID}-more", "")  # version 00 has nothing after the flags
@example(f"cc-{VALID}-more", "")  # a later version may
@example(f"00-{'0' * 32}-{ENVOY_SPAN}-01", "")  # an all-zero trace id
@example(f"00-{TRACE_ID}-{'0' * 16}-01", "")  # an all-zero span id
@example(f"00-{TRACE_ID.upper()}-{ENVOY_SPAN}-01", "")  # hex is lowercase
@example(f" 00-{VALID}\t", "")  # surrounding blanks
def test_the_traceparent_parser_agrees_with_opentelemetrys_propagator(
    traceparent: str, tracestate: str
) -> None:
    ours = remote_parent(traceparent, tracestate)
    theirs = propagator_parent(traceparent, tracestate)
    if theirs is None:
        assert ours is None
    else:
        assert ours is not None
        assert (ours.trace_id, ours.span_id, ours.trace_flags, ours.is_remote) == (
            theirs.trace_id,
            theirs.span_id,
            theirs.trace_flags,
            theirs.is_remote,
        )
        assert ours.trace_state.to_header() == theirs.trace_state.to_header()


def test_spans_are_exported_from_a_thread_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")  # the export thread's pace (ms)
    exporting: list[int] = []
    exported = threading.Event()

    class Recording(InMemorySpanExporter):
        def export(self, spans: Any) -> Any:
            exporting.append(threading.get_ident())
            result = super().export(spans)
            exported.set()
            return result

    tracing = Tracing(TracingConfig(enabled=True), exporter=Recording())
    try:
        trace = tracing.stream([("traceparent", SAMPLED)], attempt=False)
        assert trace is not None
        trace.stream_ended(None)  # only queues the span; the export thread sends it
        assert exported.wait(10)
        assert exporting and threading.get_ident() not in exporting
    finally:
        tracing.shutdown()
