"""The provider adapter interface and the request shape it produces.

An adapter instance is created per request (it may keep per-request state) and
turns a validated OpenAI-style request into what the provider expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson
from pydantic import SecretStr

from extproc.config import ProviderConfig


class Endpoint(StrEnum):
    """The OpenAI endpoints that reach a provider."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"


@dataclass(slots=True)
class UpstreamRequest:
    """What changes on the way to the provider: path, headers, body (None: unchanged)."""

    path: str
    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)
    body: bytes | None = None


class ProviderAdapter:
    """Base adapter: subclasses implement `request` for their wire API.

    Response translation hooks are added by the adapters that need them; the
    OpenAI-compatible ones pass provider responses through untouched.
    """

    def __init__(self, provider: ProviderConfig, credential: SecretStr | None) -> None:
        self.provider = provider
        self.credential = credential

    def request(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        upstream_model: str,
        body_changed: bool,
    ) -> UpstreamRequest:
        """Translate a validated request for this provider."""
        raise NotImplementedError


def rewrite_model(body: dict[str, Any], upstream_model: str) -> bool:
    """Point the body at the upstream model name; True if that changed it."""
    if body.get("model") == upstream_model:
        return False
    body["model"] = upstream_model
    return True


def serialize(body: dict[str, Any]) -> bytes:
    """JSON bytes of a body; non-ASCII text stays raw UTF-8, byte for byte."""
    return orjson.dumps(body)
