"""Gemini 3 thought signatures carried in OpenAI tool call ids, so no state is kept.

Gemini 3 attaches a `thoughtSignature` to its function calls and refuses a later request whose
history lacks it. OpenAI's tool calls have no field for it, but clients echo tool call ids
verbatim, so the signature rides in the id: `call_<hex>` + THOUGHT_SIGNATURE_MARKER + the
signature in URL-safe base64 without padding (ids stay within [A-Za-z0-9_-]).
"""

from __future__ import annotations

from typing import Any

THOUGHT_SIGNATURE_MARKER = "__sig__"


def call_id_with_signature(call_id: str, signature: str | None) -> str:
    """`call_id`, carrying a Gemini thought signature (standard base64) when there is one."""
    if not signature:
        return call_id
    return (
        call_id
        + THOUGHT_SIGNATURE_MARKER
        + signature.replace("+", "-").replace("/", "_").rstrip("=")
    )


def split_call_id(call_id: str) -> tuple[str, str | None]:
    """(the id without a carried signature, the signature in standard base64, or None)."""
    base, marker, carried = call_id.partition(THOUGHT_SIGNATURE_MARKER)
    if not marker or not carried:
        return call_id, None
    signature = carried.replace("-", "+").replace("_", "/")
    return base, signature + "=" * (-len(signature) % 4)


def plain_call_id(call_id: str) -> str:
    """The id as every wire API but Gemini's needs it: without a carried signature."""
    return split_call_id(call_id)[0] if THOUGHT_SIGNATURE_MARKER in call_id else call_id


def strip_thought_signatures(body: dict[str, Any]) -> bool:
    """Drop carried signatures from the tool call ids of an OpenAI request's history (OpenAI
    refuses ids over 40 characters); True when the body changed. Chat messages are validated."""
    changed = False
    for message in body.get("messages") or ():
        for call in message.get("tool_calls") or ():
            if THOUGHT_SIGNATURE_MARKER in call["id"]:
                call["id"] = plain_call_id(call["id"])
                changed = True
        call_id = message.get("tool_call_id")
        if isinstance(call_id, str) and THOUGHT_SIGNATURE_MARKER in call_id:
            message["tool_call_id"] = plain_call_id(call_id)
            changed = True
    return changed
