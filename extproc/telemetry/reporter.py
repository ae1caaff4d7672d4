"""Where finished request records go: metrics, the access log (and traces, when on).

One `Telemetry` per processor, shared by every gateway a reload builds, so records and
metrics survive a config swap.
"""

from __future__ import annotations

from extproc.metrics import Metrics
from extproc.telemetry.access_log import write_access_line
from extproc.telemetry.record import RecordBook, RequestRecord


class Telemetry:
    """The processor's metrics, its open request records and what to do with finished ones."""

    __slots__ = ("access_log", "include_content", "metrics", "records")

    def __init__(
        self,
        metrics: Metrics | None = None,
        access_log: bool = True,
        include_content: bool = False,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.records = RecordBook()
        self.access_log = access_log
        self.include_content = include_content

    def new_record(self) -> RequestRecord:
        """A record for a request starting now, emitted when its last stream lets go."""
        return RequestRecord(self.emit)

    def emit(self, record: RequestRecord) -> None:
        """A request ended: count it and write its access-log line."""
        self.records.close(record)
        self.metrics.request_done(record)
        if self.access_log:
            write_access_line(record)
