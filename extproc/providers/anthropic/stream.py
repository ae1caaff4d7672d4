"""Anthropic Messages SSE stream → OpenAI `chat.completion.chunk` stream, chunk by chunk.

Events are translated as soon as they are complete. A provider `error` event, malformed data
or a stream that ends before `message_stop` produce an error event and `[DONE]`.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from extproc.providers.anthropic.errors import typed_error
from extproc.providers.anthropic.response import UsageCounters, answering_model, finish_reason
from extproc.providers.openai_format import ChatStreamWriter
from extproc.providers.stream import StreamTranslator
from extproc.streaming.sse import SSEEvent, SSEParseError, SSEParser

# Content-block slots: a tool call's OpenAI index (>= 0), or one of these.
_TEXT: Final = -1
_SKIPPED: Final = -2  # thinking, redacted_thinking, server-tool blocks: not part of the answer


class AnthropicStreamTranslator(StreamTranslator):
    """Translates one Anthropic event stream."""

    __slots__ = ("_blocks", "_counters", "_finish", "_parser", "_tools")

    def __init__(self, provider: str, writer: ChatStreamWriter) -> None:
        super().__init__(provider, writer)
        self._parser = SSEParser()
        self._blocks: dict[int, int] = {}
        self._tools = 0
        self._finish: str | None = None
        self._counters = UsageCounters()

    def _feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        out = b""
        try:
            for event in self._parser.feed(chunk):
                out += self._event(event)
                if self.writer.done:
                    return out
        except SSEParseError:
            return out + self.malformed("a stream event larger than the gateway accepts")
        if end_of_stream:
            what = (
                "a stream that ended mid-event"
                if self._parser.pending
                else "a stream that ended before message_stop"
            )
            out += self.malformed(what)
        return out

    def _usage(self, raw: Any) -> bool:
        if not self._counters.apply(raw):
            return False
        self.usage = self._counters.usage()
        return True

    def _event(self, event: SSEEvent) -> bytes:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return self.malformed(f"a stream event that is not JSON ({event.event or 'unnamed'})")
        if not isinstance(data, dict):
            return self.malformed("a stream event that is not a JSON object")
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
                return self.malformed("a message_start event without a message")
            raw = message.get("usage")
            if raw is not None and not self._usage(raw):
                return self.malformed("a message_start event with malformed usage")
            if not self.writer.started:
                self.writer.model = answering_model(message, self.writer.model)
            return self.writer.start()
        if kind == "message_delta":
            return self._message_delta(data)
        if kind == "message_stop":
            return self.finish(self._finish or "stop")
        if kind == "error":
            return self._error(data)
        # ping, content_block_stop, and event types added to the API later.
        return b""

    def _block_start(self, data: dict[str, Any]) -> bytes:
        index = data.get("index")
        block = data.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return self.malformed("a content_block_start event without index or content_block")
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _TEXT
            text = block.get("text")
            return self.writer.text(text) if isinstance(text, str) else b""
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                return self.malformed("a tool_use block without id or name")
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
            return self.malformed("a content_block_delta event without index or delta")
        slot = self._blocks.get(index)
        if slot is None:
            return self.malformed("a delta for a content block that never started")
        if slot == _SKIPPED:
            return b""
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if slot != _TEXT or not isinstance(text, str):
                return self.malformed("a text_delta that does not fit its content block")
            return self.writer.text(text)
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if slot < 0 or not isinstance(fragment, str):
                return self.malformed("an input_json_delta that does not fit its content block")
            return self.writer.tool_call_arguments(slot, fragment)
        return b""  # citations_delta and other annotations of a block

    def _message_delta(self, data: dict[str, Any]) -> bytes:
        delta = data.get("delta")
        if isinstance(delta, dict):
            stop_reason = delta.get("stop_reason")
            if isinstance(stop_reason, str):
                self._finish = finish_reason(stop_reason)
        raw = data.get("usage")
        if raw is not None and not self._usage(raw):
            return self.malformed("a message_delta event with malformed usage")
        return b""

    def _error(self, data: dict[str, Any]) -> bytes:
        error = data.get("error")
        if not isinstance(error, dict):
            return self.malformed("an error event without an error object")
        kind = error.get("type")
        message = error.get("message")
        return self.fail(
            typed_error(
                kind if isinstance(kind, str) else "",
                message if isinstance(message, str) else "",
                self.provider,
            )
        )
