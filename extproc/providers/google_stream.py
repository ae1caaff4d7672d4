"""Gemini answers → OpenAI: candidates, finish reasons, usage, errors and the SSE stream.

`GeminiStreamTranslator` turns `streamGenerateContent?alt=sse` bytes (each event one whole
GenerateContentResponse, no terminal event) into `chat.completion.chunk` events; the readers
are shared with the buffered path in `google.py`. Nothing here builds provider requests.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.errors import GatewayError
from extproc.providers.base import Usage, call_id_with_signature
from extproc.providers.errors import malformed_response, provider_error
from extproc.providers.openai_format import ChatStreamWriter
from extproc.streaming.sse import SSEParseError, SSEParser

PROVIDER_TYPE = "google"

# Candidate.finishReason → OpenAI finish_reason. Everything not listed (OTHER, LANGUAGE,
# MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, FINISH_REASON_UNSPECIFIED, new values) is
# "stop": the model stopped without a filter or a length limit being the cause. A candidate
# that carries function calls finishes with "tool_calls" whatever its finishReason.
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# google.rpc.Code names (the `status` of a Google error) → the HTTP status they stand for.
_RPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    # Gemini's FAILED_PRECONDITION is about the caller's account ("User location is not
    # supported", billing): the deployment's problem, not the request's, so fail over.
    "FAILED_PRECONDITION": 502,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class MalformedGeminiError(ValueError):
    """Provider output of the wrong shape; the message says what was wrong."""


@dataclass(slots=True)
class Candidate:
    """What the gateway uses from one Gemini candidate."""

    text: str = ""
    # (OpenAI tool call id, name, args); the id carries the call's thought signature, if any
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    finish_reason: str | None = None  # the raw finishReason, if any


def openai_finish_reason(raw: str | None, has_tool_calls: bool) -> str:
    """OpenAI finish_reason for a Gemini finishReason (see the table above)."""
    if has_tool_calls:
        return "tool_calls"
    return _FINISH_REASONS.get(raw or "", "stop")


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id (Gemini's function calls carry none we can rely on)."""
    return "call_" + uuid.uuid4().hex[:24]


def read_candidate(candidate: Any) -> Candidate:
    """Text (thought summaries skipped), function calls and finishReason of one candidate."""
    if not isinstance(candidate, dict):
        raise MalformedGeminiError("a candidate that is not an object")
    out = Candidate()
    finish = candidate.get("finishReason")
    if finish is not None and not isinstance(finish, str):
        raise MalformedGeminiError("a finishReason that is not a string")
    out.finish_reason = finish
    content = candidate.get("content")
    if content is None:
        return out  # e.g. a candidate stopped by SAFETY before producing anything
    if not isinstance(content, dict):
        raise MalformedGeminiError("candidate content that is not an object")
    parts = content.get("parts")
    if parts is None:
        return out
    if not isinstance(parts, list):
        raise MalformedGeminiError("content parts that are not a list")
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            raise MalformedGeminiError("a content part that is not an object")
        if "functionCall" in part:
            name, args = _function_call(part["functionCall"])
            signature = part.get("thoughtSignature")
            if signature is not None and not isinstance(signature, str):
                raise MalformedGeminiError("a thoughtSignature that is not a string")
            out.calls.append((call_id_with_signature(new_call_id(), signature), name, args))
        elif "text" in part:
            text = part["text"]
            if not isinstance(text, str):
                raise MalformedGeminiError("a text part that is not a string")
            if part.get("thought") is not True:
                texts.append(text)
        # Other parts (inline images, executable code, ...) have no OpenAI chat equivalent.
    out.text = "".join(texts)
    return out


def _function_call(call: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(call, dict):
        raise MalformedGeminiError("a functionCall that is not an object")
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedGeminiError("a functionCall without a name")
    args = call.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise MalformedGeminiError("functionCall args that are not an object")
    return name, args


def read_usage(response: dict[str, Any], usage: Usage) -> None:
    """Update `usage` from a response's usageMetadata (absent counts are proto3 zeros)."""
    meta = response.get("usageMetadata")
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise MalformedGeminiError("usageMetadata that is not an object")
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    completion = _count(meta, "candidatesTokenCount") + _count(meta, "thoughtsTokenCount")
    usage.prompt_tokens = prompt
    usage.completion_tokens = completion


def _count(meta: dict[str, Any], name: str) -> int:
    value = meta.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedGeminiError(f"a usageMetadata.{name} that is not a count")
    return value


def prompt_blocked(response: dict[str, Any]) -> bool:
    """True when promptFeedback says the prompt itself was blocked."""
    feedback = response.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def gemini_error(
    status: int, headers: dict[str, str], message: str, error: dict[str, Any], provider: str
) -> GatewayError:
    """Map a Google error (`{"error": {code, message, status, details}}`) to a GatewayError.

    The rpc `status` name wins over the HTTP status (a mid-stream error arrives under a 200);
    "API key not valid" (a 400 INVALID_ARGUMENT) is an authentication failure; a
    RetryInfo.retryDelay in the details stands in for a missing Retry-After header.
    """
    rpc = error.get("status")
    code = error.get("code")
    effective = _RPC_STATUS.get(rpc) if isinstance(rpc, str) else None
    if effective is None:
        if status >= 300:
            effective = status
        elif isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            effective = code
        else:
            effective = 502
    details = error.get("details")
    details = details if isinstance(details, list) else []
    if "API key not valid" in message or any(
        isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
    ):
        effective = 401
    if "retry-after" not in headers:
        delay = _retry_delay(details)
        if delay is not None:
            headers = {**headers, "retry-after": delay}
    return provider_error(effective, message, provider, headers=headers)


def _retry_delay(details: list[Any]) -> str | None:
    """Whole seconds (rounded up, at least 1) of a RetryInfo detail's `retryDelay` ("12s")."""
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    seconds = float(delay[:-1])
                except ValueError:
                    return None
                if math.isfinite(seconds) and seconds >= 0:
                    return str(max(1, math.ceil(seconds)))
    return None


def error_payload(data: Any) -> dict[str, Any] | None:
    """The `error` object of a Google error payload (bare or wrapped in a list), else None."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict) or "error" not in data:
        return None
    error = data["error"]
    return error if isinstance(error, dict) else {"message": str(error)}


def payload_error(error: dict[str, Any], provider: str) -> GatewayError:
    """The GatewayError for an error payload that arrived inside a 2xx answer."""
    message = error.get("message")
    text = message if isinstance(message, str) and message else "no message"
    return gemini_error(200, {}, text, error, provider)


class GeminiStreamTranslator:
    """Translates one `alt=sse` stream, chunk by chunk; never raises.

    Each complete event is translated as soon as it is complete. Gemini has no terminal
    event, so the finishing chunk (with the last usageMetadata) is written at
    `end_of_stream`, and only if a finishReason (or a blocked prompt) was seen.
    """

    __slots__ = ("_finish", "_parser", "_provider", "_tool_calls", "_usage", "_writer")

    def __init__(self, model: str, include_usage: bool, provider: str, usage: Usage) -> None:
        self._writer = ChatStreamWriter(model, include_usage)
        self._parser = SSEParser()
        self._provider = provider
        self._usage = usage
        self._finish: str | None = None
        self._tool_calls = 0

    @property
    def done(self) -> bool:
        """True once the translated stream has ended ([DONE] written)."""
        return self._writer.done

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """Translate the next provider bytes; returns the OpenAI SSE bytes to send now."""
        if self._writer.done:
            return b""
        try:
            return self._feed(chunk, end_of_stream)
        except Exception:  # last line of defence: a stream must end cleanly, never crash
            return self._malformed("a stream event the gateway could not translate")

    def _feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        writer = self._writer
        out = bytearray()
        try:
            events = self._parser.feed(chunk) if chunk else []
        except SSEParseError as exc:
            return self._malformed(f"an invalid event stream ({exc})")
        for event in events:
            out += self._event(event.data)
            if writer.done:
                return bytes(out)
        if end_of_stream:
            if self._parser.pending:
                out += self._malformed("a stream that ended mid-event")
            elif self._finish is None:
                out += self._malformed("a stream that ended without a finish reason")
            else:
                reason = "tool_calls" if self._tool_calls else self._finish
                out += writer.finish(reason, self._usage)
        return bytes(out)

    def _event(self, data: str) -> bytes:
        if not data.strip():
            return b""
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._malformed("a stream event that is not JSON")
        error = error_payload(payload)
        if error is not None:
            return self._writer.fail(payload_error(error, self._provider))
        if not isinstance(payload, dict):
            return self._malformed("a stream event that is not an object")
        try:
            read_usage(payload, self._usage)
            candidates = payload.get("candidates")
            if candidates is not None and not isinstance(candidates, list):
                raise MalformedGeminiError("candidates that are not a list")
            if not candidates:
                if prompt_blocked(payload):
                    self._finish = "content_filter"
                return b""
            # n > 1 is refused for streams, so only the first candidate is translated.
            candidate = read_candidate(candidates[0])
        except MalformedGeminiError as exc:
            return self._malformed(str(exc))
        writer = self._writer
        out = writer.text(candidate.text)
        for call_id, name, args in candidate.calls:
            index = self._tool_calls
            self._tool_calls += 1
            out += writer.tool_call_start(index, call_id, name)
            out += writer.tool_call_arguments(index, orjson.dumps(args).decode())
        if candidate.finish_reason is not None:
            self._finish = openai_finish_reason(candidate.finish_reason, False)
        return out

    def _malformed(self, what: str) -> bytes:
        return self._writer.fail(malformed_response(self._provider, what))
