"""Anthropic errors (`{"type": "error", "error": {type, message}}`) → the gateway's errors.

Used for error responses, for an error object inside a 2xx answer and for a stream's `error`
event; the rules themselves are `providers.errors`.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

from extproc.errors import GatewayError
from extproc.providers.errors import malformed_response, provider_error

# The HTTP status Anthropic documents for each error type (used for in-stream errors).
ERROR_STATUSES: Final[dict[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
# Statuses whose meaning holds even when the body is not Anthropic's (a proxy's page).
_STATUS_SPEAKS_FOR_ITSELF: Final = frozenset({401, 403, 408, 413, 429, 503, 504, 529})
_CONTEXT_LENGTH: Final = re.compile(
    r"prompt is too long|exceeds? (the )?context (limit|window)|context window", re.IGNORECASE
)


def response_error(
    status: int, headers: dict[str, str], body: bytes, provider: str
) -> GatewayError:
    """The client-facing error for an Anthropic error response."""
    error = error_object(body)
    if error is not None:
        return map_anthropic_error(status, headers, error[0], error[1], provider)
    # Not Anthropic's shape: an HTML page from a proxy, an empty body, ...
    snippet = body[:200].decode("utf-8", "replace").strip()
    what = f"non-JSON error body: {snippet}" if snippet else "empty error body"
    if status in _STATUS_SPEAKS_FOR_ITSELF or status >= 500:
        return provider_error(status, what, provider, headers=headers)
    return malformed_response(provider, f"HTTP {status} with an unreadable body")


def typed_error(error_type: str, message: str, provider: str) -> GatewayError:
    """The error for an error object without an HTTP status (in a 2xx body or a stream)."""
    status = ERROR_STATUSES.get(error_type, 500)
    return map_anthropic_error(status, {}, error_type, message, provider)


def map_anthropic_error(
    status: int, headers: dict[str, str], error_type: str, message: str, provider: str
) -> GatewayError:
    """The client-facing error for an Anthropic error type and message."""
    if error_type == "rate_limit_error":
        return provider_error(429, message, provider, headers=headers, rate_limited=True)
    if error_type == "overloaded_error":
        return provider_error(529, message, provider, headers=headers, overloaded=True)
    if error_type in ("authentication_error", "permission_error"):
        return provider_error(ERROR_STATUSES[error_type], message, provider, headers=headers)
    if error_type == "invalid_request_error" and status != 413:
        return provider_error(
            400,
            message,
            provider,
            headers=headers,
            context_length=_CONTEXT_LENGTH.search(message) is not None,
        )
    if status < 400:  # an error object inside a 2xx answer
        status = ERROR_STATUSES.get(error_type, 500)
    return provider_error(status, message, provider, headers=headers)


def error_object(body: bytes) -> tuple[str, str] | None:
    """(type, message) of an Anthropic error body, or None when it has another shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return error_fields(data)


def error_fields(data: object) -> tuple[str, str] | None:
    """(type, message) of a parsed Anthropic error payload, or None for another shape."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("type"), str):
        return None
    message = error.get("message")
    return error["type"], message if isinstance(message, str) else ""
