"""Fake OpenAI / Azure OpenAI upstream: the aiohttp app, its behaviour knobs and request log.

Owns the provider wire format (chat, SSE streaming, embeddings, models, OpenAI-style errors)
and `FakeProvider`, the thread-safe control surface that tests and benchmarks drive.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http
import re
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol
from urllib.parse import parse_qs

import orjson
from aiohttp import web
from multidict import CIMultiDict

JSON_CONTENT_TYPE: Final = "application/json"
SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
FAKE_MODEL_ID: Final = "fake-model"
SYSTEM_FINGERPRINT: Final = "fp_fake"
DEFAULT_EMBEDDING_DIMENSIONS: Final = 8
MAX_EMBEDDING_DIMENSIONS: Final = 4096

_AZURE_PREFIX: Final = "/openai/deployments/"
_AZURE_OPERATIONS: Final = ("chat/completions", "embeddings")
_OPENAI_OPERATIONS: Final = ("chat/completions", "embeddings", "models")
_AZURE_NOT_FOUND: Final = orjson.dumps({"error": {"code": "404", "message": "Resource not found"}})
_GATE_POLL_S: Final = 0.005
_PIECE_RE: Final = re.compile(r"\s*\S+|\s+$")

# Default (type, code) of injected errors, as OpenAI reports them.
_ERROR_KINDS: Final[Mapping[int, tuple[str, str | None]]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}

# Real providers accept large prompts; aiohttp would refuse anything over 1 MiB.
MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024
_CLOSING: Final = web.AppKey("fake_provider_closing", asyncio.Event)


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How the fake answers. Immutable: change it with `FakeProvider.set_behaviour`.

    `status` injects that HTTP error (body `error_body` or an OpenAI-style error, plus
    `error_headers`) for every request, or only the next `fail_times` requests. A 2xx
    `status` with `error_body` serves an arbitrary (e.g. malformed) success body.
    `reply` overrides the echoed text; `stream_chunks` gives the exact stream pieces
    (their concatenation is then the reply); `stream_chunk_count` splits the reply into
    that many near-equal pieces instead of words. `stream_gate`: a stream sends the role
    chunk and the first content chunk, then holds until the event is set.
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
        route = _azure_route(self.path)
        return route[0] if route else None


class Arrival(NamedTuple):
    """One recorded arrival: its sequence number, the behaviour in force, inject or not."""

    seq: int
    behaviour: Behaviour
    inject: bool


class FakeProvider:
    """Request log and behaviour of one fake upstream; safe to drive from any thread."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self._initial = behaviour or Behaviour()
        self._cond = threading.Condition(threading.Lock())
        self._requests: list[RecordedRequest] = []
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
        """Streams that produced everything; counted just before `data: [DONE]` is written."""
        with self._cond:
            return self._stream_finished

    @property
    def stream_aborted(self) -> int:
        """Streams cut short by a client disconnect or server shutdown."""
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

    def _arrive(
        self, request: web.Request, body: bytes, parsed: Any, received_at: float
    ) -> Arrival:
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
            return Arrival(self._seq, behaviour, inject)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Catch-all aiohttp handler: record, delay, maybe inject an error, then dispatch."""
        received_at = time.monotonic()
        body = await request.read()
        parsed = _parse_json(body)
        arrival = self._arrive(request, body, parsed, received_at)
        closing = request.app[_CLOSING]
        if not await _pause(closing, arrival.behaviour.latency_s):
            return _openai_error_response(503, arrival.seq, "The fake provider is shutting down.")
        wire = wire_for(request.path)
        if arrival.inject:
            if wire is not None:
                return wire.error_response(arrival)
            return _injected_response(arrival)
        if wire is not None:
            return await wire.handle(self, request, parsed, arrival)

        method, path = request.method, request.path
        azure = _azure_route(path)
        if azure is not None:
            if "api-version" not in request.query or azure[1] not in _AZURE_OPERATIONS:
                return _json_bytes_response(_AZURE_NOT_FOUND, arrival.seq, status=404)
            model: str | None = azure[0]
            operation = azure[1]
        else:
            model = None
            operation = next((op for op in _OPENAI_OPERATIONS if path.endswith("/" + op)), "")

        if method == "POST" and operation == "chat/completions":
            return await self._chat(request, parsed, model, arrival)
        if method == "POST" and operation == "embeddings":
            return _embeddings(parsed, model, arrival.seq)
        if method == "GET" and operation == "models":
            return _json_response(
                {
                    "object": "list",
                    "data": [
                        {"id": FAKE_MODEL_ID, "object": "model", "created": 0, "owned_by": "fake"}
                    ],
                },
                arrival.seq,
            )
        return _openai_error_response(404, arrival.seq, f"Invalid URL ({method} {path})")

    async def _chat(
        self, request: web.Request, parsed: Any, model: str | None, arrival: Arrival
    ) -> web.StreamResponse:
        if not isinstance(parsed, dict):
            return _unparsable_body(arrival.seq)
        if model is None:
            model = parsed.get("model")
            if not isinstance(model, str) or not model:
                return _openai_error_response(
                    400, arrival.seq, "You must provide a model parameter."
                )
        messages = parsed.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_error_response(
                400,
                arrival.seq,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        too_long = _long_tool_call_id(messages)
        if too_long is not None:
            param, length = too_long
            return _openai_error_response(
                400,
                arrival.seq,
                f"Invalid '{param}': string too long. Expected a string with maximum length "
                f"{MAX_TOOL_CALL_ID_CHARS}, but got a string with length {length} instead.",
                param=param,
                code="string_above_max_length",
            )

        behaviour = arrival.behaviour
        pieces: list[str] | None = None
        if behaviour.stream_chunks is not None:
            pieces = list(behaviour.stream_chunks)
            reply = "".join(pieces)
        elif behaviour.reply is not None:
            reply = behaviour.reply
        else:
            reply = "echo: " + last_user_text(messages)
        prompt_tokens = count_tokens(" ".join(_message_text(m) for m in messages))
        completion_tokens = count_tokens(reply)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-fake-{arrival.seq}"
        created = int(time.time())

        if parsed.get("stream") is not True:
            return _json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                },
                arrival.seq,
            )

        if pieces is None:
            pieces = split_reply(reply, behaviour.stream_chunk_count)
        options = parsed.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            event: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                event["usage"] = None
            return event

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": piece}, None) for piece in pieces]
        events.append(chunk({}, "stop"))
        if include_usage:
            events.append({**chunk({}, None), "choices": [], "usage": usage})
        gate_after = 1 if pieces else 0
        return await self._stream(request, arrival, events, gate_after)

    async def _stream(
        self,
        request: web.Request,
        arrival: Arrival,
        events: list[dict[str, Any]],
        gate_after: int,
    ) -> web.StreamResponse:
        frames = [b"data: " + orjson.dumps(event) + b"\n\n" for event in events]
        frames.append(b"data: [DONE]\n\n")
        return await self.stream_frames(request, arrival, frames, SSE_CONTENT_TYPE, gate_after)

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
        then ends the response cleanly (a stream cut mid-event). The last frame is
        the terminator: `stream_finished` is counted just before it is written.
        """
        behaviour = arrival.behaviour
        closing = request.app[_CLOSING]
        resp = web.StreamResponse(
            headers={"Content-Type": content_type, "x-request-id": _request_id(arrival.seq)}
        )
        await resp.prepare(request)
        with self._cond:
            self._stream_started += 1
        cut = behaviour.stream_truncate_after
        try:
            for index, frame in enumerate(frames):
                if index and not await _pause(closing, behaviour.chunk_interval_s):
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
            await resp.write_eof()
        except ConnectionError:
            return self._abort(resp)
        return resp

    def _abort(self, resp: web.StreamResponse) -> web.StreamResponse:
        with self._cond:
            self._stream_aborted += 1
        return resp


class WireFormat(Protocol):
    """A provider wire format the fake speaks besides OpenAI's (one module each)."""

    def matches(self, path: str) -> bool:
        """True when `path` belongs to this wire format."""
        ...

    async def handle(
        self, fake: FakeProvider, request: web.Request, parsed: Any, arrival: Arrival
    ) -> web.StreamResponse:
        """Answer a request of this wire format (recording is already done)."""
        ...

    def error_response(self, arrival: Arrival) -> web.Response:
        """The injected error (`behaviour.status`, `error_body`, `error_headers`) in this format."""
        ...


def wire_for(path: str) -> WireFormat | None:
    """The non-OpenAI wire format serving `path`, if any."""
    from extproc.dev.fakes import anthropic_server, bedrock_server, gemini_server

    wires: tuple[WireFormat, ...] = (
        anthropic_server.WIRE,
        gemini_server.WIRE,
        bedrock_server.WIRE,
    )
    for wire in wires:
        if wire.matches(path):
            return wire
    return None


def create_app(provider: FakeProvider) -> web.Application:
    """aiohttp application serving `provider` on every method and path."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)

    async def on_startup(app: web.Application) -> None:
        app[_CLOSING] = asyncio.Event()

    async def on_shutdown(app: web.Application) -> None:
        app[_CLOSING].set()  # ends delays and gate waits so shutdown is prompt

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_route("*", "/{tail:.*}", provider.handle)
    return app


# -- wire helpers ----------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """Deterministic stand-in for a tokenizer: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


# OpenAI refuses longer tool call ids in a conversation's history (code string_above_max_length).
MAX_TOOL_CALL_ID_CHARS = 40


def _long_tool_call_id(messages: Sequence[Any]) -> tuple[str, int] | None:
    """(param, length) of the first tool call id in `messages` longer than OpenAI allows."""
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for number, call in enumerate(calls if isinstance(calls, list) else ()):
            call_id = call.get("id") if isinstance(call, dict) else None
            if isinstance(call_id, str) and len(call_id) > MAX_TOOL_CALL_ID_CHARS:
                return f"messages[{index}].tool_calls[{number}].id", len(call_id)
    return None


def last_user_text(messages: Sequence[Any]) -> str:
    """Text of the last `user` message; list content has its text parts concatenated."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _message_text(message)
    return ""


def split_reply(reply: str, count: int | None = None) -> list[str]:
    """Stream pieces whose concatenation is `reply`: words with their leading whitespace,
    or `count` near-equal slices when `count` is given."""
    if count is None:
        return _PIECE_RE.findall(reply)
    size = len(reply)
    return [reply[i * size // count : (i + 1) * size // count] for i in range(count)]


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


def openai_error(
    status: int,
    message: str | None = None,
    *,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """OpenAI-style error body; type and code default to what OpenAI sends for `status`."""
    default_type, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    if message is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        message = f"The fake provider injected HTTP {status} ({phrase})."
    return _error_json(message, error_type or default_type, param, code or default_code)


def _error_json(message: str, error_type: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def _embeddings(parsed: Any, model: str | None, seq: int) -> web.Response:
    if not isinstance(parsed, dict):
        return _unparsable_body(seq)
    if model is None:
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            return _openai_error_response(400, seq, "You must provide a model parameter.")
    items = _embedding_items(parsed.get("input"))
    if items is None:
        return _openai_error_response(
            400, seq, "Invalid 'input': expected a string or array.", param="input"
        )
    dimensions = parsed.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
    ):
        return _openai_error_response(400, seq, "Invalid 'dimensions'.", param="dimensions")
    encoding = parsed.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return _openai_error_response(
            400, seq, "Invalid 'encoding_format'.", param="encoding_format"
        )

    data: list[dict[str, Any]] = []
    tokens = 0
    for index, item in enumerate(items):
        vector = embedding_vector(item, dimensions)
        embedding: list[float] | str = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens += count_tokens(item) if isinstance(item, str) else max(1, len(item))
    return _json_response(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        seq,
    )


def _embedding_items(value: Any) -> list[str | list[int]] | None:
    def is_token(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(is_token(x) for x in value):
        return [value]
    items: list[str | list[int]] = []
    for x in value:
        if isinstance(x, str) or (isinstance(x, list) and x and all(is_token(t) for t in x)):
            items.append(x)
        else:
            return None
    return items


def _azure_route(path: str) -> tuple[str, str] | None:
    if not path.startswith(_AZURE_PREFIX):
        return None
    deployment, _, operation = path[len(_AZURE_PREFIX) :].partition("/")
    return deployment, operation


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def _pause(closing: asyncio.Event, seconds: float) -> bool:
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
        await asyncio.sleep(_GATE_POLL_S)
    return True


def _request_id(seq: int) -> str:
    return f"req_fake_{seq}"


def _json_bytes_response(body: bytes | None, seq: int, status: int = 200) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        headers={"Content-Type": JSON_CONTENT_TYPE, "x-request-id": _request_id(seq)},
    )


def _json_response(obj: Any, seq: int, status: int = 200) -> web.Response:
    return _json_bytes_response(orjson.dumps(obj), seq, status)


def _openai_error_response(
    status: int,
    seq: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    return _json_bytes_response(_error_json(message, error_type, param, code), seq, status=status)


def _unparsable_body(seq: int) -> web.Response:
    return _openai_error_response(
        400,
        seq,
        "We could not parse the JSON body of your request. The body must be a JSON object.",
    )


def _injected_response(arrival: Arrival) -> web.Response:
    status = arrival.behaviour.status
    assert status is not None
    return injected_error(arrival, openai_error(status), {"x-request-id": _request_id(arrival.seq)})


def injected_error(arrival: Arrival, default_body: bytes, headers: dict[str, str]) -> web.Response:
    """The injected error of any wire format: `error_body` (else `default_body`) with
    `behaviour.status`, JSON content type, `headers` and then `behaviour.error_headers`."""
    behaviour = arrival.behaviour
    status = behaviour.status
    assert status is not None
    merged: CIMultiDict[str] = CIMultiDict({"Content-Type": JSON_CONTENT_TYPE, **headers})
    merged.update(behaviour.error_headers)
    body = behaviour.error_body if behaviour.error_body is not None else default_body
    return web.Response(status=status, body=None if status in (204, 304) else body, headers=merged)


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
