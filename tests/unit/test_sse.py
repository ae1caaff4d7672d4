"""Unit tests of the incremental SSE parser, at every split point."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.streaming.sse import SSEEvent, SSEParser, sse_data

STREAM = (
    b": comment\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"data: line one\ndata: line two\n\n"
    b"event: ping\r\ndata: {}\r\n\r\n"
    b"data: caf\xc3\xa9 \xf0\x9f\x98\x80\rdata:no-space\r\r"
    b"id: 7\nretry: 10\ndata: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", '{"a": 1}'),
    SSEEvent("", "line one\nline two"),
    SSEEvent("ping", "{}"),
    SSEEvent("", "café 😀\nno-space"),
    SSEEvent("", "[DONE]"),
]


def parse_all(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    assert not parser.pending
    return events


def test_whole_stream() -> None:
    assert parse_all([STREAM]) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_split_point(cut: int) -> None:
    assert parse_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED


def test_byte_by_byte() -> None:
    assert parse_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=8))
def test_any_number_of_splits(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert parse_all(chunks) == EXPECTED


def test_unfinished_event_is_pending() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"partial"') == []
    assert parser.pending
    assert parser.feed(b": true}\n") == []
    assert parser.pending
    assert parser.feed(b"\n") == [SSEEvent("", '{"partial": true}')]
    assert not parser.pending


def test_writer_frames_json() -> None:
    assert sse_data({"x": "é"}) == 'data: {"x":"é"}\n\n'.encode()


@pytest.mark.parametrize("cut", range(1, 40))
def test_crlf_event_at_the_end_of_a_chunk_is_not_held_back(cut: int) -> None:
    stream = b'data: {"a": 1}\r\n\r\ndata: {"b": 2}\r\n\r\n'
    parser = SSEParser()
    events = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
    assert [e.data for e in events] == ['{"a": 1}', '{"b": 2}']
    assert not parser.pending
