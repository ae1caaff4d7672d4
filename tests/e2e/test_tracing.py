"""End to end: one trace from the client through Envoy and the processor, exported over OTLP.

A collector started by the test (`extproc.dev.otlp_collector`) receives what Envoy's
OpenTelemetry tracer and the processor export. The openai SDK sends its own `traceparent`; the
checks read parent links and attributes from what the collector received, and expected values
from what the client itself was answered (the fake provider's usage, model, finish reason).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from extproc.dev.fakes import FakeProviderServer
from extproc.dev.otlp_collector import CollectedSpan, OtlpCollector
from tests.e2e.conftest import UPSTREAM_KEYS, Stack, gateway_config, reset_breakers

pytestmark = pytest.mark.e2e

ENVOY = "llm-gateway-envoy"
PROCESSOR = "llm-gateway"
EXT_PROC_CALL = "async envoy.service.ext_proc.v3.ExternalProcessor.Process egress"
SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER
USER = [{"role": "user", "content": "trace me"}]


@dataclass
class Traced:
    """The traced stack, its collector, and the failover model's second provider."""

    stack: Stack
    collector: OtlpCollector
    backup: FakeProviderServer


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    tmp = tmp_path_factory.mktemp("traced")
    with OtlpCollector() as collector, FakeProviderServer(port=0) as backup:

        def config(fake_url: str) -> dict[str, Any]:
            data = gateway_config(fake_url, tmp)
            data["telemetry"] = {
                "tracing": {"enabled": True, "endpoint": collector.endpoint, "sampling_ratio": 1}
            }
            data["resilience"] = {
                "max_retries": 1,
                "retry_base_interval_ms": 10,
                "retry_max_interval_ms": 40,
                "health_check_interval_ms": 100,
            }
            data["providers"].append(
                {
                    "name": "p-backup",
                    "type": "anthropic",
                    "base_url": f"{backup.base_url}/anthropic/v1",
                    "api_key_env": "TEST_ANTHROPIC_KEY",
                }
            )
            data["models"].append(
                {
                    "name": "failover",
                    "targets": [
                        {"provider": "p-openai", "model": "primary-model"},
                        {"provider": "p-backup", "model": "backup-model"},
                    ],
                }
            )
            return data

        # Export at once instead of every 5 s: the processor's batch delay (an SDK setting),
        # Envoy's flush threshold (a runtime value, through its admin layer).
        env = {**UPSTREAM_KEYS, "OTEL_BSP_SCHEDULE_DELAY": "50"}
        with Stack(tmp, config, FakeProviderServer(port=0), processor_env=env) as stack:
            flush = {"tracing.opentelemetry.min_flush_spans": "1"}
            answer = httpx.post(f"{stack.envoy_admin_url}/runtime_modify", params=flush)
            assert answer.status_code == 200, answer.text
            yield Traced(stack, collector, backup)


@pytest.fixture
def tr(traced: Traced) -> Iterator[Traced]:
    traced.stack.fake.clear()
    traced.backup.clear()
    reset_breakers(traced.stack)
    yield traced
    traced.stack.fake.clear()
    traced.backup.clear()


def client_traceparent() -> tuple[str, str, str]:
    """A fresh (traceparent, trace id, the client's span id), sampled."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


class Trace:
    """The spans of one trace, by who exported them."""

    def __init__(self, spans: list[CollectedSpan]) -> None:
        self.spans = spans
        self.envoy = [s for s in spans if s.service == ENVOY]
        self.processor = [s for s in spans if s.service == PROCESSOR]
        self.by_id = {s.span_id: s for s in spans}

    def envoy_named(self, name: str) -> list[CollectedSpan]:
        return [s for s in self.envoy if s.name == name]

    def processor_streams(self) -> list[CollectedSpan]:
        """The processor's span of each ext_proc stream (a server span)."""
        return [s for s in self.processor if s.kind == SERVER]

    def children(self, span: CollectedSpan) -> list[CollectedSpan]:
        return [s for s in self.spans if s.parent_span_id == span.span_id]


def wait_for_trace(
    traced: Traced, trace_id: str, done: Callable[[Trace], bool], timeout: float = 20
) -> Trace:
    spans = traced.collector.wait_for(
        lambda spans: done(Trace([s for s in spans if s.trace_id == trace_id])), timeout
    )
    trace = Trace([s for s in spans if s.trace_id == trace_id])
    assert done(trace), [(s.service, s.name) for s in trace.spans]
    return trace


def streams_and_ingress(streams: int) -> Callable[[Trace], bool]:
    """Done once Envoy's ingress span and `streams` processor stream spans (with their
    phases' spans) arrived."""

    def done(trace: Trace) -> bool:
        got = trace.processor_streams()
        return (
            bool(trace.envoy_named("ingress"))
            and len(got) == streams
            and all(trace.children(s) for s in got)
            and len(trace.envoy_named(EXT_PROC_CALL)) >= streams
        )

    return done


def check_one_trace_from_the_client(trace: Trace, client_span: str) -> CollectedSpan:
    """Envoy continued the client's span; every processor span hangs from a span Envoy
    exported (its ext_proc call), and each phase's span from its stream's span."""
    (ingress,) = trace.envoy_named("ingress")
    assert ingress.parent_span_id == client_span
    assert ingress.kind == SERVER
    calls = {s.span_id: s for s in trace.envoy_named(EXT_PROC_CALL)}
    for call in calls.values():
        assert call.parent_span_id == ingress.span_id
    streams = trace.processor_streams()
    parents = [s.parent_span_id for s in streams]
    assert all(p in calls for p in parents), (parents, list(calls))
    assert len(set(parents)) == len(parents)  # one Envoy call span per stream
    for stream in streams:
        phases = trace.children(stream)
        assert phases and all(p.name.startswith("ext_proc ") for p in phases)
        assert all(p.service == PROCESSOR for p in phases)
        assert all(stream.start_ns <= p.start_ns <= p.end_ns <= stream.end_ns for p in phases)
    return ingress


def test_a_pass_through_request_is_one_trace_with_the_processor_under_envoy(
    tr: Traced,
) -> None:
    traceparent, trace_id, client_span = client_traceparent()
    answer = tr.stack.client().chat.completions.create(
        model="chat-openai", messages=USER, extra_headers={"traceparent": traceparent}
    )
    assert answer.usage is not None
    trace = wait_for_trace(tr, trace_id, streams_and_ingress(1))
    ingress = check_one_trace_from_the_client(trace, client_span)
    # Envoy's span of the call to the provider (one per attempt).
    (upstream,) = [s for s in trace.envoy if s.name.startswith("router ")]
    assert upstream.parent_span_id == ingress.span_id
    assert upstream.attributes["http.status_code"] == "200"
    (request,) = trace.processor_streams()
    assert request.name == "chat chat-openai"
    assert {p.name for p in trace.children(request)} == {
        "ext_proc request_headers",
        "ext_proc request_body",
        "ext_proc response_headers",
        "ext_proc response_body",  # the answer is read for its usage
    }
    attributes = request.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "chat-openai"
    assert attributes["gen_ai.response.model"] == answer.model
    assert attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == [answer.choices[0].finish_reason]
    assert attributes["http.response.status_code"] == 200
    assert attributes["gateway.tenant"] == "full"
    assert attributes["gateway.provider"] == "p-openai"
    assert "error.type" not in attributes
    assert "gen_ai.response.time_to_first_chunk" not in attributes  # not a stream
    # No key and no prompt text in any span of the trace.
    exported = repr([s.attributes for s in trace.spans])
    assert "trace me" not in exported
    assert all(value not in exported for value in UPSTREAM_KEYS.values())
    assert "sk-test-full-access" not in exported


def test_a_translated_stream_reports_what_the_stream_said(tr: Traced) -> None:
    traceparent, trace_id, client_span = client_traceparent()
    stream = tr.stack.client().chat.completions.create(
        model="chat-anthropic",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"traceparent": traceparent},
    )
    chunks = list(stream)
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    (usage,) = [c.usage for c in chunks if c.usage is not None]
    trace = wait_for_trace(tr, trace_id, streams_and_ingress(1))
    check_one_trace_from_the_client(trace, client_span)
    (request,) = trace.processor_streams()
    assert request.name == "chat chat-anthropic"
    attributes = request.attributes
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.request.stream"] is True
    assert attributes["gen_ai.response.model"] == chunks[-1].model
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == reasons
    assert attributes["gateway.target"]
    assert attributes["gen_ai.response.time_to_first_chunk"] > 0
    # The stream's chunks reached the processor one response-body phase at a time.
    body_phases = [s for s in trace.children(request) if s.name == "ext_proc response_body"]
    assert len(body_phases) >= 1


def test_a_failover_shows_each_attempt_under_its_own_envoy_span(tr: Traced) -> None:
    tr.stack.fake.set_behaviour(status=503)  # the primary fails; the backup answers
    traceparent, trace_id, client_span = client_traceparent()
    answer = tr.stack.client().chat.completions.create(
        model="failover", messages=USER, extra_headers={"traceparent": traceparent}
    )
    assert answer.usage is not None
    assert len(tr.stack.fake.requests) == 1 and len(tr.backup.requests) == 1
    # The downstream stream, and an upstream-filter stream for the retry only: the primary
    # is the lead, whose first attempt the downstream filter translated (no stream of its
    # own). Envoy's span of each try shows both, the lead's status included.
    trace = wait_for_trace(tr, trace_id, streams_and_ingress(2))
    ingress = check_one_trace_from_the_client(trace, client_span)
    tries = sorted(
        (s for s in trace.envoy if s.name.startswith("router ")),
        key=lambda s: s.start_ns,
    )
    assert [t.attributes["http.status_code"] for t in tries] == ["503", "200"]
    assert all(t.parent_span_id == ingress.span_id for t in tries)
    streams = {s.name: s for s in trace.processor_streams()}
    assert set(streams) == {"chat failover", "chat backup-model"}
    second = streams["chat backup-model"].attributes
    assert second["gateway.attempt"] == 2
    assert second["gen_ai.provider.name"] == "anthropic"
    assert second["http.response.status_code"] == 200
    assert second["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert second["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert second["gen_ai.response.finish_reasons"] == [answer.choices[0].finish_reason]
    assert "error.type" not in second
    # The request's span tells the whole story: the model asked for, who answered, how often.
    request = streams["chat failover"].attributes
    assert request["gen_ai.request.model"] == "failover"
    assert request["gen_ai.provider.name"] == "anthropic"
    assert request["gen_ai.response.model"] == answer.model
    assert request["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert request["gen_ai.response.finish_reasons"] == [answer.choices[0].finish_reason]
    assert request["gateway.attempts"] == 2
    assert request["http.response.status_code"] == 200


def test_a_request_the_client_did_not_sample_exports_nothing(tr: Traced) -> None:
    unsampled_id = secrets.token_hex(16)
    client = tr.stack.client()
    client.chat.completions.create(
        model="chat-openai",
        messages=USER,
        extra_headers={"traceparent": f"00-{unsampled_id}-{secrets.token_hex(8)}-00"},
    )
    # A sampled request after it: once its spans are in, the unsampled one's would be too.
    traceparent, trace_id, _ = client_traceparent()
    client.chat.completions.create(
        model="chat-openai", messages=USER, extra_headers={"traceparent": traceparent}
    )
    wait_for_trace(tr, trace_id, streams_and_ingress(1))
    assert tr.collector.trace(unsampled_id) == []
