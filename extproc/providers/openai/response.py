"""What an OpenAI-compatible answer says: its usage and model, whole or streamed.

The body is never changed; reading it only yields the usage record and the model. An
unparsable whole answer is a 502; a stream that ends before `data: [DONE]` gets a final error
event and `[DONE]`, so the client never takes a cut stream for a complete one.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.providers.base import Translated, Usage
from extproc.providers.errors import malformed_response
from extproc.providers.openai_format import error_event
from extproc.streaming.sse import DONE, SSEParseError, SSEParser

DONE_DATA = b"[DONE]"
_USAGE_KEY = b'"usage"'
_NULL_USAGE = b'"usage":null'
_NULL_USAGE_SPACED = b'"usage": null'


def _may_hold_usage(data: bytes) -> bool:
    """False only for an event whose one `"usage"` key is null (or that has none)."""
    count = data.count(_USAGE_KEY)
    return count > 1 or (count == 1 and _NULL_USAGE not in data and _NULL_USAGE_SPACED not in data)


def read_answer(body: bytes, provider: str) -> tuple[Usage | None, str | None]:
    """(usage, model) of a whole chat completion or embeddings answer; 502 if unparsable."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        what = "an empty body" if not body.strip() else "a body that is not JSON"
        raise malformed_response(provider, what) from None
    if not isinstance(data, dict):
        raise malformed_response(provider, "a body that is not a JSON object")
    return read_usage(data.get("usage")), _model(data)


def read_usage(raw: Any) -> Usage | None:
    """An OpenAI `usage` object as a Usage (None when absent or not counts)."""
    if not isinstance(raw, dict):
        return None
    prompt = _count(raw.get("prompt_tokens"))
    completion = _count(raw.get("completion_tokens"))
    if prompt is None:
        return None
    completion = completion or 0
    total = _count(raw.get("total_tokens"))
    details = raw.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return Usage(prompt, completion, total if total is not None else prompt + completion, cached)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _model(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) and model else None


class OpenAIStreamReader:
    """Reads an OpenAI SSE stream as it passes: usage and model out, bytes untouched.

    With `strip_usage` (the gateway asked for the usage chunk the client did not), the
    usage-only event (`choices: []`) is removed; complete events are passed on as they
    complete, so that event never leaves in part.
    """

    __slots__ = ("_complete", "_done", "_parser", "_provider", "_strip", "model", "usage")

    def __init__(self, provider: str, strip_usage: bool = False) -> None:
        self._provider = provider
        self._parser = SSEParser()
        self._done = False
        self._complete = False  # data: [DONE] passed
        self._strip = strip_usage
        self.usage: Usage | None = None
        self.model: str | None = None

    def feed(self, chunk: bytes, end_of_stream: bool) -> Translated:
        """`chunk` unchanged (plus a final error event if the stream ends early)."""
        out = chunk
        if not self._done:
            try:
                datas = self._plain_events(chunk)
                whole = datas is not None  # the chunk is exactly its events
                if datas is None:
                    datas = [event.data.encode() for event in self._parser.feed(chunk)]
                    whole = not self._parser.pending and chunk.endswith(b"\n\n")
                strip = self._strip
                kept = [data for data in datas if not self._event(data)]
                if strip and not (whole and len(kept) == len(datas)):
                    # The usage-only event left out, or a chunk that ends inside an event:
                    # its complete events go on, so that event never leaves in part.
                    out = b"".join(b"data: " + data + b"\n\n" for data in kept)
                if self._complete:
                    self._strip = False  # [DONE] passed: nothing more to hold back
            except SSEParseError:
                self._done = True  # nothing more to learn; the bytes still pass
                self._strip = False
        if end_of_stream and not self._done:
            self._done = True
            what = "a stream that ended before data: [DONE]"
            # A cut event is closed first, so the error event is read as an event of its own.
            close = b"\n\n" if self._parser.pending else b""
            out += close + error_event(malformed_response(self._provider, what)) + DONE
        return Translated(out, self.usage, self.model, self._complete)

    def _plain_events(self, chunk: bytes) -> list[bytes] | None:
        """The data of `chunk`'s events when it holds whole events of one `data: ` line each
        (what OpenAI-compatible servers send, one event or a few a chunk) and the parser holds
        nothing; else None, and the SSE parser reads it. A split on bytes, not a parse line by
        line: this runs for every chunk of every stream read for its usage."""
        if not chunk.endswith(b"\n\n") or b"\r" in chunk or self._parser.pending:
            return None
        datas = chunk[:-2].split(b"\n\n")
        for index, block in enumerate(datas):
            if not block.startswith(b"data: ") or b"\n" in block:
                return None
            datas[index] = block[6:]
        return datas

    def _event(self, data: bytes) -> bool:
        """Learn from one event; True for the usage-only event the client did not ask for.

        Once the model is known, an event is parsed only if it may hold usage: OpenAI's
        chunks carry `"usage":null` until the last one (with `include_usage`), and a quote
        inside a JSON string is escaped, so `"usage"` elsewhere can only be a key.
        """
        if data == DONE_DATA:
            self._done = self._complete = True
            return False
        if self.model is not None and not _may_hold_usage(data):
            return False
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            try:  # invalid UTF-8: read as the SSE parser decodes it, with replacements
                payload = orjson.loads(data.decode("utf-8", "replace"))
            except orjson.JSONDecodeError:
                return False
        if not isinstance(payload, dict):
            return False
        model = _model(payload)
        if model is not None:
            self.model = model
        usage = read_usage(payload.get("usage"))
        if usage is None:
            return False
        self.usage = usage
        return self._strip and payload.get("choices") == []
