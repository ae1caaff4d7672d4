"""The access log: one JSON line per request, written when the request ends.

Lines are written straight to standard output, one `write` per line (the logging module cost
~3 times more per line); the processor's own log stays on standard error (`configure_logging`).
No keys ever: the caller is named by tenant and key id, and prompt or completion text appears
only with `telemetry.access_log.include_content`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import orjson

from extproc.telemetry.record import RequestRecord

STDOUT = 1


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 3)


def access_line(record: RequestRecord) -> dict[str, Any]:
    """The access-log fields of a finished request."""
    usage = record.usage
    started = record.started
    line: dict[str, Any] = {
        "time": _iso(record.started_wall),
        "request_id": record.request_id,
        "trace_id": record.trace_id,
        "method": record.method,
        "path": record.path,
        "tenant": record.tenant,
        "key_id": record.key_id,
        "model": record.model,
        "stream": record.stream,
        "provider": record.provider,
        "target": record.target,
        "upstream_model": record.upstream_model,
        "response_model": record.response_model,
        "status": record.status,
        "error_code": record.code if record.status >= 400 else "",
        "attempts": record.attempts,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "total_tokens": usage.total_tokens if usage else None,
        "cost": record.cost,
        "latency_ms": _ms(started, record.ended_at),
        "headers_ms": _ms(started, record.headers_at),
        "ttft_ms": _ms(started, record.first_chunk_at),
        "cache": record.cache,
        "tags": record.tags,
    }
    if record.content is not None:
        line["content"] = record.content
    return line


_second = -1
_second_text = ""


def _iso(wall: float) -> str:
    """UTC ISO 8601 with milliseconds; the part up to the second is formatted once a second."""
    global _second, _second_text
    seconds = int(wall)
    if seconds != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = seconds
    return f"{_second_text}.{int((wall - seconds) * 1000):03d}Z"


def write_access_line(record: RequestRecord, fd: int = STDOUT) -> None:
    """Write the request's line to `fd` (standard output), whole, in one `write`."""
    line = orjson.dumps(access_line(record), option=orjson.OPT_APPEND_NEWLINE)
    with contextlib.suppress(OSError):  # a closed standard output must not fail requests
        written = os.write(fd, line)
        if written < len(line):  # a pipe took part of a long line: write the rest
            rest = memoryview(line)[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


class JsonFormatter(logging.Formatter):
    """The processor's own log lines as JSON objects (`telemetry.log_format: json`)."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object: time, level, logger, message (and the exception, if any)."""
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str) -> None:
    """Set the processor's log level and format (stderr)."""
    root = logging.getLogger()
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter)
