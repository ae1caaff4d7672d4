"""What a pipeline phase decides: go on (with changes) or answer now.

Shared by the downstream request pipeline and the per-attempt pipeline;
`extproc.server.messages` turns these into ext_proc protobuf.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.contract import GATEWAY_ERROR_HEADER
from extproc.errors import GatewayError
from extproc.providers.base import ResponseMode

JSON_HEADERS = {"content-type": "application/json"}


@dataclass(slots=True)
class Continue:
    """Let the request go on, optionally changed and routed."""

    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)
    body: bytes | None = None
    metadata: dict[str, Any] | None = None
    clear_route_cache: bool = False
    # How Envoy should send this response's body (set in the response headers phase).
    mode_override: ResponseMode | None = None
    # A request-headers answer that leaves the filter's configured processing mode as it is
    # (the upstream filter's: no request body); others switch response headers on.
    keep_mode: bool = False


@dataclass(slots=True)
class Respond:
    """Answer the client now, without calling a provider."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    details: str = ""

    @classmethod
    def error(cls, error: GatewayError) -> Respond:
        """An OpenAI-style error answer."""
        headers = {**JSON_HEADERS, GATEWAY_ERROR_HEADER: error.code, **error.headers}
        return cls(error.status, error.body(), headers, details=error.code)

    @classmethod
    def json(cls, status: int, payload: Any) -> Respond:
        """A JSON answer."""
        return cls(status, orjson.dumps(payload), dict(JSON_HEADERS))


Action = Continue | Respond


@dataclass(slots=True)
class Deferred:
    """The phase's answer needs I/O first (a Redis round trip): the servicer awaits `pending`
    for the action, handling its errors like the phase's own."""

    pending: Awaitable[Action]
