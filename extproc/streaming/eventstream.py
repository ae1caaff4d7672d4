"""Incremental decoder for `application/vnd.amazon.eventstream` (AWS binary event stream).

Owns framing: bytes split anywhere go in, whole validated messages come out. Each frame is
bounded in size and its prelude CRC is checked as soon as 12 bytes are here; botocore's
`EventStreamBuffer` then validates the message CRC and decodes headers and payload.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, Final, cast

from botocore.eventstream import EventStreamBuffer, ParserError

PRELUDE_BYTES: Final = 12  # total length, headers length, prelude CRC (uint32 big-endian each)
MIN_FRAME_BYTES: Final = PRELUDE_BYTES + 4  # prelude + message CRC, no headers or payload
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
_PRELUDE: Final = struct.Struct("!III")


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (bad CRC, impossible lengths, oversize frame)."""


@dataclass(frozen=True, slots=True)
class EventStreamMessage:
    """One decoded message: its headers (name → value) and raw payload."""

    headers: dict[str, Any]
    payload: bytes

    def header(self, name: str) -> str | None:
        """A string header's value, or None when absent or not a string."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


class EventStreamDecoder:
    """Feeds on arbitrary chunks; returns every message they complete.

    A corrupt or oversize frame does not raise: `feed` returns the messages completed
    before it and sets `error`; from then on the decoder is failed and returns nothing.
    """

    __slots__ = ("_buffer", "_max_frame_bytes", "_parser", "error")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < MIN_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be at least {MIN_FRAME_BYTES}")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._parser = EventStreamBuffer()
        self.error: EventStreamError | None = None

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished frame are buffered."""
        return bool(self._buffer)

    def feed(self, chunk: bytes) -> list[EventStreamMessage]:
        """Add bytes; return the messages they complete (check `error` afterwards)."""
        if self.error is not None:
            return []
        buffer = self._buffer
        buffer += chunk
        messages: list[EventStreamMessage] = []
        start = 0
        try:
            while len(buffer) - start >= PRELUDE_BYTES:
                total = self._frame_length(buffer, start)
                if len(buffer) - start < total:
                    break
                messages.append(self._decode(bytes(buffer[start : start + total])))
                start += total
        except EventStreamError as error:
            self.error = error
            buffer.clear()
            return messages
        del buffer[:start]
        return messages

    def _frame_length(self, buffer: bytearray, start: int) -> int:
        total, headers, crc = _PRELUDE.unpack_from(buffer, start)
        computed = zlib.crc32(memoryview(buffer)[start : start + 8])
        if computed != crc:
            raise EventStreamError(
                f"event stream prelude CRC mismatch (expected {crc:08x}, got {computed:08x})"
            )
        if total > self._max_frame_bytes:
            raise EventStreamError(
                f"event stream frame of {total} bytes exceeds the {self._max_frame_bytes} "
                "byte limit"
            )
        if total < MIN_FRAME_BYTES or headers > total - MIN_FRAME_BYTES:
            raise EventStreamError(
                f"event stream frame has impossible lengths (total {total}, headers {headers})"
            )
        return int(total)

    def _decode(self, frame: bytes) -> EventStreamMessage:
        parser = self._parser
        parser.add_data(frame)
        try:
            raw = parser.next()
        except (ParserError, StopIteration, struct.error, KeyError, UnicodeDecodeError) as exc:
            raise EventStreamError(f"invalid event stream message: {exc}") from None
        # botocore-stubs type `headers` as int; botocore returns a dict.
        headers = cast(dict[str, Any], raw.headers)
        return EventStreamMessage(headers, bytes(raw.payload))
