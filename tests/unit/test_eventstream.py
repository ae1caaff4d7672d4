"""AWS event stream framing: the fake's encoder and the gateway's incremental decoder."""

from __future__ import annotations

import struct
import zlib

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.dev.fakes.eventstream_encoder import (
    encode_headers,
    encode_message,
    event_message,
    exception_message,
)
from extproc.streaming.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    EventStreamMessage,
)


def spec_frame(headers_bytes: bytes, payload: bytes) -> bytes:
    """A frame assembled straight from the format description (not from the encoder)."""
    total = 12 + len(headers_bytes) + len(payload) + 4
    lengths = total.to_bytes(4, "big") + len(headers_bytes).to_bytes(4, "big")
    prelude = lengths + (zlib.crc32(lengths) & 0xFFFFFFFF).to_bytes(4, "big")
    message = prelude + headers_bytes + payload
    return message + (zlib.crc32(message) & 0xFFFFFFFF).to_bytes(4, "big")


def decode_all(data: bytes, chunks: list[bytes] | None = None) -> list[EventStreamMessage]:
    decoder = EventStreamDecoder()
    out: list[EventStreamMessage] = []
    for chunk in chunks if chunks is not None else [data]:
        out += decoder.feed(chunk)
    assert decoder.error is None
    assert not decoder.pending
    return out


def failure(data: bytes, decoder: EventStreamDecoder | None = None) -> EventStreamError:
    """Feed `data`; it must produce no message and leave the decoder failed."""
    decoder = decoder or EventStreamDecoder()
    assert decoder.feed(data) == []
    assert decoder.error is not None
    return decoder.error


STREAM = (
    event_message("messageStart", {"role": "assistant"})
    + event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo 👋"}})
    + encode_message({}, b"")
    + exception_message("throttlingException", "slow down")
)


# -- encoder ---------------------------------------------------------------------------------


def test_empty_message_matches_published_vector() -> None:
    # The event stream test suite's "empty_message": total 16, no headers, no payload.
    assert encode_message({}, b"") == bytes.fromhex("000000100000000005c248eb7d98c8ff")


def test_string_header_layout_follows_the_spec() -> None:
    # name length (1 byte), name, type 7, value length (2 bytes, big-endian), value
    assert encode_headers({":a": "bc"}) == b"\x02:a\x07\x00\x02bc"
    expected = spec_frame(b"\x02:a\x07\x00\x02bc", b"xyz")
    assert encode_message({":a": "bc"}, b"xyz") == expected


def test_encoder_round_trips_through_botocore() -> None:
    frames = [
        event_message("contentBlockDelta", {"delta": {"text": "שלום 漢字"}}),
        exception_message("validationException", "Input is too long"),
        encode_message({"x": "y" * 300, "ü": ""}, b"\x00\xff" * 100),
    ]
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))
    decoded = list(buffer)
    assert [m.headers for m in decoded] == [
        {
            ":event-type": "contentBlockDelta",
            ":content-type": "application/json",
            ":message-type": "event",
        },
        {
            ":exception-type": "validationException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        {"x": "y" * 300, "ü": ""},
    ]
    assert decoded[0].payload == '{"delta":{"text":"שלום 漢字"}}'.encode()
    assert decoded[1].payload == b'{"message":"Input is too long"}'
    assert decoded[2].payload == b"\x00\xff" * 100


def test_encoder_refuses_impossible_headers() -> None:
    with pytest.raises(ValueError):
        encode_headers({"": "x"})
    with pytest.raises(ValueError):
        encode_headers({"n" * 256: "x"})
    with pytest.raises(ValueError):
        encode_headers({"n": "x" * 32768})


# -- decoder ---------------------------------------------------------------------------------


def test_decodes_several_frames_in_one_chunk() -> None:
    messages = decode_all(STREAM)
    assert [m.header(":event-type") for m in messages] == [
        "messageStart",
        "contentBlockDelta",
        None,
        None,
    ]
    assert messages[1].payload.decode() == ('{"contentBlockIndex":0,"delta":{"text":"héllo 👋"}}')
    assert messages[2] == EventStreamMessage({}, b"")
    assert messages[3].header(":exception-type") == "throttlingException"
    assert messages[3].header(":message-type") == "exception"


def test_every_split_point_and_byte_by_byte() -> None:
    whole = decode_all(STREAM)
    for i in range(len(STREAM) + 1):
        assert decode_all(STREAM, [STREAM[:i], STREAM[i:]]) == whole, i
    assert decode_all(STREAM, [bytes([b]) for b in STREAM]) == whole


def test_messages_are_returned_as_soon_as_complete() -> None:
    first = event_message("messageStart", {"role": "assistant"})
    decoder = EventStreamDecoder()
    assert decoder.feed(first[:-1]) == []
    assert decoder.pending
    assert len(decoder.feed(first[-1:] + STREAM[:5])) == 1
    assert decoder.pending


def test_non_string_header_types_decode() -> None:
    # int32 header (type 4) and bool true (type 0), written from the spec.
    headers = b"\x01n\x04" + struct.pack("!i", -7) + b"\x01t\x00"
    [message] = decode_all(spec_frame(headers, b"p"))
    assert message.headers == {"n": -7, "t": True}
    assert message.header("n") is None  # not a string
    assert message.payload == b"p"


@pytest.mark.parametrize("where", ["prelude", "prelude-crc", "headers", "payload", "message-crc"])
def test_crc_corruption_is_an_error(where: str) -> None:
    frame = bytearray(event_message("metadata", {"usage": {"inputTokens": 1}}))
    header_end = 12 + struct.unpack_from("!I", frame, 4)[0]
    position = {
        "prelude": 2,
        "prelude-crc": 9,
        "headers": 14,
        "payload": header_end + 3,
        "message-crc": len(frame) - 1,
    }[where]
    frame[position] ^= 0x20
    message = str(failure(bytes(frame)))
    expected = "prelude CRC mismatch" if where.startswith("prelude") else "Checksum mismatch"
    assert expected in message


def test_any_single_byte_flip_is_detected() -> None:
    frame = event_message("contentBlockDelta", {"delta": {"text": "abc"}})
    for i in range(len(frame)):
        corrupt = bytearray(frame)
        corrupt[i] ^= 0xFF
        failure(bytes(corrupt))


def test_prelude_corruption_is_found_before_the_frame_completes() -> None:
    frame = bytearray(event_message("messageStart", {"role": "assistant"}))
    frame[0] ^= 0x01  # total length changes; the prelude CRC no longer matches
    assert "prelude CRC" in str(failure(bytes(frame[:12])))


def test_oversize_frame_is_refused_from_its_prelude() -> None:
    frame = encode_message({}, b"x" * 200)
    assert "exceeds" in str(failure(frame[:12], EventStreamDecoder(max_frame_bytes=100)))
    assert len(decode_all(frame)) == 1  # the default bound accepts it


def test_impossible_lengths_are_refused() -> None:
    for total, headers in ((15, 0), (20, 5), (0, 0)):
        lengths = struct.pack("!II", total, headers)
        prelude = lengths + struct.pack("!I", zlib.crc32(lengths))
        assert "impossible" in str(failure(prelude + b"\x00" * 8))


def test_garbage_header_bytes_with_valid_crcs_are_an_error() -> None:
    # Header type 42 does not exist.
    assert "invalid event stream message" in str(failure(spec_frame(b"\x01n\x2a", b"")))


def test_decoder_stays_failed() -> None:
    decoder = EventStreamDecoder()
    error = failure(b"this is not an event stream", decoder)
    assert decoder.feed(encode_message({}, b"")) == []
    assert decoder.error is error
    assert not decoder.pending


def test_messages_before_a_corrupt_frame_are_returned() -> None:
    good = event_message("messageStart", {"role": "assistant"})
    bad = bytearray(encode_message({}, b"payload"))
    bad[-1] ^= 0x01
    decoder = EventStreamDecoder()
    messages = decoder.feed(good + good + bytes(bad) + good)
    assert [m.header(":event-type") for m in messages] == ["messageStart", "messageStart"]
    assert decoder.error is not None


def test_max_frame_bytes_has_a_floor() -> None:
    with pytest.raises(ValueError):
        EventStreamDecoder(max_frame_bytes=15)


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(
        st.tuples(
            st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=4),
            st.binary(max_size=120),
        ),
        min_size=1,
        max_size=4,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_round_trip_property(frames: list[tuple[dict[str, str], bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_message(headers, payload) for headers, payload in frames)
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    decoded = decode_all(data, chunks)
    assert [(m.headers, m.payload) for m in decoded] == frames


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    decoder = EventStreamDecoder()
    decoder.feed(data)
    assert decoder.error is None or isinstance(decoder.error, EventStreamError)
