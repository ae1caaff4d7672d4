"""A whole Converse response → an OpenAI `chat.completion`, and the vocabulary the stream
translator shares with it (stop reasons, usage).

Converse does not name the model that answered: the answer's `model` is the target's model id.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from extproc.providers.base import Translated, Usage
from extproc.providers.errors import malformed_response
from extproc.providers.helpers import serialize
from extproc.providers.openai_format import chat_completion, tool_call

FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}


def read_usage(value: Any) -> Usage | None:
    """Usage from `{inputTokens, outputTokens[, cacheReadInputTokens]}`; None unless both
    counts are integers."""
    if not isinstance(value, dict):
        return None
    prompt = _count(value.get("inputTokens"))
    completion = _count(value.get("outputTokens"))
    if prompt is None or completion is None:
        return None
    return Usage.of(prompt, completion, _count(value.get("cacheReadInputTokens")))


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def translate_converse(body: bytes, provider: str, model: str) -> Translated:
    """The `chat.completion` for a whole Converse response; 502 if it is malformed."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed_response(provider, "a Converse response that is not JSON") from None
    output = data.get("output") if isinstance(data, dict) else None
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise malformed_response(provider, "a Converse response without output.message.content")
    stop_reason = data.get("stopReason")
    if not isinstance(stop_reason, str):
        raise malformed_response(provider, "a Converse response without a stopReason")
    usage = read_usage(data.get("usage"))
    if usage is None:
        raise malformed_response(provider, "a Converse response without valid usage")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise malformed_response(provider, "a Converse content block that is not an object")
        if "text" in block:
            if not isinstance(block["text"], str):
                raise malformed_response(provider, "a Converse text block that is not a string")
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            if not (
                isinstance(use, dict)
                and isinstance(use.get("toolUseId"), str)
                and isinstance(use.get("name"), str)
            ):
                raise malformed_response(provider, "a Converse toolUse block without id and name")
            arguments = orjson.dumps(use.get("input", {})).decode()
            calls.append(tool_call(use["toolUseId"], use["name"], arguments))
        # reasoningContent, citations and other blocks have no OpenAI counterpart.
    text = "".join(texts) if texts or not calls else None
    reason = FINISH_REASONS.get(stop_reason, "stop")
    return Translated(
        serialize(chat_completion(model, text, reason, usage, calls or None)), usage, model
    )
