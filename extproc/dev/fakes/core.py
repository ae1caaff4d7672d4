"""Core of the fake provider: behaviour knobs, request log, faults and stream pacing.

Owns `FakeProvider` (the thread-safe control surface tests drive), the `WireFormat` protocol
each wire module implements, and the helpers they share. Imports no wire module.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import re
import socket
import struct
import sys
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol
from urllib.parse import parse_qs

import orjson
from aiohttp import web
from multidict import CIMultiDict

JSON_CONTENT_TYPE: Final = "application/json"
SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
DEFAULT_EMBEDDING_DIMENSIONS: Final = 8
MAX_EMBEDDING_DIMENSIONS: Final = 4096
AZURE_PREFIX: Final = "/openai/deployments/"
# Set when the server starts shutting down: ends latency pauses and gate waits early.
CLOSING: Final = web.AppKey("fake_provider_closing", asyncio.Event)

_POLL_S: Final = 0.005
_PIECE_RE: Final = re.compile(r"\s*\S+|\s+$")


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How the fake answers. Immutable: change it with `FakeProvider.set_behaviour`.

    `status` injects that HTTP error (body `error_body` or an OpenAI-style error, plus
    `error_headers`) for every request, or only the next `fail_times` requests. A 2xx
    `status` with `error_body` serves an arbitrary (e.g. malformed) success body.
    `reply` overrides the echoed text; `stream_chunks` gives the exact stream pieces
    (their concatenation is then the reply); `stream_chunk_count` splits the reply into
    that many near-equal pieces instead of words. `stream_gate`: a stream sends the role
    chunk and the first content chunk, then holds until the event is set. `end_gate`: a
    stream sends every frame, its last event included, then holds the response open (no
    end yet) until the event is set or the client leaves.
    """

    latency_s: float = 0.0
    status: int | None = None
    error_body: bytes | None = None
    error_headers: Mapping[str, str] = field(default_factory=dict)
    fail_times: int | None = None
    reply: str | None = None
    stream_chunks: Sequence[str] | None = None
    stream_chunk_count: int | None = None
    chunk_interval_s: float = 0.0
    stream_gate: threading.Event | None = None
    end_gate: threading.Event | None = None
    # Provider-native extras used by the translating wire formats (Anthropic, Gemini,
    # Bedrock): answer with these tool calls ({"name": str, "arguments": dict}), use this
    # raw stop reason, cut the stream after N frames, or send the provider's in-stream
    # error event after N frames.
    tool_calls: Sequence[Mapping[str, Any]] | None = None
    stop_reason: str | None = None
    stream_truncate_after: int | None = None
    stream_error_after: int | None = None
    # Gemini 3 thought signatures: the first function call of an answer carries a
    # `thoughtSignature`, and a request whose current turn holds a function call without the
    # signature issued for it is refused with a 400 (Gemini wire format only).
    thought_signatures: bool = False
    # Dropped connections (every wire format). A stream sends `stream_drop_after` whole
    # frames, paced by `chunk_interval_s`, then resets the TCP connection: no zero-length
    # chunk, no clean close. Any other answer (JSON, refusal, injected error) sends its
    # status and headers with the full Content-Length, then `body_drop_after_bytes` bytes of
    # its body, then (once `stream_gate` is set, if one is given) the reset. A count at or
    # past the end leaves the answer whole.
    stream_drop_after: int | None = None
    body_drop_after_bytes: int | None = None
    # Misbehaving answers (every wire format, any answer: whole, streamed or an injected
    # error). `mangle` replaces the bytes the wire would send (a whole body, or every frame of
    # a stream joined) with `mangle(those bytes)`: garbage, a cut, corrupted bytes; a whole
    # body's Content-Length follows it. `content_type` replaces the answer's Content-Type.
    # `drip_bytes` sends the answer (mangled or not) in pieces of that many bytes,
    # `chunk_interval_s` apart; a stream's pieces then count as its frames.
    mangle: Callable[[bytes], bytes] | None = None
    content_type: str | None = None
    drip_bytes: int | None = None
    # A whole answer sent with chunked transfer encoding, without a Content-Length.
    chunked: bool = False

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.chunk_interval_s < 0:
            raise ValueError("latency_s and chunk_interval_s must be >= 0")
        if self.status is not None and not 200 <= self.status <= 599:
            raise ValueError(f"status must be in 200..599, got {self.status}")
        if self.fail_times is not None:
            if self.status is None:
                raise ValueError("fail_times needs a status to inject")
            if self.fail_times < 0:
                raise ValueError("fail_times must be >= 0")
        if self.stream_chunk_count is not None and self.stream_chunk_count < 1:
            raise ValueError("stream_chunk_count must be >= 1")
        if self.drip_bytes is not None and self.drip_bytes < 1:
            raise ValueError("drip_bytes must be >= 1")
        for name in ("stream_drop_after", "body_drop_after_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (recorded before any injected error or delay)."""

    seq: int
    method: str
    path: str
    query_string: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    json: Any
    received_at: float

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of header `name` (case-insensitive), else `default`."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return default

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in arrival order."""
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def query_param(self, name: str) -> str | None:
        """First value of query parameter `name`, else None."""
        values = parse_qs(self.query_string, keep_blank_values=True).get(name)
        return values[0] if values else None

    @property
    def deployment(self) -> str | None:
        """Azure deployment named in the path, or None for non-Azure paths."""
        route = azure_route(self.path)
        return route[0] if route else None


class Arrival(NamedTuple):
    """One recorded arrival: sequence number, behaviour in force, inject or not, parsed body."""

    seq: int
    behaviour: Behaviour
    inject: bool
    parsed: Any


class WireFormat(Protocol):
    """A provider wire format the fake speaks (one module each)."""

    def matches(self, path: str) -> bool:
        """True when `path` belongs to this wire format."""
        ...

    async def handle(
        self, fake: FakeProvider, request: web.Request, arrival: Arrival
    ) -> web.StreamResponse:
        """Answer a request of this wire format (recording is already done)."""
        ...

    def error_response(self, arrival: Arrival) -> web.Response:
        """The injected error (`behaviour.status`, `error_body`, `error_headers`) in this format."""
        ...


class FakeProvider:
    """Request log and behaviour of one fake upstream; safe to drive from any thread."""

    def __init__(self, behaviour: Behaviour | None = None, keep: int | None = None) -> None:
        """`keep`: how many of the latest requests to remember (None: all, for tests; the
        command-line server, which nothing reads them from, keeps none, or a benchmark's
        1 MB prompts would pile up in memory)."""
        self._initial = behaviour or Behaviour()
        self._cond = threading.Condition(threading.Lock())
        self._requests: deque[RecordedRequest] = deque(maxlen=keep)
        self._behaviour = self._initial
        self._failures_left = self._initial.fail_times or 0
        self._seq = 0
        self._stream_started = 0
        self._stream_finished = 0
        self._stream_aborted = 0

    # -- control surface -------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def behaviour(self) -> Behaviour:
        """The behaviour applied to requests arriving from now on."""
        with self._cond:
            return self._behaviour

    @behaviour.setter
    def behaviour(self, behaviour: Behaviour) -> None:
        with self._cond:
            self._behaviour = behaviour
            self._failures_left = behaviour.fail_times or 0

    def set_behaviour(self, **fields: Any) -> Behaviour:
        """Replace the behaviour with `Behaviour(**fields)`; unnamed fields get defaults."""
        behaviour = Behaviour(**fields)
        self.behaviour = behaviour
        return behaviour

    def clear(self) -> None:
        """Forget recorded requests, zero the counters and restore the initial behaviour."""
        with self._cond:
            self._requests.clear()
            self._behaviour = self._initial
            self._failures_left = self._initial.fail_times or 0
            self._seq = 0
            self._stream_started = self._stream_finished = self._stream_aborted = 0

    @property
    def stream_started(self) -> int:
        """Streams whose 200 headers were sent."""
        with self._cond:
            return self._stream_started

    @property
    def stream_finished(self) -> int:
        """Streams that produced everything; counted just before the last frame is written."""
        with self._cond:
            return self._stream_finished

    @property
    def stream_aborted(self) -> int:
        """Streams cut short: client disconnect, server shutdown, truncation or drop fault."""
        with self._cond:
            return self._stream_aborted

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least `count` requests were recorded; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(
                    f"fake provider saw {len(self._requests)} requests, expected {count}"
                )
            return list(self._requests)

    # -- request handling ------------------------------------------------------------------

    async def receive(self, request: web.Request) -> Arrival:
        """Read and record `request`; decide under the lock whether to inject the error."""
        received_at = time.monotonic()
        body = await request.read()
        parsed = _parse_json(body)
        with self._cond:
            self._seq += 1
            behaviour = self._behaviour
            inject = False
            if behaviour.status is not None:
                if behaviour.fail_times is None:
                    inject = True
                elif self._failures_left > 0:
                    self._failures_left -= 1
                    inject = True
            self._requests.append(
                RecordedRequest(
                    seq=self._seq,
                    method=request.method,
                    path=request.path,
                    query_string=request.query_string,
                    headers=tuple(request.headers.items()),
                    body=body,
                    json=parsed,
                    received_at=received_at,
                )
            )
            self._cond.notify_all()
            return Arrival(self._seq, behaviour, inject, parsed)

    async def hold(self, request: web.Request, arrival: Arrival) -> bool:
        """Wait out the arrival's `latency_s`; False (early) if the server began shutting down."""
        return await pause(request.app[CLOSING], arrival.behaviour.latency_s)

    async def stream_frames(
        self,
        request: web.Request,
        arrival: Arrival,
        frames: Sequence[bytes],
        content_type: str,
        gate_after: int,
    ) -> web.StreamResponse:
        """Send pre-encoded stream frames one write each, honouring the arrival's behaviour.

        `chunk_interval_s` paces frames; `stream_gate` holds after frame `gate_after`;
        `stream_truncate_after=N` sends N whole frames, then half of the next one,
        then ends the response cleanly (a stream cut mid-event); `stream_drop_after=N`
        sends N whole frames, then resets the connection. The last frame is the
        terminator: `stream_finished` is counted just before it is written.
        """
        behaviour = arrival.behaviour
        closing = request.app[CLOSING]
        frames = misbehave(behaviour, frames)
        resp = web.StreamResponse(
            headers={
                "Content-Type": behaviour.content_type or content_type,
                "x-request-id": request_id(arrival.seq),
            }
        )
        await resp.prepare(request)
        with self._cond:
            self._stream_started += 1
        cut = behaviour.stream_truncate_after
        try:
            for index, frame in enumerate(frames):
                if index and not await pause(closing, behaviour.chunk_interval_s):
                    return self._abort(resp)
                if index == behaviour.stream_drop_after:
                    await reset_connection(request)
                    return self._abort(resp)
                if cut is not None and index == cut:
                    await resp.write(frame[: max(1, len(frame) // 2)])
                    await resp.write_eof()
                    return self._abort(resp)
                if index == len(frames) - 1:
                    with self._cond:
                        self._stream_finished += 1
                await resp.write(frame)
                gate = behaviour.stream_gate
                if (
                    index == gate_after
                    and gate is not None
                    and not await _wait_gate(gate, request, closing)
                ):
                    return self._abort(resp)
            end_gate = behaviour.end_gate
            if end_gate is not None and not await _wait_gate(end_gate, request, closing):
                return self._abort(resp)
            await resp.write_eof()
        except ConnectionError:
            return self._abort(resp)
        return resp

    def _abort(self, resp: web.StreamResponse) -> web.StreamResponse:
        with self._cond:
            self._stream_aborted += 1
        return resp


# -- pacing ----------------------------------------------------------------------------------


async def pause(closing: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`; False (early) if the server started shutting down."""
    if seconds > 0:
        try:
            async with asyncio.timeout(seconds):
                await closing.wait()
        except TimeoutError:
            return True
    return not closing.is_set()


async def _wait_gate(gate: threading.Event, request: web.Request, closing: asyncio.Event) -> bool:
    """Poll `gate` without blocking the loop; False if the client left or shutdown began."""
    while not gate.is_set():
        transport = request.transport
        if closing.is_set() or transport is None or transport.is_closing():
            return False
        await asyncio.sleep(_POLL_S)
    return True


# -- dropped connections ---------------------------------------------------------------------


async def deliver(
    request: web.Request, arrival: Arrival, response: web.StreamResponse
) -> web.StreamResponse:
    """`response` as it is, or as the arrival's behaviour spoils it: `mangle`d, with another
    `content_type`, dripped in `drip_bytes` pieces, `chunked` (no Content-Length), or under
    `body_drop_after_bytes` its status and headers (with the full Content-Length) and only
    that many bytes of its body, then a reset connection."""
    behaviour = arrival.behaviour
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return response
    headers: CIMultiDict[str] = CIMultiDict(response.headers)
    headers.popall("Content-Length", None)
    if behaviour.content_type is not None:
        headers["Content-Type"] = behaviour.content_type
    if behaviour.mangle is not None:
        body = behaviour.mangle(body)
    limit = behaviour.body_drop_after_bytes
    dropped = limit is not None and limit < len(body)
    if not dropped and behaviour.drip_bytes is None and not behaviour.chunked:
        if behaviour.mangle is None and behaviour.content_type is None:
            return response
        return web.Response(
            status=response.status, reason=response.reason, headers=headers, body=body
        )
    head = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
    if behaviour.chunked:
        head.enable_chunked_encoding()
    else:
        head.content_length = len(body)
    await head.prepare(request)
    closing = request.app[CLOSING]
    sent = body[:limit] if dropped else body
    try:
        for index, piece in enumerate(_pieces(sent, behaviour.drip_bytes)):
            if index and not await pause(closing, behaviour.chunk_interval_s):
                return head
            await head.write(piece)
    except ConnectionError:
        return head  # the client (Envoy) left: nothing more to send
    if not dropped:
        await head.write_eof()
        return head
    gate = behaviour.stream_gate
    if gate is not None and not await _wait_gate(gate, request, closing):
        return head
    await reset_connection(request)
    return head  # aiohttp's own end of the response then fails quietly on the closed transport


def misbehave(behaviour: Behaviour, frames: Sequence[bytes]) -> Sequence[bytes]:
    """`frames`, or under `mangle` / `drip_bytes` their joined bytes mangled and cut in
    `drip_bytes` pieces (one piece when not dripped; never none)."""
    if behaviour.mangle is None and behaviour.drip_bytes is None:
        return frames
    data = b"".join(frames)
    if behaviour.mangle is not None:
        data = behaviour.mangle(data)
    return _pieces(data, behaviour.drip_bytes)


def _pieces(data: bytes, size: int | None) -> list[bytes]:
    """`data` in pieces of `size` bytes (whole when `size` is None; never no piece)."""
    step = size or max(1, len(data))
    return [data[i : i + step] for i in range(0, len(data), step)] or [b""]


async def reset_connection(request: web.Request) -> None:
    """Reset the client's TCP connection once every byte written so far reached it.

    The peer reads all of them, then gets ECONNRESET: neither the end of the HTTP message
    nor a clean close. Waiting ends early when the client leaves or shutdown begins.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    closing = request.app[CLOSING]
    sock = transport.get_extra_info("socket")
    while (
        (transport.get_write_buffer_size() or _unacknowledged_bytes(sock))
        and not closing.is_set()
        and not transport.is_closing()
    ):
        await asyncio.sleep(_POLL_S)
    if transport.is_closing():  # the client left meanwhile
        return
    if sock is not None:
        # A zero linger time makes close() send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unacknowledged_bytes(sock: Any) -> int:
    """Bytes the kernel sent or holds that the peer has not acknowledged (Linux), else 0.

    A reset discards them, so the reset waits for this to reach 0.
    """
    if sock is None or sys.platform != "linux":
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)  # SIOCOUTQ
    except OSError:
        return 0
    queued: int = struct.unpack("i", raw)[0]
    return queued


# -- answers shared by the wire formats ------------------------------------------------------


def request_id(seq: int) -> str:
    """The id in every stream's `x-request-id` (and the OpenAI and Anthropic JSON answers)."""
    return f"req_fake_{seq}"


def injected_error(
    arrival: Arrival, default_body: bytes, headers: Mapping[str, str]
) -> web.Response:
    """The injected error of any wire format: `error_body` (else `default_body`) with
    `behaviour.status`, JSON content type, `headers` and then `behaviour.error_headers`."""
    behaviour = arrival.behaviour
    status = behaviour.status
    assert status is not None
    merged: CIMultiDict[str] = CIMultiDict({"Content-Type": JSON_CONTENT_TYPE, **headers})
    merged.update(behaviour.error_headers)
    body = behaviour.error_body if behaviour.error_body is not None else default_body
    return web.Response(status=status, body=None if status in (204, 304) else body, headers=merged)


# -- text shared by the wire formats ---------------------------------------------------------


def count_tokens(text: str) -> int:
    """Deterministic stand-in for a tokenizer: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def content_text(content: Any, separator: str = "") -> str:
    """Text of OpenAI- or Anthropic-shaped content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return separator.join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def message_text(message: Any) -> str:
    """Text of an OpenAI- or Anthropic-shaped message (its content's text parts joined)."""
    return content_text(message.get("content")) if isinstance(message, dict) else ""


def last_user_text(messages: Sequence[Any]) -> str:
    """Text of the last `user` message; list content has its text parts concatenated."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message)
    return ""


def split_reply(reply: str, count: int | None = None) -> list[str]:
    """Stream pieces whose concatenation is `reply`: words with their leading whitespace,
    or `count` near-equal slices when `count` is given."""
    if count is None:
        return _PIECE_RE.findall(reply)
    size = len(reply)
    return [reply[i * size // count : (i + 1) * size // count] for i in range(count)]


def reply_text(behaviour: Behaviour, last_user: str) -> str:
    """What a translating fake answers: the stream pieces joined, `reply`, nothing when it
    only makes tool calls, else an echo of the last user text."""
    if behaviour.stream_chunks is not None:
        return "".join(behaviour.stream_chunks)
    if behaviour.reply is not None:
        return behaviour.reply
    if behaviour.tool_calls:
        return ""
    return "echo: " + last_user


def embedding_vector(item: str | Sequence[int], dimensions: int) -> list[float]:
    """Deterministic unit-range vector for one input; values are exact in float32."""
    seed = orjson.dumps(item if isinstance(item, str) else list(item))
    raw = b""
    block = 0
    while len(raw) < 2 * dimensions:
        raw += hashlib.sha256(seed + block.to_bytes(4, "little")).digest()
        block += 1
    return [
        (int.from_bytes(raw[2 * i : 2 * i + 2], "little") - 32768) / 32768
        for i in range(dimensions)
    ]


def azure_route(path: str) -> tuple[str, str] | None:
    """(deployment, operation) of an Azure OpenAI path, else None."""
    if not path.startswith(AZURE_PREFIX):
        return None
    deployment, _, operation = path[len(AZURE_PREFIX) :].partition("/")
    return deployment, operation


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
