"""Anthropic Messages SSE stream → OpenAI `chat.completion.chunk` stream, chunk by chunk.

Owns the stream translator and the response vocabulary it shares with the buffered
path in `anthropic.py` (stop reasons, usage); error mapping is passed in by the adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from extproc.errors import GatewayError
from extproc.providers.base import Usage
from extproc.providers.errors import malformed_response
from extproc.providers.openai_format import ChatStreamWriter
from extproc.streaming.sse import SSEEvent, SSEParseError, SSEParser

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
# Every one of these counts towards OpenAI's prompt_tokens.
_PROMPT_FIELDS: Final = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# Content-block slots: a tool call's OpenAI index (>= 0), or one of these.
_TEXT: Final = -1
_SKIPPED: Final = -2  # thinking, redacted_thinking, server-tool blocks: not part of the answer

ErrorMapper = Callable[[str, str], GatewayError]


def finish_reason(stop_reason: str | None) -> str:
    """The OpenAI finish reason for an Anthropic stop reason."""
    return FINISH_REASONS.get(stop_reason or "", "stop")


def apply_usage(usage: Usage, raw: Any, prompt_parts: dict[str, int]) -> bool:
    """Update `usage` from an Anthropic `usage` object; False if it is malformed.

    `prompt_parts` keeps the latest value of each input counter (a stream reports
    them in `message_start` and may restate them in `message_delta`).
    """
    if not isinstance(raw, dict):
        return False
    for name in _PROMPT_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if not _is_count(value):
            return False
        prompt_parts[name] = value
    if prompt_parts:
        usage.prompt_tokens = sum(prompt_parts.values())
    output = raw.get("output_tokens")
    if output is not None:
        if not _is_count(output):
            return False
        usage.completion_tokens = output
    return True


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class AnthropicStreamTranslator:
    """Translates one Anthropic event stream; `feed` never raises.

    Events are translated as soon as they are complete. A provider `error` event,
    malformed data or a stream that ends before `message_stop` produce an error
    event and `[DONE]`; anything after that is ignored.
    """

    __slots__ = (
        "_blocks",
        "_finish",
        "_parser",
        "_prompt_parts",
        "_provider",
        "_tools",
        "map_error",
        "usage",
        "writer",
    )

    def __init__(
        self, provider: str, writer: ChatStreamWriter, usage: Usage, map_error: ErrorMapper
    ) -> None:
        self.writer = writer
        self.usage = usage
        self.map_error = map_error
        self._provider = provider
        self._parser = SSEParser()
        self._blocks: dict[int, int] = {}
        self._tools = 0
        self._finish: str | None = None
        self._prompt_parts: dict[str, int] = {}

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """OpenAI SSE bytes for the events completed by `chunk` (and the end, if it is)."""
        if self._done():
            return b""
        out = b""
        try:
            for event in self._parser.feed(chunk):
                out += self._event(event)
                if self._done():
                    return out
            if end_of_stream:
                what = (
                    "a stream that ended mid-event"
                    if self._parser.pending
                    else "a stream that ended before message_stop"
                )
                out += self._malformed(what)
        except SSEParseError:
            out += self._malformed("a stream event larger than the gateway accepts")
        except Exception:  # a stream must end cleanly whatever the provider sent
            out += self._malformed("a stream event the gateway could not translate")
        return out

    def _done(self) -> bool:
        return self.writer.done

    def _malformed(self, what: str) -> bytes:
        return self.writer.fail(malformed_response(self._provider, what))

    def _event(self, event: SSEEvent) -> bytes:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return self._malformed(f"a stream event that is not JSON ({event.event or 'unnamed'})")
        if not isinstance(data, dict):
            return self._malformed("a stream event that is not a JSON object")
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = event.event
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                return self._malformed("a message_start event without a message")
            raw = message.get("usage")
            if raw is not None and not apply_usage(self.usage, raw, self._prompt_parts):
                return self._malformed("a message_start event with malformed usage")
            return self.writer.start()
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "message_stop":
            return self.writer.finish(self._finish or "stop", self.usage)
        if kind == "error":
            return self._error(data)
        # ping, content_block_stop, and event types added to the API later.
        return b""

    def _block_start(self, data: dict[str, Any]) -> bytes:
        index = data.get("index")
        block = data.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return self._malformed("a content_block_start event without index or content_block")
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _TEXT
            text = block.get("text")
            return self.writer.text(text) if isinstance(text, str) else b""
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                return self._malformed("a tool_use block without id or name")
            tool = self._tools
            self._tools += 1
            self._blocks[index] = tool
            out = self.writer.tool_call_start(tool, call_id, name)
            initial = block.get("input")
            if isinstance(initial, dict) and initial:  # normally {} and sent as deltas
                out += self.writer.tool_call_arguments(tool, orjson.dumps(initial).decode())
            return out
        self._blocks[index] = _SKIPPED
        return b""

    def _block_delta(self, data: dict[str, Any]) -> bytes:
        index = data.get("index")
        delta = data.get("delta")
        if not isinstance(index, int) or not isinstance(delta, dict):
            return self._malformed("a content_block_delta event without index or delta")
        slot = self._blocks.get(index)
        if slot is None:
            return self._malformed("a delta for a content block that never started")
        if slot == _SKIPPED:
            return b""
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if slot != _TEXT or not isinstance(text, str):
                return self._malformed("a text_delta that does not fit its content block")
            return self.writer.text(text)
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if slot < 0 or not isinstance(fragment, str):
                return self._malformed("an input_json_delta that does not fit its content block")
            return self.writer.tool_call_arguments(slot, fragment)
        return b""  # citations_delta and other annotations of a block

    def _message_delta(self, data: dict[str, Any]) -> bytes:
        delta = data.get("delta")
        if isinstance(delta, dict):
            stop_reason = delta.get("stop_reason")
            if isinstance(stop_reason, str):
                self._finish = finish_reason(stop_reason)
        raw = data.get("usage")
        if raw is not None and not apply_usage(self.usage, raw, self._prompt_parts):
            return self._malformed("a message_delta event with malformed usage")
        return b""

    def _error(self, data: dict[str, Any]) -> bytes:
        error = data.get("error")
        if not isinstance(error, dict):
            return self._malformed("an error event without an error object")
        kind = error.get("type")
        message = error.get("message")
        return self.writer.fail(
            self.map_error(
                kind if isinstance(kind, str) else "",
                message if isinstance(message, str) else "",
            )
        )
