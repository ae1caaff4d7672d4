"""The fake Bedrock Runtime over real HTTP, driven by requests the Bedrock adapter signs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from pydantic import SecretStr

from extproc.config.credentials import AwsCredentials
from extproc.config.schema import ProviderConfig, ProviderType
from extproc.dev.fakes import FakeProviderServer
from extproc.dev.fakes.bedrock import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_SECRET_ACCESS_KEY,
    FakeAwsKey,
    set_credentials,
)
from extproc.providers.base import Usage
from extproc.providers.bedrock.adapter import BedrockAdapter
from extproc.providers.bedrock.sigv4 import sign_headers
from tests.unit.adapters import prepare

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
CREDS = AwsCredentials(DEFAULT_ACCESS_KEY_ID, SecretStr(DEFAULT_SECRET_ACCESS_KEY))
TRICKY_TEXT = "hi 👩🏽‍💻 שלום مرحبا zero\u200bwidth\u200d e\u0301 漢字 🇺🇦"


@pytest.fixture
def fake(server: FakeProviderServer) -> Iterator[FakeProviderServer]:
    server.clear()
    previous = set_credentials(FakeAwsKey())
    yield server
    set_credentials(previous)
    server.clear()


def send(
    fake: FakeProviderServer,
    *messages: Any,
    stream: bool = False,
    creds: AwsCredentials = CREDS,
    model: str = MODEL_ID,
    base_path: str = "",
    **fields: Any,
) -> tuple[BedrockAdapter, httpx.Response]:
    """Translate and sign an OpenAI chat body with the adapter, then POST it to the fake."""
    provider = ProviderConfig(
        name="fake-bedrock",
        type=ProviderType.BEDROCK,
        base_url=fake.base_url + base_path,
        aws_region="us-east-1",
    )
    adapter = BedrockAdapter(provider, creds, model, 4096)
    body = {
        "model": "client-model",
        "messages": [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages],
        "stream": stream,
        **fields,
    }
    out = prepare(adapter, body)
    response = httpx.post(
        fake.base_url + out.path, content=out.body, headers=out.set_headers, timeout=5
    )
    return adapter, response


def signed_post(
    fake: FakeProviderServer,
    path: str,
    body: bytes,
    *,
    send_path: str | None = None,
    send_body: bytes | None = None,
    now: datetime | None = None,
) -> httpx.Response:
    """Sign (path, body) by hand, then send possibly different bytes."""
    headers = sign_headers(
        CREDS,
        "us-east-1",
        "bedrock",
        "POST",
        fake.base_url + path,
        {"host": f"{fake.host}:{fake.port}", "content-type": "application/json"},
        body,
        now,
    )
    del headers["host"]
    return httpx.post(
        fake.base_url + (send_path or path),
        content=send_body if send_body is not None else body,
        headers=headers,
        timeout=5,
    )


def decode_frames(data: bytes) -> list[tuple[dict[str, Any], Any]]:
    """(headers, JSON payload) of each event stream message, decoded by botocore."""
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(dict(m.headers), orjson.loads(m.payload)) for m in buffer]


def event_types(frames: list[tuple[dict[str, Any], Any]]) -> list[str]:
    return [h.get(":event-type") or h.get(":exception-type") for h, _ in frames]


def aws_error(response: httpx.Response) -> tuple[int, str, str]:
    error_type = response.headers["x-amzn-errortype"].split(":", 1)[0]
    return response.status_code, error_type, response.json()["message"]


# -- Converse --------------------------------------------------------------------------------


def test_converse_echo(fake: FakeProviderServer) -> None:
    adapter, response = send(
        fake, {"role": "system", "content": "Be brief."}, "hello " + TRICKY_TEXT
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    reply = "echo: hello " + TRICKY_TEXT
    words_in = len(("Be brief. hello " + TRICKY_TEXT).split())
    assert response.json() == {
        "output": {"message": {"role": "assistant", "content": [{"text": reply}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": words_in,
            "outputTokens": len(reply.split()),
            "totalTokens": words_in + len(reply.split()),
        },
        "metrics": {"latencyMs": 1},
    }
    completion = orjson.loads(adapter.response_body(response.content).body)
    assert completion["choices"][0]["message"]["content"] == reply
    assert completion["model"] == MODEL_ID  # Converse names no model: the target's
    [recorded] = fake.requests
    assert recorded.path == f"/model/{MODEL_ID}/converse"
    assert recorded.header("authorization", "").startswith("AWS4-HMAC-SHA256 Credential=")


def test_reply_tool_calls_and_stop_reason(fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        reply="Sure.", tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]
    )
    adapter, response = send(
        fake,
        "weather?",
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
    )
    body = response.json()
    assert body["output"]["message"]["content"] == [
        {"text": "Sure."},
        {
            "toolUse": {
                "toolUseId": "tooluse_fake_1_0",
                "name": "get_weather",
                "input": {"city": "Paris"},
            }
        },
    ]
    assert body["stopReason"] == "tool_use"
    message = orjson.loads(adapter.response_body(response.content).body)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    fake.set_behaviour(stop_reason="guardrail_intervened")
    assert send(fake, "hi")[1].json()["stopReason"] == "guardrail_intervened"


def test_echo_skips_tool_result_turns(fake: FakeProviderServer) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    _, response = send(
        fake,
        "first question",
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "result"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["output"]["message"]["content"] == [{"text": "echo: first question"}]


@pytest.mark.parametrize(
    "model",
    [
        MODEL_ID,
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0",
    ],
)
def test_encoded_model_ids_and_base_path_verify(fake: FakeProviderServer, model: str) -> None:
    _, response = send(fake, "hi", model=model, base_path="/proxy/bedrock")
    assert response.status_code == 200, response.text
    assert fake.requests[0].path == f"/proxy/bedrock/model/{model}/converse"


# -- ConverseStream --------------------------------------------------------------------------


def test_converse_stream_frames(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_chunks=["Hel", "lo ", "👋"])
    adapter, response = send(fake, "hi", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    frames = decode_frames(response.content)
    assert event_types(frames) == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert all(h[":message-type"] == "event" for h, _ in frames)
    assert all(h[":content-type"] == "application/json" for h, _ in frames)
    assert frames[0][1]["role"] == "assistant"
    assert [p["delta"]["text"] for _, p in frames[1:4]] == ["Hel", "lo ", "👋"]
    assert frames[5][1] == {"stopReason": "end_turn"}
    assert frames[6][1]["usage"] == {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}
    assert fake.stream_finished == 1

    translated = adapter.stream_chunk(response.content, True)
    sse = translated.body.decode()
    assert '"content":"Hel"' in sse and sse.endswith("data: [DONE]\n\n")
    assert translated.usage == Usage(1, 2, 3)


def test_converse_stream_default_echo_through_the_adapter(fake: FakeProviderServer) -> None:
    adapter, response = send(fake, TRICKY_TEXT, stream=True)
    out = b""
    for i in range(0, len(response.content), 7):
        out += adapter.stream_chunk(response.content[i : i + 7], False).body
    out += adapter.stream_chunk(b"", True).body
    content = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in out.decode().split("\n\n")
        if line.startswith("data: {")
    )
    assert content == "echo: " + TRICKY_TEXT


def test_converse_stream_tool_calls(fake: FakeProviderServer) -> None:
    fake.set_behaviour(tool_calls=[{"name": "lookup", "arguments": {"q": "Zürich", "n": 3}}])
    _, response = send(
        fake,
        "find it",
        stream=True,
        tools=[{"type": "function", "function": {"name": "lookup"}}],
    )
    frames = decode_frames(response.content)
    assert event_types(frames) == [
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert frames[1][1] == {
        "contentBlockIndex": 0,
        "start": {"toolUse": {"toolUseId": "tooluse_fake_1_0", "name": "lookup"}},
    }
    fragments = "".join(p["delta"]["toolUse"]["input"] for _, p in frames[2:4])
    assert orjson.loads(fragments) == {"q": "Zürich", "n": 3}
    assert frames[5][1] == {"stopReason": "tool_use"}


def test_stream_error_after(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_chunks=["a", "b", "c"], stream_error_after=2)
    adapter, response = send(fake, "hi", stream=True)
    frames = decode_frames(response.content)
    assert event_types(frames) == ["messageStart", "contentBlockDelta", "modelStreamErrorException"]
    assert frames[2][0][":message-type"] == "exception"
    assert frames[2][1] == {"message": "The fake provider injected a stream error."}
    sse = adapter.stream_chunk(response.content, True).body.decode()
    assert '"code":"provider_error"' in sse and sse.endswith("data: [DONE]\n\n")


def test_stream_truncate_after(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_chunks=["a", "b"], stream_truncate_after=3)
    adapter, response = send(fake, "hi", stream=True)
    buffer = EventStreamBuffer()
    buffer.add_data(response.content)
    assert len(list(buffer)) == 3  # the fourth frame is cut in half
    sse = adapter.stream_chunk(response.content, True).body.decode()
    assert "ended mid-frame" in sse and sse.endswith("data: [DONE]\n\n")


# -- injected errors -------------------------------------------------------------------------

AWS_ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


@pytest.mark.parametrize(("status", "error_type"), sorted(AWS_ERROR_TYPES.items()))
def test_injected_errors_are_bedrock_shaped(
    fake: FakeProviderServer, status: int, error_type: str
) -> None:
    fake.set_behaviour(status=status, error_headers={"retry-after": "3"})
    _, response = send(fake, "hi")
    code, kind, message = aws_error(response)
    assert (code, kind) == (status, error_type)
    assert message
    assert response.headers["retry-after"] == "3"


def test_injected_error_body_verbatim(fake: FakeProviderServer) -> None:
    body = b'{"message": "Input is too long for requested model."}'
    fake.set_behaviour(status=400, error_body=body, fail_times=1)
    adapter, response = send(fake, "hi")
    assert response.content == body
    error = adapter.response_error(response.status_code, dict(response.headers), response.content)
    assert (error.status, error.code) == (400, "context_length_exceeded")
    assert send(fake, "hi")[1].status_code == 200


def test_malformed_success_body(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=200, error_body=b"<html>oops</html>")
    _, response = send(fake, "hi")
    assert response.status_code == 200 and response.content == b"<html>oops</html>"


# -- signature checks ------------------------------------------------------------------------

PATH = f"/model/{quote(MODEL_ID, safe='')}/converse"
BODY = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]})


def test_hand_signed_request_is_accepted(fake: FakeProviderServer) -> None:
    assert signed_post(fake, PATH, BODY).status_code == 200


@pytest.mark.parametrize(
    ("change", "error_type", "words"),
    [
        ({"send_body": BODY.replace(b"hi", b"ho")}, "InvalidSignatureException", "does not match"),
        (
            {"send_path": PATH.replace("haiku", "opus")},
            "InvalidSignatureException",
            "does not match",
        ),
        (
            {"now": datetime.now(UTC) - timedelta(minutes=10)},
            "InvalidSignatureException",
            "expired",
        ),
    ],
    ids=["body", "path", "stale-date"],
)
def test_tampered_requests_are_403(
    fake: FakeProviderServer, change: dict[str, Any], error_type: str, words: str
) -> None:
    response = signed_post(fake, PATH, BODY, **change)
    status, kind, message = aws_error(response)
    assert (status, kind) == (403, error_type)
    assert words in message


def test_unsigned_request_is_403(fake: FakeProviderServer) -> None:
    response = httpx.post(fake.base_url + PATH, content=BODY, timeout=5)
    assert aws_error(response)[:2] == (403, "MissingAuthenticationTokenException")


def test_unknown_key_is_unrecognized(fake: FakeProviderServer) -> None:
    other = AwsCredentials("AKIDSOMEONEELSE", SecretStr(DEFAULT_SECRET_ACCESS_KEY))
    _, response = send(fake, "hi", creds=other)
    status, kind, message = aws_error(response)
    assert (status, kind) == (403, "UnrecognizedClientException")
    assert message == "The security token included in the request is invalid."
    adapter = BedrockAdapter(
        ProviderConfig(
            name="b", type=ProviderType.BEDROCK, base_url="http://x", aws_region="us-east-1"
        ),
        other,
        MODEL_ID,
        4096,
    )
    prepare(adapter, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    error = adapter.response_error(status, dict(response.headers), response.content)
    assert (error.status, error.code) == (502, "provider_auth_failed")


def test_wrong_secret_is_signature_mismatch(fake: FakeProviderServer) -> None:
    wrong = AwsCredentials(DEFAULT_ACCESS_KEY_ID, SecretStr("not-the-secret"))
    _, response = send(fake, "hi", creds=wrong)
    assert aws_error(response)[:2] == (403, "InvalidSignatureException")


def test_session_token_credentials(fake: FakeProviderServer) -> None:
    set_credentials(FakeAwsKey("ASIATEMPFAKE", "temp-secret", "the-session-token", "us-east-1"))
    temp = AwsCredentials("ASIATEMPFAKE", SecretStr("temp-secret"), SecretStr("the-session-token"))
    assert send(fake, "hi", creds=temp)[1].status_code == 200
    no_token = AwsCredentials("ASIATEMPFAKE", SecretStr("temp-secret"))
    assert aws_error(send(fake, "hi", creds=no_token)[1])[:2] == (
        403,
        "UnrecognizedClientException",
    )


def test_region_is_checked_when_configured(fake: FakeProviderServer) -> None:
    set_credentials(FakeAwsKey(region="eu-west-1"))
    status, kind, message = aws_error(send(fake, "hi")[1])
    assert (status, kind) == (403, "InvalidSignatureException")
    assert "region" in message


# -- body checks -----------------------------------------------------------------------------


def raw_signed(fake: FakeProviderServer, converse: dict[str, Any]) -> httpx.Response:
    return signed_post(fake, PATH, orjson.dumps(converse))


@pytest.mark.parametrize(
    ("converse", "words"),
    [
        ({"messages": []}, "must not be empty"),
        ({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}, "start with a user"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"text": "a"}]},
                    {"role": "user", "content": [{"text": "b"}]},
                ]
            },
            "alternate",
        ),
        ({"messages": [{"role": "user", "content": [{"text": "  "}]}]}, "blank"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"toolResult": {"toolUseId": "x", "content": [{"text": "r"}]}}],
                    }
                ]
            },
            "toolConfig field must be defined",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}], "model": "m"},
            "unknown field",
        ),
        (
            {
                "messages": [{"role": "user", "content": [{"text": "x"}]}],
                "inferenceConfig": {"topK": 3},
            },
            "inferenceConfig",
        ),
        (
            {
                "messages": [{"role": "user", "content": [{"text": "x"}]}],
                "toolConfig": {"tools": [], "toolChoice": {"auto": {}}},
            },
            "toolConfig.tools",
        ),
    ],
)
def test_invalid_converse_bodies_are_validation_errors(
    fake: FakeProviderServer, converse: dict[str, Any], words: str
) -> None:
    status, kind, message = aws_error(raw_signed(fake, converse))
    assert (status, kind) == (400, "ValidationException")
    assert words in message


def test_unknown_operation(fake: FakeProviderServer) -> None:
    response = httpx.get(fake.base_url + PATH, timeout=5)
    assert aws_error(response)[:2] == (404, "UnknownOperationException")
