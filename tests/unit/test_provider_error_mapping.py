"""Unit tests of provider error → client error mapping (rules in providers/errors.py's brief)."""

from __future__ import annotations

import orjson
import pytest

from extproc.providers.errors import provider_error, retry_after_from
from extproc.providers.openai.errors import map_openai_error


@pytest.mark.parametrize(
    ("status", "expected_status", "code"),
    [
        (400, 400, "provider_invalid_request"),
        (401, 502, "provider_auth_failed"),
        (403, 502, "provider_auth_failed"),
        (404, 502, "provider_error"),
        (408, 504, "provider_timeout"),
        (413, 413, "payload_too_large"),
        (422, 400, "provider_invalid_request"),
        (429, 429, "rate_limit_exceeded"),
        (500, 502, "provider_error"),
        (502, 502, "provider_error"),
        (503, 503, "provider_overloaded"),
        (504, 504, "provider_timeout"),
        (529, 503, "provider_overloaded"),
    ],
)
def test_status_mapping(status: int, expected_status: int, code: str) -> None:
    error = provider_error(status, "something", "p1")
    assert (error.status, error.code) == (expected_status, code)
    assert "p1" in error.message


def test_auth_failures_never_echo_the_provider_message() -> None:
    error = provider_error(401, "Incorrect API key provided: sk-abc123", "p1")
    assert "sk-abc123" not in error.message


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 4097 tokens",
        "prompt is too long: 210000 tokens > 200000 maximum",
        "Input is too long for requested model.",
        "The input token count (1200000) exceeds the maximum number of tokens allowed",
    ],
)
def test_context_length_wording(message: str) -> None:
    error = provider_error(400, message, "p")
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, "12"),
        ({"retry-after-ms": "2500"}, "2"),
        ({}, "1"),
        ({"retry-after": "soon"}, "1"),
    ],
)
def test_retry_after(headers: dict[str, str], expected: str) -> None:
    assert retry_after_from(headers) == expected
    assert provider_error(429, "slow down", "p", headers=headers).headers["retry-after"] == expected


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty error body"),
        (b"<html>Bad gateway</html>", "non-JSON error body: <html>Bad gateway</html>"),
        (b'[{"error": {"message": "wrapped"}}]', "wrapped"),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"message": "top-level"}', "top-level"),
        (b"42", "unrecognized error body"),
    ],
)
def test_error_bodies_of_any_shape(body: bytes, fragment: str) -> None:
    error = map_openai_error(500, {}, body, "p")
    assert error.status == 502
    assert fragment in error.message


def test_openai_shaped_error_keeps_param_and_code() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": "too long",
                "type": "x",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
    )
    error = map_openai_error(400, {}, body, "p")
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
