"""Google errors (`{"error": {code, message, status, details}}`) → the gateway's errors.

Used for error responses, for an error payload inside a 2xx answer or a stream event; the rpc
`status` name wins over the HTTP status; the rules themselves are `providers.errors`.
"""

from __future__ import annotations

import math
from typing import Any

from extproc.errors import GatewayError
from extproc.providers.errors import parse_json_error, provider_error


def response_error(
    status: int, headers: dict[str, str], body: bytes, provider: str
) -> GatewayError:
    """The client-facing error for a Google error response."""
    message, error = parse_json_error(body)
    return gemini_error(status, headers, message, error, provider)


# google.rpc.Code names (the `status` of a Google error) → the HTTP status they stand for.
_RPC_STATUS = {
    "INVALID_ARGUMENT": 400,
    # Gemini's FAILED_PRECONDITION is about the caller's account ("User location is not
    # supported", billing): the deployment's problem, not the request's, so fail over.
    "FAILED_PRECONDITION": 502,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def gemini_error(
    status: int, headers: dict[str, str], message: str, error: dict[str, Any], provider: str
) -> GatewayError:
    """Map a Google error (`{"error": {code, message, status, details}}`) to a GatewayError.

    The rpc `status` name wins over the HTTP status (a mid-stream error arrives under a 200);
    "API key not valid" (a 400 INVALID_ARGUMENT) is an authentication failure; a
    RetryInfo.retryDelay in the details stands in for a missing Retry-After header.
    """
    rpc = error.get("status")
    code = error.get("code")
    effective = _RPC_STATUS.get(rpc) if isinstance(rpc, str) else None
    if effective is None:
        if status >= 300:
            effective = status
        elif isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            effective = code
        else:
            effective = 502
    details = error.get("details")
    details = details if isinstance(details, list) else []
    if "API key not valid" in message or any(
        isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
    ):
        effective = 401
    if "retry-after" not in headers:
        delay = _retry_delay(details)
        if delay is not None:
            headers = {**headers, "retry-after": delay}
    return provider_error(effective, message, provider, headers=headers)


def _retry_delay(details: list[Any]) -> str | None:
    """Whole seconds (rounded up, at least 1) of a RetryInfo detail's `retryDelay` ("12s")."""
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    seconds = float(delay[:-1])
                except ValueError:
                    return None
                if math.isfinite(seconds) and seconds >= 0:
                    return str(max(1, math.ceil(seconds)))
    return None


def error_payload(data: Any) -> dict[str, Any] | None:
    """The `error` object of a Google error payload (bare or wrapped in a list), else None."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict) or "error" not in data:
        return None
    error = data["error"]
    return error if isinstance(error, dict) else {"message": str(error)}


def payload_error(error: dict[str, Any], provider: str) -> GatewayError:
    """The GatewayError for an error payload that arrived inside a 2xx answer."""
    message = error.get("message")
    text = message if isinstance(message, str) and message else "no message"
    return gemini_error(200, {}, text, error, provider)
