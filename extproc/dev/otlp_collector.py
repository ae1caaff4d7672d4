"""A tiny OTLP gRPC trace receiver for tests and the benchmark (development only).

`OtlpCollector` implements the collector's `TraceService.Export` on a gRPC server in threads
of the calling process and keeps every span it receives as a plain `CollectedSpan`; the e2e
tests read them back. `python -m extproc.dev.otlp_collector --port N --discard` runs one as
its own process that accepts and drops everything (the benchmark's do-nothing collector).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Self

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class CollectedSpan:
    """One exported span, as the collector received it (ids in lowercase hex)."""

    service: str  # the resource's `service.name`
    scope: str  # the instrumentation scope's name
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0  # Status.StatusCode: 0 unset, 1 ok, 2 error
    start_ns: int = 0
    end_ns: int = 0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[CollectedSpan]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    CollectedSpan(
                        service=str(resource.get("service.name", "")),
                        scope=scope_spans.scope.name,
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return out


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: OtlpCollector) -> None:
        self.collector = collector

    def Export(  # noqa: N802 - gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.collector.received(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpCollector:
    """An OTLP gRPC trace receiver on `host:port` (0: a free port); `discard` keeps nothing."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, discard: bool = False) -> None:
        self.host = host
        self.port = port
        self.discard = discard
        self.exports = 0  # Export calls received
        self._spans: list[CollectedSpan] = []
        self._lock = threading.Condition()
        self._server: grpc.Server | None = None

    @property
    def endpoint(self) -> str:
        """`HOST:PORT`, what `telemetry.tracing.endpoint` wants (once started)."""
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        """Start serving (returns at once; the server runs in its own threads)."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add_servicer = trace_service_pb2_grpc.add_TraceServiceServicer_to_server
        add_servicer(_TraceService(self), server)  # type: ignore[no-untyped-call]
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop serving; a second call does nothing."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None)

    def received(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        """One Export call: keep its spans (unless discarding)."""
        spans = [] if self.discard else _spans(request)
        with self._lock:
            self.exports += 1
            self._spans.extend(spans)
            self._lock.notify_all()

    def spans(self) -> list[CollectedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[CollectedSpan]:
        """The spans of one trace received so far."""
        return [s for s in self.spans() if s.trace_id == trace_id]

    def wait_for(
        self, done: Callable[[list[CollectedSpan]], bool], timeout: float = 20
    ) -> list[CollectedSpan]:
        """Every span received, once `done(spans)` holds (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not done(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return list(self._spans)

    def clear(self) -> None:
        """Forget the spans received so far."""
        with self._lock:
            self._spans.clear()

    def __enter__(self) -> Self:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m extproc.dev.otlp_collector`: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m extproc.dev.otlp_collector", description="OTLP gRPC trace receiver"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4317, help="0 picks a free port")
    parser.add_argument("--discard", action="store_true", help="accept spans, keep none")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with OtlpCollector(args.host, args.port, args.discard) as collector:
        print(f"otlp collector listening on {collector.endpoint}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
