"""The OpenAI stream events the provider stream translators must emit, a parser for them, and
shared OpenAI request pieces.

Shared by the Anthropic, Gemini and Bedrock stream tests: the expected events are the same
OpenAI `chat.completion.chunk` shapes whichever provider produced them.
"""

from __future__ import annotations

from typing import Any

import orjson


def parse_sse(out: bytes, *, call_id_prefix: str | None = None) -> list[Any]:
    """OpenAI SSE output → its events (dicts without `id`/`created`) and "[DONE]".

    With `call_id_prefix`, generated tool call ids must start with it and become "ID".
    """
    text = out.decode()
    assert text.endswith("\n\n") or not text, "output must consist of complete events"
    events: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        if data == "[DONE]":
            events.append(data)
            continue
        event = orjson.loads(data)
        event.pop("id", None)
        event.pop("created", None)
        if call_id_prefix is not None:
            for choice in event.get("choices", []):
                for call in choice["delta"].get("tool_calls", []):
                    if "id" in call:
                        assert call["id"].startswith(call_id_prefix)
                        call["id"] = "ID"
        events.append(event)
    return events


def chunk(
    model: str, delta: dict[str, Any], finish: str | None = None, usage: bool = True
) -> dict[str, Any]:
    """One chunk with one choice; `usage: null` is present when usage was asked for."""
    event: dict[str, Any] = {
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        event["usage"] = None
    return event


def usage_chunk(
    model: str, prompt: int, completion: int, cached: int | None = None
) -> dict[str, Any]:
    """The final usage chunk (no choices); `cached`: the provider said how many prompt tokens
    came from its cache (OpenAI's `prompt_tokens_details.cached_tokens`)."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}


def tool_start(
    model: str, index: int, call_id: str, name: str, usage: bool = True
) -> dict[str, Any]:
    """The chunk that opens tool call `index` (empty arguments)."""
    call = {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    return chunk(model, {"tool_calls": [call]}, usage=usage)


def tool_arguments(model: str, index: int, fragment: str, usage: bool = True) -> dict[str, Any]:
    """A chunk carrying a fragment of tool call `index`'s arguments."""
    return chunk(
        model, {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}, usage=usage
    )


def tool_call_turns(call_id: str, result: str = "sunny") -> list[dict[str, Any]]:
    """An assistant turn calling function `f` with id `call_id`, and the tool's result."""
    call = {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]
