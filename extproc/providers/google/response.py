"""Gemini answers → OpenAI: candidates, finish reasons, usage, whole chat and embeddings answers.

The readers are shared with the stream translator (`stream.py`). The answer's `model` is the
`modelVersion` Gemini reports (the model that answered), else the target's model.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.providers.base import Translated, Usage
from extproc.providers.errors import malformed_response
from extproc.providers.google.errors import error_payload, payload_error
from extproc.providers.helpers import serialize
from extproc.providers.openai_format import chat_completion, embeddings_list, tool_call
from extproc.providers.tool_ids import call_id_with_signature

# Candidate.finishReason → OpenAI finish_reason. Everything not listed (OTHER, LANGUAGE,
# MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, FINISH_REASON_UNSPECIFIED, new values) is
# "stop": the model stopped without a filter or a length limit being the cause. A candidate
# that carries function calls finishes with "tool_calls" whatever its finishReason.
_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}


class MalformedGeminiError(ValueError):
    """Provider output of the wrong shape; the message says what was wrong."""


@dataclass(slots=True)
class Candidate:
    """What the gateway uses from one Gemini candidate."""

    text: str = ""
    # (OpenAI tool call id, name, args); the id carries the call's thought signature, if any
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    finish_reason: str | None = None  # the raw finishReason, if any


def openai_finish_reason(raw: str | None, has_tool_calls: bool) -> str:
    """OpenAI finish_reason for a Gemini finishReason (see the table above)."""
    if has_tool_calls:
        return "tool_calls"
    return _FINISH_REASONS.get(raw or "", "stop")


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id (Gemini's function calls carry none we can rely on)."""
    return "call_" + uuid.uuid4().hex[:24]


def read_candidate(candidate: Any) -> Candidate:
    """Text (thought summaries skipped), function calls and finishReason of one candidate."""
    if not isinstance(candidate, dict):
        raise MalformedGeminiError("a candidate that is not an object")
    out = Candidate()
    finish = candidate.get("finishReason")
    if finish is not None and not isinstance(finish, str):
        raise MalformedGeminiError("a finishReason that is not a string")
    out.finish_reason = finish
    content = candidate.get("content")
    if content is None:
        return out  # e.g. a candidate stopped by SAFETY before producing anything
    if not isinstance(content, dict):
        raise MalformedGeminiError("candidate content that is not an object")
    parts = content.get("parts")
    if parts is None:
        return out
    if not isinstance(parts, list):
        raise MalformedGeminiError("content parts that are not a list")
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            raise MalformedGeminiError("a content part that is not an object")
        if "functionCall" in part:
            name, args = _function_call(part["functionCall"])
            signature = part.get("thoughtSignature")
            if signature is not None and not isinstance(signature, str):
                raise MalformedGeminiError("a thoughtSignature that is not a string")
            out.calls.append((call_id_with_signature(new_call_id(), signature), name, args))
        elif "text" in part:
            text = part["text"]
            if not isinstance(text, str):
                raise MalformedGeminiError("a text part that is not a string")
            if part.get("thought") is not True:
                texts.append(text)
        # Other parts (inline images, executable code, ...) have no OpenAI chat equivalent.
    out.text = "".join(texts)
    return out


def _function_call(call: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(call, dict):
        raise MalformedGeminiError("a functionCall that is not an object")
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedGeminiError("a functionCall without a name")
    args = call.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise MalformedGeminiError("functionCall args that are not an object")
    return name, args


def read_usage(response: dict[str, Any]) -> Usage | None:
    """A response's usageMetadata as a Usage (absent counts are proto3 zeros); None without
    one. Thinking and tool-use prompt tokens count as completion and prompt tokens."""
    meta = response.get("usageMetadata")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise MalformedGeminiError("usageMetadata that is not an object")
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    completion = _count(meta, "candidatesTokenCount") + _count(meta, "thoughtsTokenCount")
    cached = _count(meta, "cachedContentTokenCount") if "cachedContentTokenCount" in meta else None
    return Usage.of(prompt, completion, cached)


def _count(meta: dict[str, Any], name: str) -> int:
    value = meta.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedGeminiError(f"a usageMetadata.{name} that is not a count")
    return value


def prompt_blocked(response: dict[str, Any]) -> bool:
    """True when promptFeedback says the prompt itself was blocked."""
    feedback = response.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def answering_model(response: dict[str, Any], fallback: str) -> str:
    """The `modelVersion` a response names, else `fallback` (the target's model)."""
    model = response.get("modelVersion")
    return model if isinstance(model, str) and model else fallback


@dataclass(frozen=True, slots=True)
class EmbeddingsCall:
    """A translated embeddings request: the method, its body and how to answer."""

    method: str  # "embedContent" or "batchEmbedContents"
    body: dict[str, Any]
    count: int  # how many vectors the answer must hold
    base64: bool  # encode the vectors as base64 float32 (the openai SDK's default)


def translate_answer(
    body: bytes, provider: str, fallback_model: str, embeddings: EmbeddingsCall | None
) -> Translated:
    """The OpenAI answer for a whole Gemini answer (chat, or `embeddings`); 502 if malformed."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        what = "an empty body" if not body.strip() else "a body that is not JSON"
        raise malformed_response(provider, what) from None
    error = error_payload(data)
    if error is not None:
        raise payload_error(error, provider)
    if not isinstance(data, dict):
        raise malformed_response(provider, "a body that is not a JSON object")
    model = answering_model(data, fallback_model)
    try:
        usage = read_usage(data)
        if embeddings is not None:
            out = _embeddings_answer(data, embeddings, model, usage)
        else:
            out = _chat_answer(data, model, usage)
    except MalformedGeminiError as exc:
        raise malformed_response(provider, str(exc)) from None
    return Translated(serialize(out), usage, model)


def _chat_answer(data: dict[str, Any], model: str, usage: Usage | None) -> dict[str, Any]:
    candidates = data.get("candidates")
    if candidates is not None and not isinstance(candidates, list):
        raise MalformedGeminiError("candidates that are not a list")
    if not candidates:
        if prompt_blocked(data):
            return chat_completion(model, "", "content_filter", usage)
        raise MalformedGeminiError("a response without candidates")
    choices: list[dict[str, Any]] = []
    completion: dict[str, Any] = {}
    for index, raw in enumerate(candidates):
        candidate = read_candidate(raw)
        calls = [
            tool_call(call_id, name, orjson.dumps(args).decode())
            for call_id, name, args in candidate.calls
        ]
        content = candidate.text if candidate.text or not calls else None
        reason = openai_finish_reason(candidate.finish_reason, bool(calls))
        completion = chat_completion(model, content, reason, usage, calls or None)
        # chat_completion builds one choice; n > 1 answers gather them here.
        choices.append({**completion["choices"][0], "index": index})
    completion["choices"] = choices
    return completion


def _embeddings_answer(
    data: dict[str, Any], call: EmbeddingsCall, model: str, usage: Usage | None
) -> dict[str, Any]:
    if call.method == "embedContent":
        vectors = [_vector(data.get("embedding"))]
    else:
        embeddings = data.get("embeddings")
        if not isinstance(embeddings, list):
            raise MalformedGeminiError("a batch answer without embeddings")
        vectors = [_vector(item) for item in embeddings]
    if len(vectors) != call.count:
        raise MalformedGeminiError(f"{len(vectors)} embeddings for {call.count} inputs")
    out = embeddings_list(model, vectors, usage)
    if call.base64:
        for item in out["data"]:
            item["embedding"] = _base64_float32(item["embedding"])
    return out


def _vector(value: Any) -> list[float]:
    values = value.get("values") if isinstance(value, dict) else None
    if not isinstance(values, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in values
    ):
        raise MalformedGeminiError("an embedding without numeric values")
    return values


def _base64_float32(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: what OpenAI's `encoding_format=base64` returns."""
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except (struct.error, OverflowError):
        raise MalformedGeminiError("embedding values outside the float32 range") from None
    return base64.b64encode(packed).decode("ascii")
