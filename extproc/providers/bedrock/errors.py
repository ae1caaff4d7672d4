"""AWS errors (`x-amzn-errortype` header or `__type`, `{"message"}` body, in-stream `exception`
messages) → the gateway's errors; the rules themselves are `providers.errors`.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

from extproc.errors import GatewayError
from extproc.providers.errors import parse_json_error, provider_error


def response_error(
    status: int, headers: dict[str, str], body: bytes, provider: str
) -> GatewayError:
    """The client-facing error for a Bedrock error response."""
    message, body_type = _error_details(body)
    error_type = _error_type(_header(headers, "x-amzn-errortype")) or body_type
    return bedrock_error(provider, error_type, message, status, headers)


def stream_exception(exception_type: str, payload: bytes, provider: str) -> GatewayError:
    """The error for an in-stream `exception` message (`:exception-type` header, JSON payload)."""
    message, _ = _error_details(payload)
    return bedrock_error(provider, _error_type(exception_type), message, None, {})


# AWS error type → the HTTP status whose client-facing mapping applies (see errors.py).
_ERROR_STATUS: Final[dict[str, int]] = {
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 429,
    "ServiceUnavailableException": 503,
    "ModelNotReadyException": 503,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "IncompleteSignatureException": 403,
    "MissingAuthenticationTokenException": 403,
    "ExpiredTokenException": 403,
    "ValidationException": 400,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "InternalServerException": 500,
    "ModelErrorException": 424,
    "ModelStreamErrorException": 424,
}


_CONTEXT_LENGTH: Final = re.compile(
    r"too long|too many (input )?tokens|max(imum)?[ _]?tokens|context (length|window)",
    re.IGNORECASE,
)


def bedrock_error(
    provider: str,
    error_type: str,
    message: str,
    status: int | None,
    headers: dict[str, str],
) -> GatewayError:
    """The client-facing error for an AWS error type (e.g. `ThrottlingException`) or status."""
    mapped = _ERROR_STATUS.get(error_type) or status or 502
    if mapped == 424:  # the model behind Bedrock failed; keep that visible in the message
        message = f"{error_type or 'model error'}: {message}"
    return provider_error(
        mapped,
        message,
        provider,
        headers=headers,
        context_length=mapped == 400 and bool(_CONTEXT_LENGTH.search(message)),
    )


def _error_type(value: str | None) -> str:
    """`ThrottlingException` from `ThrottlingException:http://...`, `ns#Type` or camelCase."""
    if not value:
        return ""
    value = value.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return value[:1].upper() + value[1:]


def _error_details(body: bytes) -> tuple[str, str]:
    """(message, error type from `__type`/`code`) of an AWS JSON error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        message = data.get("message") or data.get("Message")
        raw_type = data.get("__type") or data.get("code")
        return (
            message if isinstance(message, str) and message else "no message",
            _error_type(raw_type) if isinstance(raw_type, str) else "",
        )
    return parse_json_error(body)[0], ""


def _header(headers: dict[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    return next((v for k, v in headers.items() if k.lower() == name), None)
