"""End to end: errors from OpenAI-compatible providers become the gateway's OpenAI errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import orjson
import pytest

from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import FULL_KEY, UPSTREAM_KEYS, Stack, make_stack

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "hi"}]


def openai_error_body(message: str, param: str | None, code: str | None) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return orjson.dumps({"error": error})


def chat(stack: Stack, model: str = "chat-openai") -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": model, "messages": USER},
        headers={"authorization": f"Bearer {FULL_KEY}"},
        timeout=30,
    )


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def test_bad_upstream_credentials_are_a_502_not_a_401(
    stack: Stack, fake: FakeProviderServer
) -> None:
    leaked = "Incorrect API key provided: " + UPSTREAM_KEYS["TEST_OPENAI_KEY"]
    fake.set_behaviour(
        status=401,
        error_body=b'{"error": {"message": "'
        + leaked.encode()
        + b'", "type": "invalid_request_error", '
        b'"param": null, "code": "invalid_api_key"}}',
    )
    with pytest.raises(openai.InternalServerError) as info:
        stack.client().chat.completions.create(model="chat-openai", messages=USER)
    assert info.value.status_code == 502
    assert info.value.code == "provider_auth_failed"
    assert UPSTREAM_KEYS["TEST_OPENAI_KEY"] not in str(info.value.body)


def test_provider_rate_limit_keeps_retry_after(stack: Stack, fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=429, error_headers={"retry-after": "7"})
    response = chat(stack)
    error_of(response, 429, "rate_limit_exceeded")
    assert response.headers["retry-after"] == "7"
    with pytest.raises(openai.RateLimitError):
        stack.client().chat.completions.create(model="chat-openai", messages=USER)


def test_context_length_error_is_a_400(stack: Stack, fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        status=400,
        error_body=openai_error_body(
            "This model's maximum context length is 8192 tokens.",
            "messages",
            "context_length_exceeded",
        ),
    )
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(model="chat-openai", messages=USER)
    assert info.value.code == "context_length_exceeded"
    assert "8192" in info.value.message


def test_other_provider_400_passes_its_message(stack: Stack, fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        status=400,
        error_body=openai_error_body("Invalid value for logit_bias.", "logit_bias", None),
    )
    error = error_of(chat(stack), 400, "provider_invalid_request")
    assert "Invalid value for logit_bias." in error["message"]
    assert error["param"] == "logit_bias"


@pytest.mark.parametrize(
    ("status", "expected", "code"),
    [(500, 502, "provider_error"), (503, 503, "provider_overloaded")],
)
def test_provider_5xx(
    stack: Stack, fake: FakeProviderServer, status: int, expected: int, code: str
) -> None:
    fake.set_behaviour(status=status)
    error_of(chat(stack), expected, code)


def test_html_error_page_is_a_502(stack: Stack, fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=502, error_body=b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    error = error_of(chat(stack), 502, "provider_error")
    assert "non-JSON" in error["message"]


def test_unreachable_provider_is_a_503(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    try:
        stack.fake.stop()  # every provider cluster now points at a closed port
        error_of(chat(stack), 503, "service_unavailable")
    finally:
        stack.stop()


def test_successful_responses_still_pass_through_untouched(
    stack: Stack, fake: FakeProviderServer
) -> None:
    response = chat(stack)
    assert response.status_code == 200
    assert response.json()["id"] == "chatcmpl-fake-1"  # the provider's own body, not re-written


# -- 2xx answers the client cannot use -------------------------------------------------------

HTML_PAGE = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
OPENAI_WIRE = ["chat-openai", "chat-azure", "chat-vllm", "chat-ollama", "chat-together"]


@pytest.mark.parametrize("model", OPENAI_WIRE)
def test_a_200_html_page_is_a_502_not_a_200(
    stack: Stack, fake: FakeProviderServer, model: str
) -> None:
    # A proxy in front of the provider answers 200 with an HTML page: without the check the
    # openai SDK returns a `str` for a chat completion.
    fake.set_behaviour(
        status=200, error_body=HTML_PAGE, error_headers={"content-type": "text/html"}
    )
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(model=model, messages=USER)
    assert info.value.status_code == 502
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "malformed_provider_response"
    assert "text/html" in error["message"] and "application/json" in error["message"]
    assert b"Service temporarily" not in info.value.response.content


def test_a_stream_answered_with_json_is_a_502(stack: Stack, fake: FakeProviderServer) -> None:
    # Asked for an event stream, the provider sent one JSON object: not what the client reads.
    body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})
    fake.set_behaviour(status=200, error_body=body)
    with pytest.raises(openai.APIStatusError) as info:
        list(
            stack.client().chat.completions.create(model="chat-openai", messages=USER, stream=True)
        )
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "malformed_provider_response"


def test_an_unusable_200_counts_against_the_target(stack: Stack, fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        status=200, error_body=HTML_PAGE, error_headers={"content-type": "text/html"}
    )
    chat(stack)
    breakers = httpx.get(f"{stack.admin_url}/breakers", timeout=10).json()
    assert breakers["p-openai/gpt-up"]["consecutive_failures"] == 1


# A response that ends at its headers (no body): ours is sent in the headers answer. A provider
# error gets the gateway's error; a 2xx that needed translating has nothing to translate.
BODYLESS = [
    (503, model, 503, "provider_overloaded", "empty error body")
    for model in ("chat-openai", "chat-anthropic", "chat-gemini", "chat-bedrock")
] + [
    (200, model, 502, "malformed_provider_response", "an empty answer")
    for model in ("chat-anthropic", "chat-gemini", "chat-bedrock")
]


@pytest.mark.parametrize(("sent", "model", "status", "code", "text"), BODYLESS)
def test_an_answer_without_a_body_gets_an_openai_error_body(
    stack: Stack, fake: FakeProviderServer, sent: int, model: str, status: int, code: str, text: str
) -> None:
    fake.set_behaviour(status=sent, error_body=b"")
    error = error_of(chat(stack, model), status, code)
    assert text in error["message"]
