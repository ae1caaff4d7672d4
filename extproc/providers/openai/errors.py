"""OpenAI-style provider errors (`{"error": {message, type, code, param}}`) → the gateway's.

Shared by every OpenAI-compatible provider; the rules themselves are `providers.errors`.
"""

from __future__ import annotations

from extproc.errors import GatewayError
from extproc.providers.errors import parse_json_error, provider_error


def map_openai_error(
    status: int, headers: dict[str, str], body: bytes, provider: str
) -> GatewayError:
    """Map an OpenAI-style provider error (`{"error": {message, type, code, param}}`)."""
    message, error = parse_json_error(body)
    code = str(error.get("code") or "")
    param = error.get("param") if isinstance(error.get("param"), str) else None
    return provider_error(
        status,
        message,
        provider,
        headers=headers,
        context_length=code == "context_length_exceeded",
        param=param,
    )
