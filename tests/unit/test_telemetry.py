"""Unit tests of the request record, the access-log formatting and the metrics' bounds."""

from __future__ import annotations

import logging

import orjson
import pytest

from extproc.metrics import MAX_RESPONSE_MODELS, Metrics
from extproc.providers.base import Usage
from extproc.telemetry.access_log import JsonFormatter, access_line
from extproc.telemetry.record import RecordBook, RequestRecord, trace_id_from

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-00", TRACE),
        (None, ""),
        ("", ""),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", ""),  # the invalid all-zero trace id
        (f"00-{TRACE[:-1]}x-00f067aa0ba902b7-01", ""),
        (f"00_{TRACE}-00f067aa0ba902b7-01", ""),
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", ""),
    ],
)
def test_trace_id_from_a_traceparent(header: str | None, expected: str) -> None:
    assert trace_id_from(header) == expected


def test_a_record_is_emitted_once_when_its_last_holder_lets_go() -> None:
    emitted: list[RequestRecord] = []
    book = RecordBook()
    record = RequestRecord(emitted.append)
    record.request_id = "req-1"
    book.open(record)
    attempt = book.find("req-1")  # an attempt's stream holds it too
    assert attempt is record
    assert book.find("other") is None and book.find(None) is None
    record.release()  # the downstream stream ended first
    assert emitted == []
    attempt.release()
    assert emitted == [record]
    assert record.ended_at is not None
    record.release()  # a late extra release does not emit again
    assert emitted == [record]


def test_an_access_line_has_the_request_s_fields_and_no_content_by_default() -> None:
    record = RequestRecord(lambda _: None)
    record.tenant, record.key_id, record.model = "acme", "0123456789ab", "gpt"
    record.status, record.code, record.attempts = 503, "provider_overloaded", 2
    record.usage = Usage.of(7, 3, cached=2)
    record.headers_at = record.started + 0.5
    record.ended_at = record.started + 1.25
    line = access_line(record)
    assert line["error_code"] == "provider_overloaded" and line["attempts"] == 2
    assert (line["prompt_tokens"], line["completion_tokens"], line["total_tokens"]) == (7, 3, 10)
    assert line["cached_tokens"] == 2
    assert line["latency_ms"] == 1250 and line["headers_ms"] == 500 and line["ttft_ms"] is None
    assert "content" not in line
    record.status = 200
    assert access_line(record)["error_code"] == ""  # a success has no error code
    orjson.dumps(line)  # serialisable as is


def test_json_log_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = logging.LogRecord(
            "extproc.x", logging.ERROR, __file__, 1, "failed %s", ("x",), None
        )
        import sys

        entry.exc_info = sys.exc_info()
    line = orjson.loads(JsonFormatter().format(entry))
    assert line["level"] == "ERROR" and line["logger"] == "extproc.x"
    assert line["message"] == "failed x" and "ValueError: boom" in line["exception"]


def test_response_models_are_bounded_per_request_model() -> None:
    metrics = Metrics()
    seen = [metrics._response_model("gpt", f"gpt-v{i}") for i in range(MAX_RESPONSE_MODELS + 3)]
    assert seen[:MAX_RESPONSE_MODELS] == [f"gpt-v{i}" for i in range(MAX_RESPONSE_MODELS)]
    assert set(seen[MAX_RESPONSE_MODELS:]) == {"other"}
    assert metrics._response_model("gpt", "gpt-v0") == "gpt-v0"  # known ones stay
    assert metrics._response_model("claude", "claude-v1") == "claude-v1"  # per request model
    assert metrics._response_model("gpt", None) == ""
