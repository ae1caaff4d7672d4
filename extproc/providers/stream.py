"""The base every provider stream translator starts from: provider event stream in, OpenAI
`chat.completion.chunk` SSE out, chunk by chunk, never raising.

A translator is made per request with the provider's name and the `ChatStreamWriter` of the
answer; its subclass parses its wire's framing in `_feed` and records usage as the provider
reports it. Once the writer has finished (or failed) the stream, further input is ignored.
"""

from __future__ import annotations

from extproc.errors import GatewayError
from extproc.providers.base import Translated, Usage
from extproc.providers.errors import malformed_response
from extproc.providers.openai_format import ChatStreamWriter


class StreamTranslator:
    """Translates one provider stream into OpenAI SSE; `feed` never raises."""

    __slots__ = ("provider", "usage", "writer")

    def __init__(self, provider: str, writer: ChatStreamWriter) -> None:
        self.provider = provider
        self.writer = writer
        self.usage: Usage | None = None  # the provider's latest report

    def feed(self, chunk: bytes, end_of_stream: bool) -> Translated:
        """The OpenAI SSE bytes for the events `chunk` completes (and the end, if it is)."""
        if self.writer.done:
            return self._result(b"")  # the stream already ended: ignore the rest
        try:
            out = self._feed(chunk, end_of_stream)
        except Exception:  # a stream must end cleanly whatever the provider sent
            out = self.malformed("a stream event the gateway could not translate")
        return self._result(out)

    def _feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        raise NotImplementedError

    def _result(self, body: bytes) -> Translated:
        writer = self.writer
        return Translated(body, self.usage, writer.model, writer.finished)

    def malformed(self, what: str) -> bytes:
        """End the stream with a 502 `malformed_provider_response` event saying `what`."""
        return self.writer.fail(malformed_response(self.provider, what))

    def fail(self, error: GatewayError) -> bytes:
        """End the stream with `error` as its final event."""
        return self.writer.fail(error)

    def finish(self, finish_reason: str) -> bytes:
        """End the stream normally: the finishing chunk, usage if asked for, `[DONE]`."""
        return self.writer.finish(finish_reason, self.usage)
