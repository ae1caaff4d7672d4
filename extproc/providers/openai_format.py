"""Builders for OpenAI chat responses: whole completions and `chat.completion.chunk` streams.

Translating adapters (Anthropic, Gemini, Bedrock) produce OpenAI output only
through these, so every provider's output has the same shape.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from extproc.errors import GatewayError
from extproc.streaming.sse import DONE, sse_data

if TYPE_CHECKING:  # base.py builds its stream writers with this module
    from extproc.providers.base import Usage


def completion_id() -> str:
    """A fresh `chatcmpl-...` id."""
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage_dict(usage: Usage | None) -> dict[str, Any]:
    """OpenAI `usage` object (zeros when the provider reported none); cached prompt tokens
    under `prompt_tokens_details` when the provider said how many."""
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return out


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One OpenAI `tool_calls` entry (arguments is a JSON string)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chat_completion(
    model: str,
    content: str | None,
    finish_reason: str,
    usage: Usage | None,
    tool_calls: list[dict[str, Any]] | None = None,
    refusal: str | None = None,
) -> dict[str, Any]:
    """A whole `chat.completion` object with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage_dict(usage),
    }


def embeddings_list(model: str, vectors: list[list[float]], usage: Usage | None) -> dict[str, Any]:
    """An OpenAI embeddings `list` object."""
    prompt = usage.prompt_tokens if usage is not None else 0
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


class ChatStreamWriter:
    """Emits OpenAI `chat.completion.chunk` SSE events for one streamed completion.

    Call `start()` once, then `text` / `tool_call_start` / `tool_call_arguments` as
    content arrives, then `finish(reason, usage)` (or `fail(error)`) exactly once.
    Methods return the bytes to send now (possibly empty). `model` may be changed until the
    first chunk is written (a provider names the answering model in its first event).
    """

    __slots__ = ("created", "done", "finished", "id", "include_usage", "model", "started")

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.started = False
        self.done = False  # finished or failed: nothing more is written
        self.finished = False  # ended normally, by `finish`

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse_data(chunk)

    def start(self) -> bytes:
        """The first chunk: the assistant role (once; later calls return b'')."""
        if self.started or self.done:
            return b""
        self.started = True
        return self._chunk({"role": "assistant", "content": ""})

    def text(self, text: str) -> bytes:
        """A content delta."""
        if not text or self.done:
            return b""
        return self.start() + self._chunk({"content": text})

    def tool_call_start(self, index: int, call_id: str, name: str) -> bytes:
        """Announce tool call `index` with its id and function name."""
        if self.done:
            return b""
        delta = {
            "tool_calls": [
                {
                    "index": index,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            ]
        }
        return self.start() + self._chunk(delta)

    def tool_call_arguments(self, index: int, fragment: str) -> bytes:
        """A fragment of tool call `index`'s JSON arguments."""
        if not fragment or self.done:
            return b""
        delta = {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
        return self.start() + self._chunk(delta)

    def finish(self, finish_reason: str, usage: Usage | None) -> bytes:
        """The finishing chunk, the usage chunk (if asked for) and `[DONE]`."""
        if self.done:
            return b""
        out = self.start() + self._chunk({}, finish_reason)
        if self.include_usage:
            out += sse_data(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_dict(usage),
                }
            )
        self.done = self.finished = True
        return out + DONE

    def fail(self, error: GatewayError) -> bytes:
        """An OpenAI-style error event, then `[DONE]`: the stream ends cleanly."""
        if self.done:
            return b""
        self.done = True
        return error_event(error) + DONE


def error_event(error: GatewayError) -> bytes:
    """The SSE event carrying an OpenAI-style error (`data: {"error": {...}}`)."""
    payload = {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }
    return sse_data(payload)
