"""The gateway's error model: one exception type and its OpenAI-style JSON body.

Every failure a client can see is a `GatewayError` carrying the HTTP status, the
OpenAI error `type` and a stable `code`. Messages must never include secrets.
"""

from __future__ import annotations

import orjson

# OpenAI-style error `type` for each status this gateway returns.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    426: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class GatewayError(Exception):
    """A client-visible failure with an HTTP status and an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        """The OpenAI error `type` for this status."""
        return ERROR_TYPES.get(self.status, "server_error")

    def body(self) -> bytes:
        """The JSON body `{"error": {"message", "type", "param", "code"}}`."""
        return error_body(self.message, self.type, self.param, self.code)

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.code!r}, {self.message!r})"


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    """Serialize an OpenAI-style error body."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def bad_request(code: str, message: str, param: str | None = None) -> GatewayError:
    """A 400 validation error."""
    return GatewayError(400, code, message, param)


def internal_error() -> GatewayError:
    """The 500 a client sees when the processor itself failed unexpectedly."""
    return GatewayError(
        500, "internal_error", "the gateway failed to process this request; it has been logged"
    )
