"""Where finished request records go: metrics, the access log (and traces, when on).

One `Telemetry` per processor, shared by every gateway a reload builds, so records and
metrics survive a config swap.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from extproc.config.schema import TracingConfig
from extproc.metrics import Metrics
from extproc.telemetry.access_log import write_access_line
from extproc.telemetry.record import RecordBook, RequestRecord

if TYPE_CHECKING:
    from extproc.telemetry.tracing import Tracing

log = logging.getLogger("extproc.telemetry")


class Telemetry:
    """The processor's metrics, its open request records and what to do with finished ones."""

    __slots__ = (
        "access_log",
        "completions",
        "include_content",
        "metric_tags",
        "metrics",
        "records",
        "tracing",
    )

    def __init__(
        self,
        metrics: Metrics | None = None,
        access_log: bool = True,
        include_content: bool = False,
        tracing: Tracing | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.records = RecordBook()
        self.access_log = access_log
        self.include_content = include_content
        # None when tracing is off: then no tracer exists at all.
        self.tracing = tracing
        # Tag names counted in metrics (the config in force sets them); policies' completion
        # calls in flight.
        self.metric_tags: frozenset[str] = frozenset()
        self.completions: set[asyncio.Task[None]] = set()

    def new_record(self) -> RequestRecord:
        """A record for a request starting now, emitted when its last stream lets go."""
        return RequestRecord(self.emit)

    def emit(self, record: RequestRecord) -> None:
        """A request ended: settle its reservation, count it, write its access-log line, end
        its span (if traced)."""
        self.records.close(record)
        reservation = record.reservation
        if reservation is not None:
            record.reservation = None
            try:
                reservation.settle(record)
            except Exception:  # a settlement must never cost the request its record
                log.exception("settling a request's reservation failed")
        self.metrics.request_done(record)
        if record.tags and self.metric_tags:
            self.metrics.tagged(record.tags, self.metric_tags)
        policies = record.policies
        if policies is not None and policies.completion:
            record.policies = None
            try:
                policies.complete(record, self.completions)
            except Exception:  # a policy must never cost the request its record
                log.exception("telling the policies of a completion failed")
        if self.access_log:
            write_access_line(record)
        trace = record.trace
        if trace is not None:
            record.trace = None
            trace.request_ended(record)

    def close(self) -> None:
        """Export the spans still queued (the processor is stopping)."""
        if self.tracing is not None:
            self.tracing.shutdown()


def start_tracing(config: TracingConfig) -> Tracing | None:
    """The processor's tracing when the config turns it on, else None (and the OpenTelemetry
    SDK is not even imported)."""
    if not config.enabled:
        return None
    try:
        # Imported here: a processor without tracing never loads the OpenTelemetry SDK.
        from extproc.telemetry.tracing import Tracing
    except ImportError as exc:
        # xds-protos ships an old copy of opentelemetry/proto/ that can shadow the real one.
        raise RuntimeError(
            f"tracing is on but the OTLP exporter cannot load ({exc}); reinstall it: pip "
            "install --force-reinstall --no-deps opentelemetry-proto==<installed version>"
        ) from exc
    return Tracing(config)
