"""Encoder for `application/vnd.amazon.eventstream` messages, used by the fake Bedrock server.

Writes the binary framing from the format description: prelude (total length, headers
length, CRC32 of those 8 bytes), headers (string type 7 only), payload, then the CRC32 of
everything before it. botocore only decodes, so the fake needs its own encoder.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

STRING_HEADER_TYPE: Final = 7
_MAX_HEADER_NAME_BYTES: Final = 255
_MAX_HEADER_VALUE_BYTES: Final = 32767


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Headers section: for each, name length (u8), name, type 7, value length (u16), value."""
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        if not 0 < len(raw_name) <= _MAX_HEADER_NAME_BYTES:
            raise ValueError(f"header name {name!r} must be 1..255 bytes")
        if len(raw_value) > _MAX_HEADER_VALUE_BYTES:
            raise ValueError(f"header {name!r} value is longer than 32767 bytes")
        out += struct.pack("!B", len(raw_name)) + raw_name
        out += struct.pack("!BH", STRING_HEADER_TYPE, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One complete event stream message."""
    raw_headers = encode_headers(headers)
    total = 12 + len(raw_headers) + len(payload) + 4
    lengths = struct.pack("!II", total, len(raw_headers))
    prelude = lengths + struct.pack("!I", zlib.crc32(lengths))
    body = prelude + raw_headers + payload
    return body + struct.pack("!I", zlib.crc32(body))


def event_message(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """A Bedrock `event` message with a JSON payload."""
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        orjson.dumps(payload),
    )


def exception_message(exception_type: str, message: str) -> bytes:
    """A Bedrock `exception` message (e.g. `throttlingException`) with `{"message": ...}`."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"message": message}),
    )
