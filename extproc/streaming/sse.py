"""Server-sent events: an incremental parser and the writer for OpenAI-style streams.

The parser accepts bytes split anywhere (inside a line, inside a UTF-8
character, between CR and LF) and yields complete events only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
MAX_PENDING_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class SSEEvent:
    """One server-sent event: its `event` name ('' if none) and joined `data` lines."""

    event: str
    data: str


class SSEParseError(ValueError):
    """The stream is not valid SSE (e.g. an event grew beyond the size bound)."""


class SSEParser:
    """Incremental SSE parser (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""

    __slots__ = ("_buffer", "_data", "_event", "_has_data")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._event = ""
        self._data: list[str] = []
        self._has_data = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return the events completed by them."""
        self._buffer += chunk
        if len(self._buffer) > MAX_PENDING_BYTES:
            raise SSEParseError("SSE event larger than 16 MiB")
        events: list[SSEEvent] = []
        buffer = self._buffer
        start = 0
        while True:
            newline = _find_line_end(buffer, start)
            if newline is None:
                break
            end, next_start = newline
            # A lone CR at the very end may be the first half of CRLF: wait for more.
            if next_start == end + 1 == len(buffer) and buffer[end] == ord("\r"):
                break
            line = bytes(buffer[start:end]).decode("utf-8", "replace")
            start = next_start
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buffer[:start]
        return events

    @property
    def pending(self) -> bool:
        """True when bytes or fields of an unfinished event are buffered."""
        return bool(self._buffer.strip()) or self._has_data or bool(self._event)

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._has_data and not self._event:
                return None
            event = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data, self._has_data = "", [], False
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        return None


def _find_line_end(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """(end of line, start of next line) for the first line ending at or after `start`."""
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start)
    if cr < 0 and lf < 0:
        return None
    if cr < 0 or (0 <= lf < cr):
        return lf, lf + 1
    if cr + 1 < len(buffer) and buffer[cr + 1] == ord("\n"):
        return cr, cr + 2
    return cr, cr + 1


def sse_data(payload: Any) -> bytes:
    """`data: {json}\\n\\n` for one OpenAI stream event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"
