"""Fake Gemini API wire format: generateContent, streamGenerateContent (SSE), embeddings.

Serves `/models/{model}:{method}` under any prefix (e.g. `/v1beta`), checks the
`x-goog-api-key` header, echoes the last user turn, and reports errors in Google's shape
(`{"error": {"code", "message", "status", "details"}}`), driven by the shared `Behaviour`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from aiohttp import web
from multidict import CIMultiDict

from extproc.dev.fakes.core import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_DIMENSIONS,
    Arrival,
    Behaviour,
    FakeProvider,
    count_tokens,
    embedding_vector,
    injected_error,
    reply_text,
    split_reply,
)

JSON_CONTENT_TYPE: Final = "application/json; charset=UTF-8"
SSE_CONTENT_TYPE: Final = "text/event-stream"
# RetryInfo.retryDelay of an injected 429 when no Retry-After header is configured.
DEFAULT_RETRY_DELAY_S: Final = 3

_PATH_RE: Final = re.compile(
    r"/models/([^/]+):(generateContent|streamGenerateContent|embedContent|batchEmbedContents)$"
)
_RETRY_INFO: Final = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO: Final = "type.googleapis.com/google.rpc.ErrorInfo"

# HTTP status → (google.rpc status name, default message), as the Gemini API reports them.
_ERRORS: Final[Mapping[int, tuple[str, str]]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
    ),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report the problem."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


def google_error(
    status: int, message: str | None = None, details: Sequence[Mapping[str, Any]] = ()
) -> bytes:
    """A Google-shaped error body for `status`; name and message default to Gemini's."""
    name, default = _ERRORS.get(status, ("UNKNOWN", "Unknown error."))
    error: dict[str, Any] = {"code": status, "message": message or default, "status": name}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def retry_info(seconds: int | str) -> dict[str, str]:
    """A google.rpc.RetryInfo detail (`retryDelay` like "12s")."""
    return {"@type": _RETRY_INFO, "retryDelay": f"{seconds}s"}


def stream_frame(payload: Any) -> bytes:
    """One `alt=sse` event: `data: {json}` and a blank line, CRLF-terminated like Google's."""
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


class GeminiWire:
    """The Gemini wire format of the fake provider (see `WireFormat`)."""

    def matches(self, path: str) -> bool:
        """True for `.../models/{model}:{generateContent|streamGenerateContent|...}`."""
        return _PATH_RE.search(path) is not None

    async def handle(
        self, fake: FakeProvider, request: web.Request, arrival: Arrival
    ) -> web.StreamResponse:
        """Check the key and the body, then answer the method named in the path."""
        parsed = arrival.parsed
        match = _PATH_RE.search(request.path)
        assert match is not None  # matches() said so
        model, method = match.group(1), match.group(2)
        if request.method != "POST":
            return _error(404, f"Method not found: {request.method} {request.path}")
        key = request.headers.get("x-goog-api-key", request.query.get("key"))
        if key is None:
            return _error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity.",
            )
        if not key.strip():
            return _error(
                400,
                "API key not valid. Please pass a valid API key.",
                [{"@type": _ERROR_INFO, "reason": "API_KEY_INVALID"}],
            )
        if not isinstance(parsed, dict):
            return _error(400, "Invalid JSON payload received. Expected an object.")
        if method == "embedContent":
            return _embed_content(parsed)
        if method == "batchEmbedContents":
            return _batch_embed_contents(parsed, model)
        contents = parsed.get("contents")
        if not isinstance(contents, list) or not contents:
            return _error(400, "* GenerateContentRequest.contents: contents is not specified")
        if arrival.behaviour.thought_signatures:
            missing = _unsigned_call(contents)
            if missing is not None:
                return _error(
                    400,
                    f"Function call is missing a thought_signature in functionCall parts "
                    f"(contents[{missing}]). This is required for tools to work correctly.",
                )
        if method == "generateContent":
            return _generate(parsed, contents, model, arrival)
        return await _stream(fake, request, parsed, contents, model, arrival)

    def error_response(self, arrival: Arrival) -> web.Response:
        """The injected `behaviour.status` as Google reports it (or `error_body` verbatim)."""
        behaviour = arrival.behaviour
        status = behaviour.status
        assert status is not None
        if status == 429:
            configured: CIMultiDict[str] = CIMultiDict(behaviour.error_headers)
            delay = configured.get("retry-after", str(DEFAULT_RETRY_DELAY_S))
            body = google_error(429, details=[retry_info(delay)])
        else:
            body = google_error(status)
        return injected_error(arrival, body, {"Content-Type": JSON_CONTENT_TYPE})


WIRE = GeminiWire()


# -- generateContent -------------------------------------------------------------------------


def _generate(
    parsed: dict[str, Any], contents: list[Any], model: str, arrival: Arrival
) -> web.Response:
    behaviour = arrival.behaviour
    reply = _reply(behaviour, contents)
    count = _candidate_count(parsed)
    parts: list[dict[str, Any]] = []
    if reply or not behaviour.tool_calls:
        parts.append({"text": reply})
    parts += _function_calls(behaviour)
    candidates = [
        {
            "content": {"role": "model", "parts": parts},
            "finishReason": behaviour.stop_reason or "STOP",
            "index": index,
        }
        for index in range(count)
    ]
    return _json(
        {
            "candidates": candidates,
            "usageMetadata": _usage(parsed, reply, count),
            "modelVersion": model,
            "responseId": f"fake-{arrival.seq}",
        }
    )


async def _stream(
    fake: FakeProvider,
    request: web.Request,
    parsed: dict[str, Any],
    contents: list[Any],
    model: str,
    arrival: Arrival,
) -> web.StreamResponse:
    behaviour = arrival.behaviour
    if behaviour.stream_chunks is not None:
        pieces = list(behaviour.stream_chunks)
        reply = "".join(pieces)
    else:
        reply = _reply(behaviour, contents)
        pieces = split_reply(reply, behaviour.stream_chunk_count)
    # One event per piece, the function calls in one event, then a closing event with an
    # empty text part, the finishReason and the usageMetadata (as Gemini 2.x streams end).
    events: list[list[dict[str, Any]]] = [[{"text": piece}] for piece in pieces]
    calls = _function_calls(behaviour)
    if calls:
        events.append(calls)
    frames = [stream_frame(_stream_event(parts, model, arrival, None, None)) for parts in events]
    usage = _usage(parsed, reply, 1)
    finish = behaviour.stop_reason or "STOP"
    frames.append(stream_frame(_stream_event([{"text": ""}], model, arrival, finish, usage)))
    cut = behaviour.stream_error_after
    if cut is not None and cut < len(frames):
        error = behaviour.error_body or google_error(503)
        frames = [*frames[:cut], b"data: " + error + b"\r\n\r\n"]
    return await fake.stream_frames(request, arrival, frames, SSE_CONTENT_TYPE, gate_after=0)


def _stream_event(
    parts: list[dict[str, Any]],
    model: str,
    arrival: Arrival,
    finish: str | None,
    usage: dict[str, int] | None,
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    event: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None:
        event["usageMetadata"] = usage
    event["modelVersion"] = model
    event["responseId"] = f"fake-{arrival.seq}"
    return event


def _reply(behaviour: Behaviour, contents: list[Any]) -> str:
    return reply_text(behaviour, _last_user_text(contents))


def _function_calls(behaviour: Behaviour) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"functionCall": {"name": call["name"], "args": dict(call.get("arguments") or {})}}
        for call in behaviour.tool_calls or ()
    ]
    if parts and behaviour.thought_signatures:
        # Like Gemini 3: only the first call of parallel calls carries the signature.
        parts[0]["thoughtSignature"] = thought_signature(parts[0]["functionCall"]["name"])
    return parts


def thought_signature(name: str) -> str:
    """The signature the fake issues for a call of `name`: standard base64 with `+`, `/` and
    padding in it, opaque to clients like a real one."""
    return base64.b64encode(b"\xfb\xef\xff" + f"fake-thought:{name}".encode()).decode()


def _unsigned_call(contents: list[Any]) -> int | None:
    """Index of the first model turn in the current turn (after the last user text) whose first
    function call lacks the signature the fake issued for it; None when all are signed."""
    start = 0
    for index, content in enumerate(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user" and _text(content):
            start = index
    for index in range(start, len(contents)):
        content = contents[index]
        if not isinstance(content, dict) or content.get("role") != "model":
            continue
        parts = content.get("parts")
        if not isinstance(parts, list):
            continue
        calls = [
            p for p in parts if isinstance(p, dict) and isinstance(p.get("functionCall"), dict)
        ]
        if calls and calls[0].get("thoughtSignature") != thought_signature(
            str(calls[0]["functionCall"].get("name"))
        ):
            return index
    return None


def _candidate_count(parsed: dict[str, Any]) -> int:
    config = parsed.get("generationConfig")
    count = config.get("candidateCount", 1) if isinstance(config, dict) else 1
    return count if isinstance(count, int) and 1 <= count <= 8 else 1


def _last_user_text(contents: list[Any]) -> str:
    for content in reversed(contents):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            return _text(content)
    return ""


def _text(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        return ""
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def _usage(parsed: dict[str, Any], reply: str, count: int) -> dict[str, int]:
    texts = [_text(parsed.get("systemInstruction"))]
    texts += [_text(content) for content in parsed.get("contents", [])]
    prompt = count_tokens(" ".join(texts))
    completion = count_tokens(reply) * count
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion,
    }


# -- embeddings ------------------------------------------------------------------------------


def _embed_content(parsed: dict[str, Any]) -> web.Response:
    vector = _embedding(parsed)
    if isinstance(vector, web.Response):
        return vector
    return _json({"embedding": {"values": vector}})


def _batch_embed_contents(parsed: dict[str, Any], model: str) -> web.Response:
    requests = parsed.get("requests")
    if not isinstance(requests, list) or not requests:
        return _error(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    vectors: list[list[float]] = []
    for index, item in enumerate(requests):
        if not isinstance(item, dict) or item.get("model") != f"models/{model}":
            return _error(
                400,
                f"* BatchEmbedContentsRequest.requests[{index}].model: must be models/{model}",
            )
        vector = _embedding(item)
        if isinstance(vector, web.Response):
            return vector
        vectors.append(vector)
    return _json({"embeddings": [{"values": vector} for vector in vectors]})


def _embedding(request: dict[str, Any]) -> list[float] | web.Response:
    content = request.get("content")
    text = _text(content)
    if not isinstance(content, dict) or not text:
        return _error(400, "* EmbedContentRequest.content: contains an empty Part.")
    dimensions = request.get("outputDimensionality", DEFAULT_EMBEDDING_DIMENSIONS)
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
    ):
        return _error(400, "* EmbedContentRequest.output_dimensionality: invalid value")
    return embedding_vector(text, dimensions)


# -- responses -------------------------------------------------------------------------------


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), headers={"Content-Type": JSON_CONTENT_TYPE}
    )


def _error(status: int, message: str, details: Sequence[Mapping[str, Any]] = ()) -> web.Response:
    return web.Response(
        status=status,
        body=google_error(status, message, details),
        headers={"Content-Type": JSON_CONTENT_TYPE},
    )
