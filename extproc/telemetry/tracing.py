"""Traces: a server span per ext_proc stream, a child span per phase, GenAI attributes at the end.

Built only when `telemetry.tracing.enabled` (`reporter.start_tracing`); otherwise no tracer
exists and the servicer's one `is None` check is all a request pays. A stream's span continues
the trace Envoy names in the gRPC metadata: the `traceparent` of the span Envoy's ext_proc
filter opened for this call (docs/architecture.md, "Tracing"), sampled as Envoy decided
(parent-based; the ratio applies only to streams Envoy did not trace). An unsampled stream
gets no `StreamTrace`.

The downstream stream's span (`chat {model}`) ends with its request, when the request's record
is emitted, and carries the record's attributes; an attempt's stream (models with several
targets) has its own span (`chat {upstream model}`), ended with that stream. Spans are exported
by the SDK's `BatchSpanProcessor`: ending one only queues it, and OTLP export runs in the
processor's own thread. No attribute holds a key or any prompt or completion text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any, Protocol

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import AttributeValue

from extproc.config.schema import ProviderConfig, TracingConfig
from extproc.decisions.openai_request import Endpoint
from extproc.metrics import GENAI_PROVIDER_NAMES
from extproc.providers.base import Usage
from extproc.telemetry.record import RequestRecord

TRACER_NAME = "extproc"
# A stream's span is named for what it served when it ends (`chat gpt-4o`); until then, these.
REQUEST_SPAN_NAME = "ext_proc"
ATTEMPT_SPAN_NAME = "ext_proc attempt"
INTERNAL = SpanKind.INTERNAL
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
PHASE_SPAN_NAMES = {
    phase: f"ext_proc {phase}"
    for phase in ("request_headers", "request_body", "response_headers", "response_body")
}
# `"finish_reason":"stop"` in the OpenAI-form bytes the processor sends on (a finish reason
# inside message text is escaped, `\"finish_reason\":`, and never matches).
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z0-9_-]{1,40})"')
# Bytes of one body chunk kept for the next, so a finish reason split by a chunk boundary
# (pass-through streams are read as they arrive) is still found.
_TAIL_BYTES = 64
MAX_FINISH_REASONS = 16


class RouteView(Protocol):
    """What a trace reads of a target's model (`extproc.gateway.ModelRoute`)."""

    @property
    def name(self) -> str:
        """The client-facing model name."""

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint it serves: `gen_ai.operation.name`."""


class TargetView(Protocol):
    """What a trace reads of an attempt's target (`extproc.gateway.Target`)."""

    @property
    def route(self) -> RouteView:
        """The model the target serves."""

    @property
    def id(self) -> str:
        """The target id."""

    @property
    def upstream_model(self) -> str:
        """The provider's name for the model."""

    @property
    def provider(self) -> ProviderConfig:
        """The target's provider."""


class AttemptView(Protocol):
    """What a trace reads of an ended attempt (`extproc.pipeline.attempt.UpstreamAttempt`)."""

    @property
    def target(self) -> TargetView:
        """Where the attempt went."""

    @property
    def status(self) -> int:
        """The provider's status (0: none)."""

    @property
    def final_status(self) -> int | None:
        """The status the client gets from this attempt, after error mapping."""

    @property
    def usage(self) -> Usage | None:
        """The usage the answer reported."""

    @property
    def response_model(self) -> str | None:
        """The model that answered."""

    @property
    def outcome(self) -> str | None:
        """How the attempt ended (`Outcome`)."""


# W3C Trace Context `traceparent` (the same rule as OpenTelemetry's propagator): version,
# trace id, parent span id, flags; version 00 has nothing after the flags, ff is invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_RANDOM = TraceFlags.RANDOM_TRACE_ID
_MAX_TRACEPARENT = 512


def remote_parent(traceparent: str, tracestate: str = "") -> SpanContext | None:
    """The remote span a `traceparent` (and `tracestate`) names; None when malformed."""
    if len(traceparent) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or int(trace_id, 16) == 0:
        return None
    if int(span_id, 16) == 0:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else TraceState()
    return SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)), state)


class Tracing:
    """The processor's tracer: parent-based sampling, OTLP gRPC export from a background thread.

    Spans are built as finished `ReadableSpan`s and handed to the export queue when they end,
    not through the SDK's `Tracer.start_span` / `Span.end`: a stream's span is sampled, named
    and given its attributes once, when it ends, so the SDK's live-span machinery (a lock and
    a validating bounded container per span, per-attribute checks, span limits) bought nothing
    and cost 3-6x the CPU on the event loop (docs/architecture.md, "Tracing").
    """

    __slots__ = ("_clock_offset_ns", "_ids", "_queue", "_ratio", "_resource", "_scope",
                 "provider")  # fmt: skip

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        self._ratio = TraceIdRatioBased(config.sampling_ratio)
        self._resource = Resource.create({"service.name": config.service_name})
        # The provider owns the export queue: its flush and shutdown export what is queued.
        self.provider = TracerProvider(resource=self._resource, sampler=ParentBased(self._ratio))
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=config.endpoint, insecure=True)
        self._queue = BatchSpanProcessor(exporter)
        self.provider.add_span_processor(self._queue)
        self._scope = InstrumentationScope(TRACER_NAME)
        self._ids = RandomIdGenerator()
        # Phases are timed with perf_counter (the servicer's clock); spans want wall-clock ns.
        self._clock_offset_ns = time.time_ns() - time.perf_counter_ns()

    def stream(
        self, metadata: Iterable[tuple[str, Any]] | None, attempt: bool
    ) -> StreamTrace | None:
        """The trace of a new ext_proc stream (None when it is not sampled).

        `metadata` is the call's gRPC metadata, where Envoy puts its span's `traceparent`;
        `attempt`: the stream is an upstream-filter attempt, not a downstream request.
        Sampling is `ParentBased(TraceIdRatioBased(ratio))`'s: a parent's decision is kept,
        the ratio decides only for a stream without one.
        """
        traceparent = tracestate = ""
        for key, value in metadata or ():
            if key == "traceparent":
                traceparent = value if isinstance(value, str) else value.decode("latin-1")
            elif key == "tracestate":
                tracestate = value if isinstance(value, str) else value.decode("latin-1")
        parent = remote_parent(traceparent, tracestate) if traceparent else None
        if parent is not None:
            if not parent.trace_flags.sampled:
                return None
            trace_id = parent.trace_id
            flags = TraceFlags(TraceFlags.SAMPLED | (parent.trace_flags & _RANDOM))
            state = parent.trace_state
        else:
            trace_id = self._ids.generate_trace_id()
            if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._ratio.bound:
                return None
            flags = TraceFlags(TraceFlags.SAMPLED | _RANDOM)
            state = TraceState()
        span = SpanContext(trace_id, self._ids.generate_span_id(), False, flags, state)
        name = ATTEMPT_SPAN_NAME if attempt else REQUEST_SPAN_NAME
        return StreamTrace(self, span, parent, name, attempt)

    def wall_ns(self, perf_seconds: float) -> int:
        """A `time.perf_counter()` reading as wall-clock nanoseconds."""
        return int(perf_seconds * 1e9) + self._clock_offset_ns

    def now_ns(self) -> int:
        """Now, on the clock of `wall_ns`."""
        return time.perf_counter_ns() + self._clock_offset_ns

    def child(self, parent: SpanContext) -> SpanContext:
        """A new span's context in `parent`'s trace."""
        return SpanContext(
            parent.trace_id,
            self._ids.generate_span_id(),
            False,
            parent.trace_flags,
            parent.trace_state,
        )

    def export(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, AttributeValue] | None = None,
        status: Status = _UNSET,
    ) -> None:
        """Queue a finished span for export (never blocks: the exporter's thread sends it)."""
        span = ReadableSpan(
            name,
            context,
            parent,
            self._resource,
            attributes,
            kind=kind,
            status=status,
            start_time=start_ns,
            end_time=end_ns,
            instrumentation_scope=self._scope,
        )
        self._queue.on_end(span)

    def flush(self, timeout_ms: int = 5000) -> bool:
        """Export every ended span now (tests, shutdown)."""
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread."""
        self.provider.shutdown()


class StreamTrace:
    """The span of one sampled ext_proc stream and what it learns while the stream runs."""

    __slots__ = ("_tail", "attempt", "attempt_number", "ended", "finish_reasons", "name",
                 "parent", "record", "span", "started_ns", "tracing")  # fmt: skip

    def __init__(
        self,
        tracing: Tracing,
        span: SpanContext,
        parent: SpanContext | None,
        name: str,
        attempt: bool,
    ) -> None:
        self.tracing = tracing
        self.span = span  # this stream's span: the parent of its phases' spans
        self.parent = parent  # Envoy's span of this ext_proc call
        self.name = name
        # One clock for a stream's span and its phases' (perf_counter, see `wall_ns`), so a
        # phase never seems to start before its stream even when the wall clock is adjusted.
        self.started_ns = tracing.now_ns()
        self.ended = False
        self.attempt = attempt
        self.record: RequestRecord | None = None
        self.attempt_number = 0
        self.finish_reasons: list[str] = []
        self._tail = b""

    def phase(self, phase: str, started: float, ended: float, record: RequestRecord | None) -> None:
        """A phase was handled between `started` and `ended` (perf_counter seconds)."""
        name = PHASE_SPAN_NAMES.get(phase)
        if name is not None:
            tracing = self.tracing
            start, end = tracing.wall_ns(started), tracing.wall_ns(ended)
            tracing.export(name, tracing.child(self.span), self.span, INTERNAL, start, end)
        if record is not None and self.record is None:
            self.record = record
            if not self.attempt:
                record.trace = self  # the request's end (`Telemetry.emit`) ends this span
        if self.attempt and record is not None and phase == "request_headers":
            self.attempt_number = record.attempts  # this attempt's translation counted it

    def answer(self, body: bytes) -> None:
        """Bytes of the answer passed on to the client: note its finish reasons."""
        if not body or len(self.finish_reasons) >= MAX_FINISH_REASONS:
            return
        tail = self._tail
        data = tail + body if tail else body
        found = [m.group(1).decode() for m in _FINISH_REASON.finditer(data) if m.end() > len(tail)]
        self._tail = data[-_TAIL_BYTES:]
        if not found:
            return
        self.finish_reasons.extend(found)
        request = self.record.trace if self.attempt and self.record is not None else None
        if request is not None:  # the request's span reports what its attempt answered
            request.finish_reasons.extend(found)

    def stream_ended(self, attempt: AttemptView | None) -> None:
        """The stream ended: an attempt's span ends now; a request's when its record is
        emitted (`request_ended`), or now if it never had one (health checks)."""
        if self.attempt and attempt is not None:
            self._end(_attempt_span(attempt, self.record, self.attempt_number, self.finish_reasons))
        elif self.record is None:
            self._end(None)

    def request_ended(self, record: RequestRecord) -> None:
        """The request ended (its record is being emitted): its attributes, and the end."""
        self._end(_request_span(record, self.finish_reasons))

    def _end(self, ending: SpanEnd | None) -> None:
        if self.ended:
            return
        self.ended = True
        name, attributes, failed = ending if ending is not None else ("", None, False)
        self.tracing.export(
            name or self.name,
            self.span,
            self.parent,
            SpanKind.SERVER,
            self.started_ns,
            self.tracing.now_ns(),
            attributes,
            _ERROR if failed else _UNSET,
        )


# How a span ends: its final name ("" keeps it), its attributes, whether it failed.
SpanEnd = tuple[str, dict[str, AttributeValue], bool]


# Span names must stay few: a client's own method or path never becomes one.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ROUTES = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models"})


def _http_span_name(method: str, path: str) -> str:
    """`POST /v1/chat/completions`, `GET /v1/models/{model}`, or the bare method (HTTP
    conventions: `{method} {route}`, the route only when it is one the gateway serves)."""
    method = method if method in _METHODS else "HTTP"
    if path in _ROUTES:
        return f"{method} {path}"
    if path.startswith("/v1/models/"):
        return f"{method} /v1/models/{{model}}"
    return method


def _genai_provider(provider_type: str) -> str:
    return GENAI_PROVIDER_NAMES.get(provider_type, provider_type)


def _usage_attributes(attributes: dict[str, AttributeValue], usage: Usage | None) -> None:
    if usage is None:
        return
    attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
    attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if usage.cached_tokens is not None:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens


def _caller_attributes(attributes: dict[str, AttributeValue], record: RequestRecord) -> None:
    if record.tenant:
        attributes["gateway.tenant"] = record.tenant
    if record.key_id:
        attributes["gateway.key_id"] = record.key_id
    if record.request_id:
        attributes["gateway.request_id"] = record.request_id


def _request_span(record: RequestRecord, finish_reasons: list[str]) -> SpanEnd:
    """A request's span name and attributes, from its record (GenAI conventions, then the
    gateway's): `chat gpt-4o`, or `GET /v1/models` when it named no model."""
    attributes: dict[str, AttributeValue] = {}
    name = ""
    if record.method:
        attributes["http.request.method"] = record.method
    if record.path:
        attributes["url.path"] = record.path
    operation = record.operation
    if operation:
        attributes["gen_ai.operation.name"] = operation
        attributes["gen_ai.request.stream"] = record.stream
    if record.model:
        attributes["gen_ai.request.model"] = record.model
        name = f"{operation or 'gateway'} {record.model}"
    elif record.method:
        name = _http_span_name(record.method, record.path)
    if record.provider_type:
        attributes["gen_ai.provider.name"] = _genai_provider(record.provider_type)
    if record.response_model:
        attributes["gen_ai.response.model"] = record.response_model
    _usage_attributes(attributes, record.usage)
    if finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = tuple(finish_reasons)
    if record.stream and record.first_chunk_at is not None:
        ttft = record.first_chunk_at - record.started
        attributes["gen_ai.response.time_to_first_chunk"] = round(ttft, 6)
    status = record.status
    if status:
        attributes["http.response.status_code"] = status
    if status >= 400:
        attributes["error.type"] = record.code or str(status)
    _caller_attributes(attributes, record)
    if record.provider:
        attributes["gateway.provider"] = record.provider
    if record.target:
        attributes["gateway.target"] = record.target
    if record.attempts:
        attributes["gateway.attempts"] = record.attempts
    return name, attributes, status >= 500


def _attempt_span(
    attempt: AttemptView, record: RequestRecord | None, number: int, finish_reasons: list[str]
) -> SpanEnd:
    """An attempt's span name and attributes: the try to one target, as it answered
    (`chat <upstream model>`)."""
    target = attempt.target
    provider = target.provider
    operation = target.route.endpoint.value
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": _genai_provider(provider.type.value),
        "gen_ai.request.model": target.upstream_model,
        "gateway.model": target.route.name,
    }
    if attempt.response_model:
        attributes["gen_ai.response.model"] = attempt.response_model
    _usage_attributes(attributes, attempt.usage)
    if finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = tuple(finish_reasons)
    status = attempt.final_status if attempt.final_status is not None else attempt.status
    if status:
        attributes["http.response.status_code"] = status
    if status >= 400:
        code = record.code if record is not None else ""
        attributes["error.type"] = code or str(status)
    elif not status and attempt.outcome is not None:
        attributes["error.type"] = str(attempt.outcome)
    if record is not None:
        _caller_attributes(attributes, record)
    attributes["gateway.provider"] = provider.name
    attributes["gateway.target"] = target.id
    if number:
        attributes["gateway.attempt"] = number
    if attempt.outcome is not None:
        attributes["gateway.attempt.outcome"] = str(attempt.outcome)
    return f"{operation} {target.upstream_model}", attributes, status >= 500 or not status
