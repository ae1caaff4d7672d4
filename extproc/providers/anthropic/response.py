"""A whole Anthropic message → an OpenAI `chat.completion`, and the vocabulary the stream
translator shares with it (stop reasons, usage counters).

The answer's `model` is the one Anthropic names in the message (the model that answered).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from extproc.providers.anthropic.errors import error_fields, typed_error
from extproc.providers.base import Translated, Usage
from extproc.providers.errors import malformed_response
from extproc.providers.helpers import serialize
from extproc.providers.openai_format import chat_completion, tool_call

# Anthropic `stop_reason` → OpenAI `finish_reason` (unknown or absent values: "stop").
FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Every one of these counts towards OpenAI's prompt_tokens; the last one is the cached part.
_PROMPT_FIELDS: Final = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_CACHED_FIELD: Final = "cache_read_input_tokens"


def finish_reason(stop_reason: str | None) -> str:
    """The OpenAI finish reason for an Anthropic stop reason."""
    return FINISH_REASONS.get(stop_reason or "", "stop")


class UsageCounters:
    """Anthropic's usage counters as they arrive: a stream reports input counts in
    `message_start` and may restate them in `message_delta`, so the latest of each wins."""

    __slots__ = ("_output", "_prompt")

    def __init__(self) -> None:
        self._prompt: dict[str, int] = {}
        self._output: int | None = None

    def apply(self, raw: Any) -> bool:
        """Take an Anthropic `usage` object; False if it is malformed."""
        if not isinstance(raw, dict):
            return False
        for name in _PROMPT_FIELDS:
            value = raw.get(name)
            if value is None:
                continue
            if not _is_count(value):
                return False
            self._prompt[name] = value
        output = raw.get("output_tokens")
        if output is not None:
            if not _is_count(output):
                return False
            self._output = output
        return True

    def usage(self) -> Usage | None:
        """The counts so far (None before any was reported)."""
        if not self._prompt and self._output is None:
            return None
        return Usage.of(
            sum(self._prompt.values()), self._output or 0, self._prompt.get(_CACHED_FIELD)
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def answering_model(message: dict[str, Any], fallback: str) -> str:
    """The model a message says produced it, else `fallback` (the target's model)."""
    model = message.get("model")
    return model if isinstance(model, str) and model else fallback


def translate_message(body: bytes, provider: str, fallback_model: str) -> Translated:
    """The `chat.completion` for a whole Messages API answer; 502 if it is malformed."""
    if not body.strip():
        raise malformed_response(provider, "an empty response body")
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed_response(provider, "a response body that is not JSON") from None
    if not isinstance(message, dict):
        raise malformed_response(provider, "a response body that is not a JSON object")
    if message.get("type") == "error":
        error = error_fields(message)
        if error is not None:
            raise typed_error(error[0], error[1], provider)
    content = message.get("content")
    stop_reason = message.get("stop_reason")
    if not isinstance(content, list):
        raise malformed_response(provider, "a message without a content list")
    if stop_reason is not None and not isinstance(stop_reason, str):
        raise malformed_response(provider, "a message with a malformed stop_reason")
    counters = UsageCounters()
    if not counters.apply(message.get("usage")):
        raise malformed_response(provider, "a message without valid usage")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise malformed_response(provider, "a text block without text")
            texts.append(text)
        elif kind == "tool_use":
            call_id, tool, arguments = block.get("id"), block.get("name"), block.get("input")
            if not (
                isinstance(call_id, str) and isinstance(tool, str) and isinstance(arguments, dict)
            ):
                raise malformed_response(provider, "a tool_use block without id, name or input")
            calls.append(tool_call(call_id, tool, orjson.dumps(arguments).decode()))
        elif not isinstance(kind, str):
            raise malformed_response(provider, "a content block without a type")
        # thinking, redacted_thinking and server-tool blocks are not part of the answer
    text = "".join(texts)
    usage = counters.usage()
    model = answering_model(message, fallback_model)
    completion = chat_completion(
        model, text if text or not calls else None, finish_reason(stop_reason), usage, calls or None
    )
    return Translated(serialize(completion), usage, model)
