"""Helpers the adapters share: turn merging, JSON bytes, the unsupported-feature 400.

No wire API of its own: each adapter calls these to build its provider's request.
"""

from __future__ import annotations

from typing import Any

import orjson

from extproc.config.schema import ProviderConfig
from extproc.errors import GatewayError, bad_request


def unsupported(provider: ProviderConfig, feature: str, param: str | None = None) -> GatewayError:
    """The 400 for a valid OpenAI request feature this provider cannot honour."""
    return bad_request(
        "unsupported_parameter",
        f"provider '{provider.name}' (type '{provider.type.value}') does not support {feature}",
        param,
    )


def append_turn(
    turns: list[dict[str, Any]], role: str, items: list[Any], field: str = "content"
) -> None:
    """Add a conversation turn, merging it into the previous one of the same role
    (Anthropic, Gemini and Bedrock all require alternating roles)."""
    if turns and turns[-1]["role"] == role:
        turns[-1][field].extend(items)
    else:
        turns.append({"role": role, field: items})


def rewrite_model(body: dict[str, Any], upstream_model: str) -> bool:
    """Point the body at the upstream model name; True if that changed it."""
    if body.get("model") == upstream_model:
        return False
    body["model"] = upstream_model
    return True


def serialize(body: dict[str, Any]) -> bytes:
    """JSON bytes of a body; non-ASCII text stays raw UTF-8, byte for byte."""
    return orjson.dumps(body)
