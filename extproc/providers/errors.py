"""Provider errors → client-facing OpenAI errors, the same rules for every wire API.

Adapters extract (status, message, hints) from their provider's error shape (each in its own
`errors.py`) and call `provider_error`. The caller's key was fine when a provider says 401/403, so
that becomes a 502; provider messages are passed on only for request problems.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from extproc.errors import GatewayError

_CONTEXT_LENGTH = re.compile(
    r"context.length|context window|maximum context|prompt is too long|too many tokens|"
    r"input is too long|exceeds the maximum number of tokens|input token count",
    re.IGNORECASE,
)
MAX_MESSAGE_CHARS = 1000
DEFAULT_RETRY_AFTER = "1"


def retry_after_from(headers: dict[str, str]) -> str:
    """Seconds to wait, from `retry-after` (seconds) or `retry-after-ms`; default 1."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return value
    millis = headers.get("retry-after-ms", "").strip()
    try:
        return str(max(1, round(float(millis) / 1000)))
    except ValueError:
        return DEFAULT_RETRY_AFTER


def provider_error(
    status: int,
    message: str,
    provider: str,
    *,
    headers: dict[str, str] | None = None,
    overloaded: bool = False,
    rate_limited: bool = False,
    context_length: bool = False,
    param: str | None = None,
) -> GatewayError:
    """The client-facing error for a provider's error status and message."""
    headers = headers or {}
    text = " ".join(message.split())[:MAX_MESSAGE_CHARS] or "no message"
    if rate_limited or status == 429:
        return GatewayError(
            429,
            "rate_limit_exceeded",
            f"provider '{provider}' is rate limiting requests: {text}",
            headers={"retry-after": retry_after_from(headers)},
        )
    if overloaded or status in (503, 529):
        retry = {"retry-after": retry_after_from(headers)} if "retry-after" in headers else {}
        return GatewayError(
            503,
            "provider_overloaded",
            f"provider '{provider}' is overloaded: {text}",
            headers=retry,
        )
    if status in (401, 403):
        # Never pass the provider's message on: some echo part of the upstream key.
        return GatewayError(
            502,
            "provider_auth_failed",
            f"provider '{provider}' rejected the gateway's credentials (HTTP {status})",
        )
    if context_length or (status in (400, 413, 422) and _CONTEXT_LENGTH.search(text)):
        return GatewayError(
            400, "context_length_exceeded", f"provider '{provider}': {text}", param or "messages"
        )
    if status in (400, 422):
        return GatewayError(
            400, "provider_invalid_request", f"provider '{provider}': {text}", param
        )
    if status == 413:
        return GatewayError(413, "payload_too_large", f"provider '{provider}': {text}")
    if status in (408, 504):
        return GatewayError(504, "provider_timeout", f"provider '{provider}' timed out: {text}")
    return GatewayError(
        502, "provider_error", f"provider '{provider}' failed with HTTP {status}: {text}"
    )


def response_too_large(provider: str, limit: int) -> GatewayError:
    """The 502 for a whole answer larger than the response buffer (`limits.buffer_bytes`)."""
    return GatewayError(
        502,
        "provider_response_too_large",
        f"provider '{provider}' answered with more than the gateway's response buffer of "
        f"{limit} bytes",
    )


def malformed_response(provider: str, what: str) -> GatewayError:
    """The 502 for provider output the gateway cannot understand."""
    return GatewayError(
        502, "malformed_provider_response", f"provider '{provider}' sent {what[:200]}"
    )


def parse_json_error(body: bytes) -> tuple[str, dict[str, Any]]:
    """Best-effort (message, error object) from a JSON error body of any common shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = body[:200].decode("utf-8", "replace").strip()
        return (f"non-JSON error body: {snippet}" if snippet else "empty error body"), {}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # Gemini sometimes wraps errors in a list
    if not isinstance(data, dict):
        return "unrecognized error body", {}
    error = data.get("error", data)
    if isinstance(error, str):
        return error, data
    if not isinstance(error, dict):
        return "unrecognized error body", {}
    message = error.get("message") or data.get("message") or "no message"
    return str(message), error
