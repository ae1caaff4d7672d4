"""Bedrock ConverseStream (AWS binary event stream) → OpenAI `chat.completion.chunk` stream.

The binary framing is `extproc.streaming.eventstream`; this module maps its messages. The
stream finishes once both `messageStop` and `metadata` (usage) have arrived. An exception or
error message, malformed data or a stream that ends early produce an error event and `[DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.providers.bedrock.errors import stream_exception
from extproc.providers.bedrock.response import FINISH_REASONS, read_usage
from extproc.providers.errors import provider_error
from extproc.providers.openai_format import ChatStreamWriter
from extproc.providers.stream import StreamTranslator
from extproc.streaming.eventstream import EventStreamDecoder, EventStreamMessage


class BedrockStreamTranslator(StreamTranslator):
    """Translates one ConverseStream response."""

    __slots__ = ("_decoder", "_last_tool_call", "_metadata_seen", "_stop_reason", "_tool_calls")

    def __init__(self, provider: str, writer: ChatStreamWriter) -> None:
        super().__init__(provider, writer)
        self._decoder = EventStreamDecoder()
        self._tool_calls: dict[int, int] = {}  # contentBlockIndex → OpenAI tool-call index
        self._last_tool_call: int | None = None
        self._stop_reason: str | None = None
        self._metadata_seen = False

    def _feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        decoder = self._decoder
        out = bytearray()
        try:
            for message in decoder.feed(chunk) if chunk else ():
                out += self._event(message)
                if self.writer.done:
                    return bytes(out)
        except Exception:  # keep what was translated before the unreadable frame
            return bytes(out) + self.malformed("an unreadable stream event")
        if decoder.error is not None:
            return bytes(out) + self.malformed(f"a corrupt event stream: {decoder.error}")
        if end_of_stream:
            if decoder.pending:
                out += self.malformed("an event stream that ended mid-frame")
            elif self._stop_reason is not None:
                out += self.finish(FINISH_REASONS.get(self._stop_reason, "stop"))
            else:
                out += self.malformed("an event stream that ended before messageStop")
        return bytes(out)

    def _event(self, message: EventStreamMessage) -> bytes:
        kind = message.header(":message-type")
        if kind == "exception":
            return self.fail(
                stream_exception(
                    message.header(":exception-type") or "", message.payload, self.provider
                )
            )
        if kind == "error":
            code = message.header(":error-code") or "unknown"
            text = message.header(":error-message") or "no message"
            return self.fail(provider_error(502, f"{code}: {text}", self.provider))
        if kind != "event":
            return self.malformed(f"an event stream message of type {kind!r}")
        try:
            payload = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return self.malformed("a stream event that is not a JSON object")
        event = message.header(":event-type")
        if event == "messageStart":
            return self.writer.start()
        if event == "contentBlockStart":
            return self._block_start(payload)
        if event == "contentBlockDelta":
            return self._block_delta(payload)
        if event == "messageStop":
            reason = payload.get("stopReason")
            if not isinstance(reason, str):
                return self.malformed("a messageStop without stopReason")
            self._stop_reason = reason
            return self._maybe_finish()
        if event == "metadata":
            usage = read_usage(payload.get("usage"))
            if usage is not None:
                self.usage = usage
            self._metadata_seen = True
            return self._maybe_finish()
        return b""  # contentBlockStop and event types added later carry nothing to translate

    def _block_start(self, payload: dict[str, Any]) -> bytes:
        start = payload.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if use is None:
            return b""
        if not (
            isinstance(use, dict)
            and isinstance(use.get("toolUseId"), str)
            and isinstance(use.get("name"), str)
        ):
            return self.malformed("a toolUse start without id and name")
        index = len(self._tool_calls)
        block = payload.get("contentBlockIndex")
        self._tool_calls[block if isinstance(block, int) else -1 - index] = index
        self._last_tool_call = index
        return self.writer.tool_call_start(index, use["toolUseId"], use["name"])

    def _block_delta(self, payload: dict[str, Any]) -> bytes:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return self.malformed("a contentBlockDelta without delta")
        text = delta.get("text")
        if isinstance(text, str):
            return self.writer.text(text)
        use = delta.get("toolUse")
        if use is None:
            return b""  # reasoningContent, citations: no OpenAI counterpart
        fragment = use.get("input") if isinstance(use, dict) else None
        block = payload.get("contentBlockIndex")
        index = self._tool_calls.get(block) if isinstance(block, int) else self._last_tool_call
        if not isinstance(fragment, str) or index is None:
            return self.malformed("a toolUse delta for no started tool")
        return self.writer.tool_call_arguments(index, fragment)

    def _maybe_finish(self) -> bytes:
        if self._stop_reason is None or not self._metadata_seen:
            return b""
        return self.finish(FINISH_REASONS.get(self._stop_reason, "stop"))
