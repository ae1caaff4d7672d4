"""Gemini `streamGenerateContent?alt=sse` → OpenAI `chat.completion.chunk` stream.

Each event is one whole GenerateContentResponse, translated as soon as it is complete. Gemini
has no terminal event: the finishing chunk (with the last usageMetadata) is written at the end
of the stream, and only if a finishReason (or a blocked prompt) was seen.
"""

from __future__ import annotations

import orjson

from extproc.providers.google.errors import error_payload, payload_error
from extproc.providers.google.response import (
    MalformedGeminiError,
    answering_model,
    openai_finish_reason,
    prompt_blocked,
    read_candidate,
    read_usage,
)
from extproc.providers.openai_format import ChatStreamWriter
from extproc.providers.stream import StreamTranslator
from extproc.streaming.sse import SSEParseError, SSEParser


class GeminiStreamTranslator(StreamTranslator):
    """Translates one `alt=sse` stream, chunk by chunk."""

    __slots__ = ("_finish", "_parser", "_tool_calls")

    def __init__(self, provider: str, writer: ChatStreamWriter) -> None:
        super().__init__(provider, writer)
        self._parser = SSEParser()
        self._finish: str | None = None
        self._tool_calls = 0

    def _feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        out = bytearray()
        try:
            events = self._parser.feed(chunk) if chunk else []
        except SSEParseError as exc:
            return self.malformed(f"an invalid event stream ({exc})")
        for event in events:
            out += self._event(event.data)
            if self.writer.done:
                return bytes(out)
        if end_of_stream:
            if self._parser.pending:
                out += self.malformed("a stream that ended mid-event")
            elif self._finish is None:
                out += self.malformed("a stream that ended without a finish reason")
            else:
                out += self.finish("tool_calls" if self._tool_calls else self._finish)
        return bytes(out)

    def _event(self, data: str) -> bytes:
        if not data.strip():
            return b""
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.malformed("a stream event that is not JSON")
        error = error_payload(payload)
        if error is not None:
            return self.fail(payload_error(error, self.provider))
        if not isinstance(payload, dict):
            return self.malformed("a stream event that is not an object")
        writer = self.writer
        try:
            usage = read_usage(payload)
            if usage is not None:
                self.usage = usage
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
            return self.malformed(str(exc))
        if not writer.started:
            writer.model = answering_model(payload, writer.model)
        out = writer.text(candidate.text)
        for call_id, name, args in candidate.calls:
            index = self._tool_calls
            self._tool_calls += 1
            out += writer.tool_call_start(index, call_id, name)
            out += writer.tool_call_arguments(index, orjson.dumps(args).decode())
        if candidate.finish_reason is not None:
            self._finish = openai_finish_reason(candidate.finish_reason, False)
        return out
