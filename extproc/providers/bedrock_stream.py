"""Bedrock ConverseStream (AWS event stream) → OpenAI `chat.completion.chunk` stream.

Owns the stream translator and the response vocabulary it shares with the buffered path in
`bedrock.py` (stop reasons, usage); AWS error mapping is passed in by the adapter, and the
binary framing lives in `extproc.streaming.eventstream`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from extproc.errors import GatewayError
from extproc.providers.base import Usage
from extproc.providers.errors import malformed_response, provider_error
from extproc.providers.openai_format import ChatStreamWriter
from extproc.streaming.eventstream import EventStreamDecoder, EventStreamMessage

FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# (`:exception-type` header value, exception payload) → the client-facing error.
ExceptionMapper = Callable[[str, bytes], GatewayError]


def read_usage(value: Any) -> Usage | None:
    """Usage from `{inputTokens, outputTokens}`; None unless both are integers."""
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("inputTokens"), value.get("outputTokens")
    if not (_is_int(prompt) and _is_int(completion)):
        return None
    return Usage(prompt, completion)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class BedrockStreamTranslator:
    """Translates one ConverseStream response; `feed` never raises.

    The stream finishes once both `messageStop` and `metadata` (usage) have arrived. An
    exception or error message, malformed data or a stream that ends early produce an
    error event and `[DONE]`; anything after that is ignored.
    """

    __slots__ = (
        "_decoder",
        "_last_tool_call",
        "_metadata_seen",
        "_provider",
        "_stop_reason",
        "_tool_calls",
        "map_exception",
        "usage",
        "writer",
    )

    def __init__(
        self, provider: str, writer: ChatStreamWriter, usage: Usage, map_exception: ExceptionMapper
    ) -> None:
        self.writer = writer
        self.usage = usage
        self.map_exception = map_exception
        self._provider = provider
        self._decoder = EventStreamDecoder()
        self._tool_calls: dict[int, int] = {}  # contentBlockIndex → OpenAI tool-call index
        self._last_tool_call: int | None = None
        self._stop_reason: str | None = None
        self._metadata_seen = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """OpenAI SSE bytes for the messages completed by `chunk` (and the end, if it is)."""
        if self.writer.done:
            return b""  # the stream already ended (finish or error): ignore the rest
        return self._translate(self.writer, chunk, end_of_stream)

    def _translate(self, writer: ChatStreamWriter, chunk: bytes, end_of_stream: bool) -> bytes:
        decoder = self._decoder
        name = self._provider
        out = bytearray()
        try:
            for message in decoder.feed(chunk) if chunk else ():
                out += self._event(writer, message)
                if writer.done:
                    return bytes(out)
        except Exception:  # a streamed body must end cleanly: never raise into the pipeline
            return bytes(out) + writer.fail(malformed_response(name, "an unreadable stream event"))
        if decoder.error is not None:
            error = malformed_response(name, f"a corrupt event stream: {decoder.error}")
            return bytes(out) + writer.fail(error)
        if end_of_stream:
            if decoder.pending:
                out += writer.fail(malformed_response(name, "an event stream that ended mid-frame"))
            elif self._stop_reason is not None:
                out += writer.finish(FINISH_REASONS.get(self._stop_reason, "stop"), self.usage)
            else:
                out += writer.fail(
                    malformed_response(name, "an event stream that ended before messageStop")
                )
        return bytes(out)

    def _event(self, writer: ChatStreamWriter, message: EventStreamMessage) -> bytes:
        name = self._provider
        kind = message.header(":message-type")
        if kind == "exception":
            return writer.fail(
                self.map_exception(message.header(":exception-type") or "", message.payload)
            )
        if kind == "error":
            code = message.header(":error-code") or "unknown"
            text = message.header(":error-message") or "no message"
            return writer.fail(provider_error(502, f"{code}: {text}", name))
        if kind != "event":
            return writer.fail(
                malformed_response(name, f"an event stream message of type {kind!r}")
            )
        try:
            payload = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return writer.fail(malformed_response(name, "a stream event that is not a JSON object"))
        event = message.header(":event-type")
        if event == "messageStart":
            return writer.start()
        if event == "contentBlockStart":
            return self._block_start(writer, payload)
        if event == "contentBlockDelta":
            return self._block_delta(writer, payload)
        if event == "messageStop":
            reason = payload.get("stopReason")
            if not isinstance(reason, str):
                return writer.fail(malformed_response(name, "a messageStop without stopReason"))
            self._stop_reason = reason
            return self._maybe_finish(writer)
        if event == "metadata":
            usage = read_usage(payload.get("usage"))
            if usage is not None:
                self.usage.prompt_tokens = usage.prompt_tokens
                self.usage.completion_tokens = usage.completion_tokens
            self._metadata_seen = True
            return self._maybe_finish(writer)
        return b""  # contentBlockStop and event types added later carry nothing to translate

    def _block_start(self, writer: ChatStreamWriter, payload: dict[str, Any]) -> bytes:
        start = payload.get("start")
        use = start.get("toolUse") if isinstance(start, dict) else None
        if use is None:
            return b""
        if not (
            isinstance(use, dict)
            and isinstance(use.get("toolUseId"), str)
            and isinstance(use.get("name"), str)
        ):
            return writer.fail(
                malformed_response(self._provider, "a toolUse start without id and name")
            )
        index = len(self._tool_calls)
        block = payload.get("contentBlockIndex")
        self._tool_calls[block if isinstance(block, int) else -1 - index] = index
        self._last_tool_call = index
        return writer.tool_call_start(index, use["toolUseId"], use["name"])

    def _block_delta(self, writer: ChatStreamWriter, payload: dict[str, Any]) -> bytes:
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return writer.fail(
                malformed_response(self._provider, "a contentBlockDelta without delta")
            )
        text = delta.get("text")
        if isinstance(text, str):
            return writer.text(text)
        use = delta.get("toolUse")
        if use is None:
            return b""  # reasoningContent, citations: no OpenAI counterpart
        fragment = use.get("input") if isinstance(use, dict) else None
        block = payload.get("contentBlockIndex")
        index = self._tool_calls.get(block) if isinstance(block, int) else self._last_tool_call
        if not isinstance(fragment, str) or index is None:
            return writer.fail(
                malformed_response(self._provider, "a toolUse delta for no started tool")
            )
        return writer.tool_call_arguments(index, fragment)

    def _maybe_finish(self, writer: ChatStreamWriter) -> bytes:
        if self._stop_reason is None or not self._metadata_seen:
            return b""
        return writer.finish(FINISH_REASONS.get(self._stop_reason, "stop"), self.usage)
