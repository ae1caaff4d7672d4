"""End to end through real Envoy: every validation code, auth errors, limits, timeouts."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import FULL_KEY, LIMITED_KEY, Stack

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "hi"}]


def assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def post(
    stack: Stack,
    body: bytes | dict[str, Any],
    path: str = "/v1/chat/completions",
    key: str | None = FULL_KEY,
    **headers: str,
) -> httpx.Response:
    hdrs = {"content-type": "application/json", **headers}
    if key is not None:
        hdrs["authorization"] = f"Bearer {key}"
    if isinstance(body, dict):
        return httpx.post(f"{stack.base_url}{path}", json=body, headers=hdrs, timeout=30)
    return httpx.post(f"{stack.base_url}{path}", content=body, headers=hdrs, timeout=30)


# Each rule of the design brief's table, sent with the official SDK.
SDK_CASES = [
    ({"temperature": 2.5}, "invalid_temperature", "temperature"),
    ({"temperature": -0.1}, "invalid_temperature", "temperature"),
    ({"max_tokens": 0}, "invalid_max_tokens", "max_tokens"),
    ({"max_tokens": 128_001}, "invalid_max_tokens", "max_tokens"),
    ({"max_completion_tokens": 200_000}, "invalid_max_tokens", "max_completion_tokens"),
    ({"top_p": 0}, "invalid_top_p", "top_p"),
    ({"top_p": 1.5}, "invalid_top_p", "top_p"),
    ({"extra_body": {"top_k": 0}}, "invalid_top_k", "top_k"),
    ({"extra_body": {"timeout": 601}}, "invalid_timeout", "timeout"),
    ({"extra_body": {"timeout": 0}}, "invalid_timeout", "timeout"),
    ({"messages": []}, "empty_messages", "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, "invalid_message", "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_message", "messages[0].role"),
    ({"model": ""}, "invalid_model_id", "model"),
    ({"model": "m" * 257}, "invalid_model_id", "model"),
]


@pytest.mark.parametrize(("fields", "code", "param"), SDK_CASES)
def test_validation_errors_via_sdk(
    stack: Stack, fake: FakeProviderServer, fields: dict[str, Any], code: str, param: str
) -> None:
    kwargs: dict[str, Any] = {"model": "chat-openai", "messages": USER, **fields}
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(**kwargs)
    err = info.value
    assert err.status_code == 400
    assert err.code == code
    assert err.param == param
    assert err.type == "invalid_request_error"
    assert fake.requests == []  # nothing reached the provider


def test_unknown_model_is_404(stack: Stack, fake: FakeProviderServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        stack.client().chat.completions.create(model="no-such-model", messages=USER)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        stack.client().models.retrieve("no-such-model")
    assert fake.requests == []


def test_missing_and_wrong_keys_are_401(stack: Stack, fake: FakeProviderServer) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        stack.client(key="sk-not-a-real-key").chat.completions.create(
            model="chat-openai", messages=USER
        )
    assert info.value.code == "invalid_api_key"
    assert "sk-not-a-real-key" not in str(info.value.body)
    error = assert_openai_error(
        post(stack, {"model": "chat-openai", "messages": USER}, key=None), 401, "invalid_api_key"
    )
    assert error["type"] == "authentication_error"
    response = httpx.get(f"{stack.base_url}/v1/models")
    assert_openai_error(response, 401, "invalid_api_key")
    assert fake.requests == []


def test_model_not_allowed_is_403(stack: Stack, fake: FakeProviderServer) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        stack.client(LIMITED_KEY).chat.completions.create(model="chat-azure", messages=USER)
    assert info.value.code == "model_not_allowed"
    # The allowed model works with the same key.
    stack.client(LIMITED_KEY).chat.completions.create(model="chat-openai", messages=USER)
    assert len(fake.requests) == 1


def test_embeddings_on_a_chat_model(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().embeddings.create(model="chat-openai", input="x")
    assert info.value.code == "invalid_model_kind"
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().embeddings.create(model="embed-openai", input=[])
    assert info.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1,2,3]", "invalid_json"),
        (
            b'{"model": "chat-openai", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
            "invalid_encoding",
        ),
        (
            b'{"model": "chat-openai", "messages": [{"role": "user", "content": "\\udc00"}]}',
            "invalid_encoding",
        ),
        (b'{"model": "chat-openai", "messages": ' + b"[" * 100 + b"]" * 100 + b"}", "invalid_json"),
    ],
)
def test_malformed_bodies(stack: Stack, fake: FakeProviderServer, raw: bytes, code: str) -> None:
    assert_openai_error(post(stack, raw), 400, code)
    assert fake.requests == []


def test_empty_body(stack: Stack) -> None:
    assert_openai_error(post(stack, b""), 400, "invalid_json")


def test_unknown_path_and_wrong_method(stack: Stack) -> None:
    assert_openai_error(post(stack, {}, path="/v1/completions-nope"), 404, "unknown_url")
    response = httpx.get(
        f"{stack.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {FULL_KEY}"}
    )
    assert_openai_error(response, 405, "method_not_allowed")


def test_timeout_header_validation(stack: Stack, fake: FakeProviderServer) -> None:
    body = {"model": "chat-openai", "messages": USER}
    assert_openai_error(post(stack, body, **{"x-gateway-timeout": "abc"}), 400, "invalid_timeout")
    assert_openai_error(post(stack, body, **{"x-gateway-timeout": "0"}), 400, "invalid_timeout")
    assert post(stack, body, **{"x-gateway-timeout": "30"}).status_code == 200


def test_client_timeout_is_enforced_as_504(stack: Stack, fake: FakeProviderServer) -> None:
    fake.set_behaviour(latency_s=3)
    response = post(stack, {"model": "chat-openai", "messages": USER, "timeout": 0.5})
    error = assert_openai_error(response, 504, "provider_timeout")
    assert error["type"] == "timeout_error"
    fake.clear()
    fake.set_behaviour(latency_s=3)
    response = post(
        stack, {"model": "chat-openai", "messages": USER}, **{"x-gateway-timeout": "0.5"}
    )
    assert_openai_error(response, 504, "provider_timeout")


def test_body_over_limit_with_content_length_is_413(stack: Stack, fake: FakeProviderServer) -> None:
    limit = stack.config["limits"]["max_body_bytes"]
    big = (
        b'{"model": "chat-openai", "messages": [{"role": "user", "content": "'
        + b"a" * limit
        + b'"}]}'
    )
    error = assert_openai_error(post(stack, big), 413, "payload_too_large")
    assert error["type"] == "invalid_request_error"
    assert fake.requests == []


def test_chunked_body_over_limit_is_413(stack: Stack, fake: FakeProviderServer) -> None:
    limit = stack.config["limits"]["max_body_bytes"]

    def chunks() -> Any:
        yield b'{"model": "chat-openai", "messages": [{"role": "user", "content": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b'"}]}'

    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=chunks(),
        headers={"authorization": f"Bearer {FULL_KEY}", "content-type": "application/json"},
        timeout=60,
    )
    assert_openai_error(response, 413, "payload_too_large")
    assert fake.requests == []


def test_large_prompt_under_limit_goes_through(stack: Stack, fake: FakeProviderServer) -> None:
    text = "word " * 400_000  # ~2 MB, above gRPC's 4 MB default only once doubled; well past 1 MB
    text = text * 2
    reply = stack.client().chat.completions.create(
        model="chat-openai", messages=[{"role": "user", "content": text}]
    )
    assert reply.choices[0].message.content == "echo: " + text
    assert fake.requests[0].json["messages"][0]["content"] == text


def test_random_garbage_never_500s_or_kills_the_processor(
    stack: Stack, fake: FakeProviderServer
) -> None:
    import random

    rng = random.Random(1234)
    templates = [
        b'{"model": "chat-openai", "messages": [{"role": "user", "content": "hi"}]}',
        b'{"model": "embed-openai", "input": ["a", "b"]}',
    ]
    paths = ["/v1/chat/completions", "/v1/embeddings"]
    for i in range(120):
        body = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(body))
            if op < 0.4:
                body[pos] = rng.randrange(256)
            elif op < 0.7:
                del body[pos]
            else:
                body[pos:pos] = bytes([rng.randrange(256)])
        response = post(stack, bytes(body), path=paths[i % 2])
        assert response.status_code < 500, (bytes(body), response.text)
        if response.status_code != 200:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert stack.processor is not None and stack.processor.poll() is None
    assert httpx.get(f"{stack.base_url}/health").status_code == 200


def test_secrets_never_appear_in_logs_or_metrics(stack: Stack, fake: FakeProviderServer) -> None:
    from tests.e2e.conftest import UPSTREAM_KEYS

    stack.client().chat.completions.create(model="chat-azure", messages=USER)
    with pytest.raises(openai.AuthenticationError):
        stack.client(key="sk-wrong-secret-key").chat.completions.create(
            model="chat-openai", messages=USER
        )
    metrics = httpx.get(f"{stack.admin_url}/metrics").text
    logs = stack.dump_logs(tail=None)
    for secret in [FULL_KEY, LIMITED_KEY, "sk-wrong-secret-key", *UPSTREAM_KEYS.values()]:
        assert secret not in metrics
        assert secret not in logs


# -- the same bad field gets the same answer, whatever provider the model routes to -----------

# An OpenAI, an Anthropic, a Gemini and a Bedrock model of the shared stack.
EVERY_WIRE = ["chat-openai", "chat-anthropic", "chat-gemini", "chat-bedrock"]
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
ASSISTANT_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "[1]"}}
    ],
}
BAD_FIELDS = [
    ({"tools": "x"}, "invalid_request", "tools"),
    ({"tools": [{"type": "function"}]}, "invalid_request", "tools[0].function"),
    ({"tools": [WEATHER], "tool_choice": 5}, "invalid_request", "tool_choice"),
    ({"tool_choice": "auto"}, "invalid_request", "tool_choice"),  # no tools to choose from
    ({"stop": 5}, "invalid_request", "stop"),
    ({"stop": [1]}, "invalid_request", "stop"),
    (
        {"messages": [*USER, ASSISTANT_CALL]},
        "invalid_message",
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        {"messages": [*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
        "invalid_message",
        "messages[1].tool_call_id",
    ),
]


@pytest.mark.parametrize(
    ("fields", "code", "param"), BAD_FIELDS, ids=[c[2] + ":" + c[1] for c in BAD_FIELDS]
)
def test_a_bad_field_gets_one_answer_on_every_wire_api(
    stack: Stack, fake: FakeProviderServer, fields: dict[str, Any], code: str, param: str
) -> None:
    answers = set()
    for model in EVERY_WIRE:
        body = {"model": model, "messages": USER, **fields}
        with pytest.raises(openai.BadRequestError) as info:
            stack.client().chat.completions.create(**body)
        error = info.value.body
        assert isinstance(error, dict)
        assert info.value.response.headers["x-gateway-error"] == code  # the gateway answered
        answers.add((info.value.status_code, error["type"], error["code"], error["param"]))
    assert answers == {(400, "invalid_request_error", code, param)}
    assert fake.requests == []  # refused before any provider was called
