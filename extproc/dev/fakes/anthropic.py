"""Fake Anthropic Messages API: `POST .../messages`, buffered and SSE, with injected errors.

Owns the Anthropic wire format of the fake provider (request checks, the Message
object, the `message_start … message_stop` event stream, Anthropic-shaped errors).
Recording, behaviour and stream pacing stay in `core`.
"""

from __future__ import annotations

import http
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from extproc.dev.fakes.core import (
    JSON_CONTENT_TYPE,
    SSE_CONTENT_TYPE,
    Arrival,
    FakeProvider,
    content_text,
    count_tokens,
    injected_error,
    last_user_text,
    reply_text,
    request_id,
    split_reply,
)

# The error type Anthropic documents for each HTTP status.
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
OVERLOADED_EVENT: Final = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}


def anthropic_error(
    status: int, message: str | None = None, error_type: str | None = None
) -> bytes:
    """Anthropic error body `{"type": "error", "error": {"type", "message"}}` for `status`."""
    if error_type is None:
        error_type = ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
    if message is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Overloaded" if status == 529 else "Error"
        message = f"The fake provider injected HTTP {status} ({phrase})."
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def sse_frame(event: str, payload: Mapping[str, Any]) -> bytes:
    """One Anthropic server-sent event: `event: NAME` and a JSON `data` line."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AnthropicWire:
    """The Messages API wire format of the fake (paths ending in `/messages`).

    Replies "echo: " + the last user turn's text, or `reply` / `stream_chunks`;
    `tool_calls` become `tool_use` blocks with ids `toolu_fake_0`, `toolu_fake_1`, ...
    (with no text block unless `reply` or `stream_chunks` is set) and stop reason
    `tool_use`; `stop_reason` overrides the stop reason verbatim.
    """

    def matches(self, path: str) -> bool:
        """True for the Messages endpoint (`/v1/messages`, or under any prefix)."""
        return path.endswith("/messages")

    async def handle(
        self, fake: FakeProvider, request: web.Request, arrival: Arrival
    ) -> web.StreamResponse:
        """Check the request like Anthropic does, then answer it (JSON or SSE)."""
        seq, parsed = arrival.seq, arrival.parsed
        if request.method != "POST":
            return _error(404, seq, f"Not found: {request.method} {request.path}")
        if not request.headers.get("x-api-key"):
            return _error(401, seq, "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return _error(400, seq, "anthropic-version: header is required")
        problem = _check_body(parsed)
        if problem is not None:
            return _error(400, seq, problem)

        behaviour = arrival.behaviour
        messages = parsed["messages"]
        pieces = None if behaviour.stream_chunks is None else list(behaviour.stream_chunks)
        reply = reply_text(behaviour, last_user_text(messages))
        tools = [
            {
                "type": "tool_use",
                "id": f"toolu_fake_{index}",
                "name": str(call["name"]),
                "input": dict(call.get("arguments") or {}),
            }
            for index, call in enumerate(behaviour.tool_calls or ())
        ]
        stop_reason = behaviour.stop_reason or ("tool_use" if tools else "end_turn")
        prompt_text = " ".join(
            [content_text(parsed.get("system"), " ")]
            + [content_text(m.get("content"), " ") for m in messages]
        )
        input_tokens = count_tokens(prompt_text)
        output_tokens = count_tokens(
            " ".join([reply] + [orjson.dumps(t["input"]).decode() for t in tools])
        )
        model = parsed["model"]
        message_id = f"msg_fake_{seq}"

        if parsed.get("stream") is not True:
            content: list[dict[str, Any]] = [{"type": "text", "text": reply}] if reply else []
            return _json(
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content + tools,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                },
                seq,
            )

        if pieces is None:
            pieces = split_reply(reply, behaviour.stream_chunk_count)
        frames = [
            sse_frame(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                    },
                },
            )
        ]
        ping = sse_frame("ping", {"type": "ping"})
        gate_after = 0
        index = 0
        if pieces:
            frames.append(_block_start(index, {"type": "text", "text": ""}))
            frames.append(ping)
            gate_after = len(frames)  # the first text delta
            frames += [_block_delta(index, {"type": "text_delta", "text": p}) for p in pieces]
            frames.append(_block_stop(index))
            index += 1
        else:
            frames.append(ping)
        for tool in tools:
            frames.append(_block_start(index, {**tool, "input": {}}))
            arguments = orjson.dumps(tool["input"]).decode()
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                if part:
                    frames.append(
                        _block_delta(index, {"type": "input_json_delta", "partial_json": part})
                    )
            frames.append(_block_stop(index))
            index += 1
        frames.append(
            sse_frame(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
        )
        frames.append(sse_frame("message_stop", {"type": "message_stop"}))
        cut = behaviour.stream_error_after
        if cut is not None and cut < len(frames):
            frames = [*frames[:cut], sse_frame("error", OVERLOADED_EVENT)]
        return await fake.stream_frames(request, arrival, frames, SSE_CONTENT_TYPE, gate_after)

    def error_response(self, arrival: Arrival) -> web.Response:
        """The injected error: `error_body` verbatim or Anthropic's shape for `status`."""
        status = arrival.behaviour.status
        assert status is not None
        return injected_error(
            arrival, anthropic_error(status), {"request-id": request_id(arrival.seq)}
        )


def _check_body(parsed: Any) -> str | None:
    """The message Anthropic would give for a malformed Messages body, else None."""
    if not isinstance(parsed, dict):
        return "Request body must be a JSON object."
    for name in ("model", "max_tokens", "messages"):
        if name not in parsed:
            return f"{name}: Field required"
    if not isinstance(parsed["model"], str) or not parsed["model"]:
        return "model: Input should be a valid string"
    max_tokens = parsed["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a positive integer"
    messages = parsed["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if not all(isinstance(m, dict) and m.get("role") in ("user", "assistant") for m in messages):
        return "messages: each message needs a role of 'user' or 'assistant'"
    stream = parsed.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "stream: Input should be a valid boolean"
    return None


def _block_start(index: int, block: Mapping[str, Any]) -> bytes:
    payload = {"type": "content_block_start", "index": index, "content_block": block}
    return sse_frame("content_block_start", payload)


def _block_delta(index: int, delta: Mapping[str, Any]) -> bytes:
    payload = {"type": "content_block_delta", "index": index, "delta": delta}
    return sse_frame("content_block_delta", payload)


def _block_stop(index: int) -> bytes:
    return sse_frame("content_block_stop", {"type": "content_block_stop", "index": index})


def _json(obj: Any, seq: int, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj),
        status=status,
        headers={"Content-Type": JSON_CONTENT_TYPE, "request-id": request_id(seq)},
    )


def _error(status: int, seq: int, message: str) -> web.Response:
    return web.Response(
        body=anthropic_error(status, message),
        status=status,
        headers={"Content-Type": JSON_CONTENT_TYPE, "request-id": request_id(seq)},
    )


WIRE = AnthropicWire()
