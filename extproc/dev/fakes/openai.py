"""Fake OpenAI / Azure OpenAI wire format: chat (JSON and SSE), embeddings, models, errors.

Owns the OpenAI paths and shapes and Azure's deployment routes; it is the fallback wire, so
paths no other wire claims get OpenAI's 404. Recording and pacing stay in `core`.
"""

from __future__ import annotations

import base64
import http
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from extproc.dev.fakes.core import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    JSON_CONTENT_TYPE,
    MAX_EMBEDDING_DIMENSIONS,
    SSE_CONTENT_TYPE,
    Arrival,
    FakeProvider,
    azure_route,
    count_tokens,
    embedding_vector,
    injected_error,
    last_user_text,
    message_text,
    request_id,
    split_reply,
)

FAKE_MODEL_ID: Final = "fake-model"
SYSTEM_FINGERPRINT: Final = "fp_fake"
# OpenAI refuses longer tool call ids in a conversation's history (code string_above_max_length).
MAX_TOOL_CALL_ID_CHARS: Final = 40

_AZURE_OPERATIONS: Final = ("chat/completions", "embeddings")
_OPENAI_OPERATIONS: Final = ("chat/completions", "embeddings", "models")
_AZURE_NOT_FOUND: Final = orjson.dumps({"error": {"code": "404", "message": "Resource not found"}})

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


def shutting_down(arrival: Arrival) -> web.Response:
    """The 503 a request still held by its latency gets when the server shuts down."""
    return _openai_error_response(503, arrival.seq, "The fake provider is shutting down.")


class OpenAIWire:
    """The OpenAI and Azure OpenAI wire format; matches every path (the fallback)."""

    def matches(self, path: str) -> bool:
        """True for every path: unknown ones are answered with OpenAI's 404."""
        return True

    async def handle(
        self, fake: FakeProvider, request: web.Request, arrival: Arrival
    ) -> web.StreamResponse:
        """Route OpenAI and Azure paths to chat, embeddings or models; else a 404."""
        method, path, parsed = request.method, request.path, arrival.parsed
        azure = azure_route(path)
        if azure is not None:
            if "api-version" not in request.query or azure[1] not in _AZURE_OPERATIONS:
                return _json_bytes_response(_AZURE_NOT_FOUND, arrival.seq, status=404)
            model: str | None = azure[0]
            operation = azure[1]
        else:
            model = None
            operation = next((op for op in _OPENAI_OPERATIONS if path.endswith("/" + op)), "")

        if method == "POST" and operation == "chat/completions":
            return await _chat(fake, request, parsed, model, arrival)
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

    def error_response(self, arrival: Arrival) -> web.Response:
        """The injected error: `error_body` verbatim or OpenAI's shape for `status`."""
        status = arrival.behaviour.status
        assert status is not None
        return injected_error(
            arrival, openai_error(status), {"x-request-id": request_id(arrival.seq)}
        )


WIRE = OpenAIWire()


# -- chat ------------------------------------------------------------------------------------


async def _chat(
    fake: FakeProvider, request: web.Request, parsed: Any, model: str | None, arrival: Arrival
) -> web.StreamResponse:
    if not isinstance(parsed, dict):
        return _unparsable_body(arrival.seq)
    if model is None:
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            return _openai_error_response(400, arrival.seq, "You must provide a model parameter.")
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
    prompt_tokens = count_tokens(" ".join(message_text(m) for m in messages))
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
    frames = [b"data: " + orjson.dumps(event) + b"\n\n" for event in events]
    frames.append(b"data: [DONE]\n\n")
    gate_after = 1 if pieces else 0
    return await fake.stream_frames(request, arrival, frames, SSE_CONTENT_TYPE, gate_after)


def _long_tool_call_id(messages: Sequence[Any]) -> tuple[str, int] | None:
    """(param, length) of the first tool call id in `messages` longer than OpenAI allows."""
    for index, message in enumerate(messages):
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for number, call in enumerate(calls if isinstance(calls, list) else ()):
            call_id = call.get("id") if isinstance(call, dict) else None
            if isinstance(call_id, str) and len(call_id) > MAX_TOOL_CALL_ID_CHARS:
                return f"messages[{index}].tool_calls[{number}].id", len(call_id)
    return None


# -- embeddings ------------------------------------------------------------------------------


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


# -- responses -------------------------------------------------------------------------------


def _error_json(message: str, error_type: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def _json_bytes_response(body: bytes | None, seq: int, status: int = 200) -> web.Response:
    return web.Response(
        body=body,
        status=status,
        headers={"Content-Type": JSON_CONTENT_TYPE, "x-request-id": request_id(seq)},
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
