"""Bedrock adapter: SigV4 signing, Converse request translation, responses, errors, streams."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from extproc.config.credentials import AwsCredentials
from extproc.config.schema import ProviderConfig, ProviderType
from extproc.decisions.openai_request import Endpoint
from extproc.dev.fakes.bedrock import FakeAwsKey, verify_signature
from extproc.dev.fakes.eventstream_encoder import encode_message, event_message, exception_message
from extproc.errors import GatewayError
from extproc.providers.base import ResponseMode, Usage
from extproc.providers.bedrock.adapter import BedrockAdapter
from extproc.providers.bedrock.sigv4 import sign_headers
from extproc.providers.tool_ids import call_id_with_signature
from tests.unit import openai_chunks
from tests.unit.adapters import prepare

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
CLIENT_MODEL = "claude-haiku"
CREDS = AwsCredentials("AKIDFAKEBEDROCK", SecretStr("fake-bedrock-secret"))
TOKEN_CREDS = AwsCredentials(
    "ASIAFAKETEMP", SecretStr("temp-secret"), SecretStr("session-token-value")
)
TRICKY_TEXT = "hi 👩🏽‍💻 שלום مرحبا zero\u200bwidth\u200d e\u0301 漢字 🇺🇦"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(64))).decode()


def provider(base_url: str = "https://bedrock-runtime.us-east-1.amazonaws.com") -> ProviderConfig:
    return ProviderConfig(
        name="bedrock-east", type=ProviderType.BEDROCK, base_url=base_url, aws_region="us-east-1"
    )


def new_adapter(
    creds: AwsCredentials = CREDS,
    base_url: str = "https://bedrock-runtime.us-east-1.amazonaws.com",
    model: str = MODEL_ID,
) -> BedrockAdapter:
    return BedrockAdapter(provider(base_url), creds, model, 4096)


def adapter_for(
    *,
    stream: bool = False,
    include_usage: bool = False,
    creds: AwsCredentials = CREDS,
    base_url: str = "https://bedrock-runtime.us-east-1.amazonaws.com",
) -> BedrockAdapter:
    """An adapter that has translated a request, ready for its answer."""
    adapter = new_adapter(creds, base_url)
    fields: dict[str, Any] = {"stream": stream}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}
    prepare(adapter, chat("hello", **fields))
    return adapter


def chat(*messages: Any, **fields: Any) -> dict[str, Any]:
    converted = [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages]
    return {"model": CLIENT_MODEL, "messages": converted, **fields}


def translate(body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    out = prepare(new_adapter(), {**body, "stream": True} if stream else body)
    assert out.body is not None
    parsed: dict[str, Any] = orjson.loads(out.body)
    return parsed


def refused(body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        translate(body)
    return caught.value


def user_text(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


# -- SigV4 -----------------------------------------------------------------------------------

AWS_EXAMPLE = AwsCredentials("AKIDEXAMPLE", SecretStr("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"))
AWS_EXAMPLE_TIME = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)


@pytest.mark.parametrize(
    ("method", "signature"),
    [
        # Signatures published in AWS's SigV4 test suite (get-vanilla, post-vanilla).
        ("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ],
)
def test_signer_matches_aws_test_suite(method: str, signature: str) -> None:
    headers = sign_headers(
        AWS_EXAMPLE,
        "us-east-1",
        "service",
        method,
        "https://example.amazonaws.com/",
        {"host": "example.amazonaws.com"},
        b"",
        AWS_EXAMPLE_TIME,
    )
    assert headers["x-amz-date"] == "20150830T123600Z"
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={signature}"
    )


def reference_signature(
    secret: str,
    region: str,
    raw_path: str,
    headers: dict[str, str],
    body: bytes,
) -> str:
    """SigV4 written from AWS's description, independent of botocore.

    Non-S3 services URI-encode each path segment of the (already encoded) path again.
    """
    amz_date = headers["x-amz-date"]
    names = sorted(headers)
    canonical = "\n".join(
        [
            "POST",
            quote(raw_path, safe="/~"),
            "",
            "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{amz_date[:8]}/{region}/bedrock/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("creds", [CREDS, TOKEN_CREDS], ids=["long-term", "session-token"])
def test_adapter_signature_matches_reference_over_double_encoded_path(
    creds: AwsCredentials,
) -> None:
    out = prepare(new_adapter(creds), chat(TRICKY_TEXT))
    assert out.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert out.body is not None
    signed = {
        "content-type": "application/json",
        "host": "bedrock-runtime.us-east-1.amazonaws.com",
        "x-amz-date": out.set_headers["x-amz-date"],
    }
    if creds.session_token is not None:
        signed["x-amz-security-token"] = creds.session_token.get_secret_value()
        assert out.set_headers["x-amz-security-token"] == "session-token-value"
    expected = reference_signature(
        creds.secret_access_key.get_secret_value(), "us-east-1", out.path, signed, out.body
    )
    day = signed["x-amz-date"][:8]
    assert out.set_headers["authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{day}/us-east-1/bedrock/aws4_request, "
        f"SignedHeaders={';'.join(sorted(signed))}, Signature={expected}"
    )
    assert "host" not in out.set_headers  # Envoy sets it to the signed authority
    assert out.set_headers["content-type"] == "application/json"


def wire_headers(set_headers: dict[str, str], host: str) -> list[tuple[str, str]]:
    """What the upstream receives: our headers, Host, and headers added later (unsigned)."""
    return [
        *set_headers.items(),
        ("host", host),
        ("x-forwarded-proto", "https"),
        ("x-envoy-expected-rq-timeout-ms", "120000"),
    ]


def test_adapter_signature_verifies_in_the_fake() -> None:
    out = prepare(new_adapter(CREDS), chat("hi"))
    assert out.body is not None
    host = "bedrock-runtime.us-east-1.amazonaws.com"
    assert verify_signature("POST", out.path, wire_headers(out.set_headers, host), out.body) is None


def test_session_token_is_sent_and_signed() -> None:
    out = prepare(new_adapter(TOKEN_CREDS), chat("hi"))
    assert out.body is not None
    assert "x-amz-security-token" in out.set_headers["authorization"].split("SignedHeaders=")[1]
    assert "x-amz-security-token" not in out.remove_headers
    key = FakeAwsKey("ASIAFAKETEMP", "temp-secret", "session-token-value")
    headers = wire_headers(out.set_headers, "bedrock-runtime.us-east-1.amazonaws.com")
    assert verify_signature("POST", out.path, headers, out.body, key=key) is None
    without = [(k, v) for k, v in headers if k != "x-amz-security-token"]
    failure = verify_signature("POST", out.path, without, out.body, key=key)
    assert failure is not None and failure.error_type == "UnrecognizedClientException"


def test_client_security_token_is_dropped_without_a_session_token() -> None:
    out = prepare(new_adapter(CREDS), chat("hi"))
    assert "x-amz-security-token" in out.remove_headers
    assert "x-amz-security-token" not in out.set_headers


@pytest.mark.parametrize("tamper", ["body", "path", "date", "host", "content-type", "secret"])
def test_tampered_requests_fail_verification(tamper: str) -> None:
    out = prepare(new_adapter(CREDS), chat("hi"))
    assert out.body is not None
    body, path = out.body, out.path
    headers = dict(out.set_headers, host="bedrock-runtime.us-east-1.amazonaws.com")
    key = FakeAwsKey()
    if tamper == "body":
        body = body.replace(b"hi", b"ho")
    elif tamper == "path":
        path = path.replace("haiku", "sonnet")
    elif tamper == "date":
        signed_at = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
        headers["x-amz-date"] = (signed_at + timedelta(seconds=1)).strftime("%Y%m%dT%H%M%SZ")
    elif tamper == "host":
        headers["host"] = "bedrock-runtime.us-west-2.amazonaws.com"
    elif tamper == "content-type":
        headers["content-type"] = "text/plain"
    else:
        key = FakeAwsKey(secret_access_key="another-secret")
    failure = verify_signature("POST", path, headers.items(), body, key=key)
    assert failure is not None
    assert failure.error_type == "InvalidSignatureException"
    assert failure.message.startswith("The request signature we calculated does not match")


def test_stale_and_future_dates_fail_verification() -> None:
    out = prepare(new_adapter(CREDS), chat("hi"))
    assert out.body is not None
    headers = dict(out.set_headers, host="bedrock-runtime.us-east-1.amazonaws.com")
    now = datetime.now(UTC)
    for shift, words in ((timedelta(minutes=6), "expired"), (-timedelta(minutes=6), "not yet")):
        failure = verify_signature("POST", out.path, headers.items(), out.body, now=now + shift)
        assert failure is not None and words in failure.message
    ok = verify_signature(
        "POST", out.path, headers.items(), out.body, now=now + timedelta(minutes=4)
    )
    assert ok is None


def test_unknown_key_and_missing_authorization() -> None:
    out = prepare(new_adapter(CREDS), chat("hi"))
    assert out.body is not None
    headers = dict(out.set_headers, host="bedrock-runtime.us-east-1.amazonaws.com")
    failure = verify_signature(
        "POST", out.path, headers.items(), out.body, key=FakeAwsKey(access_key_id="AKIDOTHER")
    )
    assert failure is not None and failure.error_type == "UnrecognizedClientException"
    del headers["authorization"]
    failure = verify_signature("POST", out.path, headers.items(), out.body)
    assert failure is not None and failure.error_type == "MissingAuthenticationTokenException"


@pytest.mark.parametrize(
    "model",
    [
        "amazon.nova-lite-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0",
        "custom model ü",
    ],
)
def test_model_ids_are_percent_encoded_as_one_segment(model: str) -> None:
    prov = provider("https://gateway-proxy.example.com:8443/bedrock")
    out = prepare(BedrockAdapter(prov, CREDS, model, 4096), chat("hi"))
    assert out.path == f"/bedrock/model/{quote(model, safe='')}/converse"
    assert out.body is not None
    headers = wire_headers(out.set_headers, "gateway-proxy.example.com:8443")
    assert verify_signature("POST", out.path, headers, out.body) is None


def test_stream_path_and_accept() -> None:
    out = prepare(new_adapter(), chat("hi", stream=True))
    assert out.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    assert out.set_headers["accept"] == "application/vnd.amazon.eventstream"


def test_embeddings_are_unsupported() -> None:
    assert BedrockAdapter.unsupported(Endpoint.CHAT, provider()) is None
    error = BedrockAdapter.unsupported(Endpoint.EMBEDDINGS, provider())
    assert error is not None
    assert (error.status, error.code) == (400, "unsupported_endpoint")
    assert "'bedrock-east'" in error.message


# -- request translation ---------------------------------------------------------------------


def test_system_and_inference_settings() -> None:
    body = chat(
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        "Hi",
        temperature=0.5,
        top_p=0.9,
        max_tokens=100,
        stop=["END", "STOP"],
        top_k=40,
    )
    assert translate(body) == {
        "messages": [user_text("Hi")],
        "system": [{"text": "Be brief."}, {"text": "Use metric units."}],
        "inferenceConfig": {
            "maxTokens": 100,
            "temperature": 0.5,
            "topP": 0.9,
            "stopSequences": ["END", "STOP"],
        },
        "additionalModelRequestFields": {"top_k": 40},
    }


def test_minimal_request_has_no_optional_sections() -> None:
    assert translate(chat("Hi")) == {"messages": [user_text("Hi")]}


def test_max_completion_tokens_wins_and_stop_string_becomes_a_list() -> None:
    body = chat("Hi", max_tokens=10, max_completion_tokens=20, stop="###", temperature=0)
    assert translate(body)["inferenceConfig"] == {
        "maxTokens": 20,
        "temperature": 0,
        "stopSequences": ["###"],
    }


def test_consecutive_same_role_messages_merge() -> None:
    body = chat(
        "one",
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": "four"},
        "five",
    )
    assert translate(body)["messages"] == [
        {"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
        {"role": "assistant", "content": [{"text": "three"}, {"text": "four"}]},
        user_text("five"),
    ]


def test_unicode_passes_byte_exact() -> None:
    out = prepare(new_adapter(CREDS), chat(TRICKY_TEXT))
    assert out.body is not None
    assert TRICKY_TEXT.encode() in out.body


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather by city",
        "parameters": WEATHER_SCHEMA,
    },
}
TOOL_HISTORY = (
    "What is the weather in Paris and Oslo?",
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "5C"}]},
    "Thanks! And tomorrow?",
)


def test_tool_calls_and_results() -> None:
    converse = translate(chat(*TOOL_HISTORY, tools=[WEATHER_TOOL], tool_choice="auto"))
    assert converse["messages"] == [
        user_text("What is the weather in Paris and Oslo?"),
        {
            "role": "assistant",
            "content": [
                {
                    "toolUse": {
                        "toolUseId": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                },
                {
                    "toolUse": {
                        "toolUseId": "call_2",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18C"}]}},
                {"toolResult": {"toolUseId": "call_2", "content": [{"text": "5C"}]}},
                {"text": "Thanks! And tomorrow?"},
            ],
        },
    ]
    assert converse["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "inputSchema": {"json": WEATHER_SCHEMA},
                }
            }
        ],
        "toolChoice": {"auto": {}},
    }


def test_assistant_text_and_tool_call_share_a_turn() -> None:
    message = {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "now", "arguments": ""}}
        ],
    }
    converse = translate(
        chat(
            "time?",
            message,
            {"role": "tool", "tool_call_id": "c", "content": "noon"},
            tools=[{"type": "function", "function": {"name": "now"}}],
        )
    )
    assert converse["messages"][1] == {
        "role": "assistant",
        "content": [
            {"text": "Checking."},
            {"toolUse": {"toolUseId": "c", "name": "now", "input": {}}},
        ],
    }
    # A tool without parameters gets an empty object schema.
    assert converse["toolConfig"]["tools"][0]["toolSpec"] == {
        "name": "now",
        "inputSchema": {"json": {"type": "object", "properties": {}}},
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"tool": {"name": "get_weather"}},
        ),
        (None, None),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if choice is not None:
        fields["tool_choice"] = choice
    config = translate(chat("Hi", **fields))["toolConfig"]
    assert config.get("toolChoice") == expected


def test_tool_choice_none_drops_tools() -> None:
    assert "toolConfig" not in translate(chat("Hi", tools=[WEATHER_TOOL], tool_choice="none"))


def test_tool_choice_none_keeps_tools_when_history_has_tool_blocks() -> None:
    config = translate(chat(*TOOL_HISTORY, tools=[WEATHER_TOOL], tool_choice="none"))["toolConfig"]
    assert [t["toolSpec"]["name"] for t in config["tools"]] == ["get_weather"]
    assert "toolChoice" not in config


def test_tool_history_without_tools_declares_the_used_tools() -> None:
    config = translate(chat(*TOOL_HISTORY))["toolConfig"]
    assert config == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "Tool used earlier in this conversation.",
                    "inputSchema": {"json": {"type": "object"}},
                }
            }
        ]
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"tool_choice": "required"},
        {"tools": [WEATHER_TOOL], "tool_choice": "sometimes"},
        {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function"}},
        {"tools": [{"type": "function", "function": {"name": "x", "parameters": "nope"}}]},
        {"tools": "get_weather"},
    ],
)
def test_invalid_tool_settings_are_400(fields: dict[str, Any]) -> None:
    error = refused(chat("Hi", **fields))
    assert error.status == 400 and error.code == "invalid_request"


def test_other_tool_types_are_unsupported() -> None:
    error = refused(chat("Hi", tools=[{"type": "code_interpreter"}]))
    assert (error.status, error.code, error.param) == (400, "unsupported_parameter", "tools[0]")


@pytest.mark.parametrize(
    ("mime", "expected_format"),
    [
        ("image/png", "png"),
        ("image/jpeg", "jpeg"),
        ("image/jpg", "jpeg"),
        ("image/gif", "gif"),
        ("image/webp", "webp"),
    ],
)
def test_data_url_images_become_bytes(mime: str, expected_format: str) -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image_url",
            "image_url": {"url": f"data:{mime};base64,{PNG_B64}", "detail": "low"},
        },
    ]
    assert translate(chat({"role": "user", "content": content}))["messages"] == [
        {
            "role": "user",
            "content": [
                {"text": "What is this?"},
                {"image": {"format": expected_format, "source": {"bytes": PNG_B64}}},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://example.com/cat.png", "unsupported_parameter"),
        ("http://example.com/cat.png", "unsupported_parameter"),
        (f"data:image/bmp;base64,{PNG_B64}", "unsupported_parameter"),
        ("data:image/png,rawbytes", "unsupported_parameter"),
        ("data:image/png;base64,@@not base64@@", "invalid_message"),
    ],
)
def test_unusable_images_are_400(url: str, code: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    error = refused(chat({"role": "user", "content": content}))
    assert (error.status, error.code) == (400, code)
    where = "messages[0].content[0]"
    assert error.param == (where + ".image_url.url" if code == "unsupported_parameter" else where)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            chat(
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
                    ],
                }
            ),
            "unsupported_parameter",
        ),
        (chat("hi", {"role": "function", "name": "f", "content": "x"}), "unsupported_parameter"),
        (
            chat(
                "hi",
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "f", "arguments": "{}"},
                },
            ),
            "unsupported_parameter",
        ),
        (
            chat(
                "hi",
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{oops"},
                        }
                    ],
                },
            ),
            "invalid_message",
        ),
        (
            chat(
                "hi",
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1]"},
                        }
                    ],
                },
            ),
            "invalid_message",
        ),
        (
            chat(
                "hi",
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "f"}}],
                },
            ),
            "invalid_message",
        ),
        (chat("hi", {"role": "assistant", "tool_calls": "f"}), "invalid_message"),
        (chat("hi", {"role": "tool", "content": "result"}), "invalid_message"),
        (
            chat(
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                },
                "hi",
            ),
            "unsupported_parameter",
        ),
        (chat("hi", n=2), "unsupported_parameter"),
        (chat("hi", stop=[1]), "invalid_request"),
    ],
)
def test_untranslatable_requests_are_400(body: dict[str, Any], code: str) -> None:
    error = refused(body)
    assert (error.status, error.code) == (400, code)


# -- buffered responses ----------------------------------------------------------------------

# Converse `stopReason` values (API reference) → OpenAI `finish_reason`.
STOP_REASONS = [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"),
    ("guardrail_intervened", "content_filter"),
    ("content_filtered", "content_filter"),
    ("malformed_model_output", "stop"),
]


def converse_response(content: list[Any], stop_reason: str = "end_turn") -> bytes:
    return orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason,
            "usage": {"inputTokens": 12, "outputTokens": 7, "totalTokens": 19},
            "metrics": {"latencyMs": 321},
        }
    )


def buffered(body: bytes) -> tuple[dict[str, Any], BedrockAdapter]:
    adapter = adapter_for()
    assert adapter.response_mode(200, {"content-type": "application/json"}) is ResponseMode.BUFFERED
    result: dict[str, Any] = orjson.loads(adapter.response_body(body).body)
    return result, adapter


@pytest.mark.parametrize(("stop_reason", "finish_reason"), STOP_REASONS)
def test_buffered_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    result, _ = buffered(converse_response([{"text": "Hello"}], stop_reason))
    assert result["choices"][0]["finish_reason"] == finish_reason


def test_buffered_text_and_usage() -> None:
    result, adapter = buffered(converse_response([{"text": "Hel"}, {"text": "lo " + TRICKY_TEXT}]))
    assert result["object"] == "chat.completion"
    assert result["model"] == MODEL_ID  # Converse names no model: the target's
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello " + TRICKY_TEXT, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert result["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    assert adapter.response_body(converse_response([{"text": "x"}])).usage == Usage(12, 7, 19)


def test_buffered_tool_use() -> None:
    content = [
        {"reasoningContent": {"reasoningText": {"text": "thinking"}}},
        {"toolUse": {"toolUseId": "tooluse_a", "name": "get_weather", "input": {"city": "Zürich"}}},
        {"toolUse": {"toolUseId": "tooluse_b", "name": "now", "input": {}}},
    ]
    result, _ = buffered(converse_response(content, "tool_use"))
    message = result["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "tooluse_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Zürich"}'},
        },
        {"id": "tooluse_b", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]
    assert orjson.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Zürich"}
    assert result["choices"][0]["finish_reason"] == "tool_calls"


def test_buffered_empty_content_is_empty_text() -> None:
    result, _ = buffered(converse_response([], "max_tokens"))
    assert result["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"<html><body>502 Bad Gateway</body></html>",
        b"[]",
        b'{"output": {}}',
        b'{"output": {"message": {"content": "text"}}, "stopReason": "end_turn"}',
        orjson.dumps(
            {"output": {"message": {"content": []}}, "usage": {"inputTokens": 1, "outputTokens": 1}}
        ),
        converse_response([{"text": "x"}]).replace(b'"end_turn"', b"5"),
        orjson.dumps({"output": {"message": {"content": []}}, "stopReason": "end_turn"}),
        orjson.dumps(
            {
                "output": {"message": {"content": []}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": "1", "outputTokens": 2},
            }
        ),
        converse_response([5]),
        converse_response([{"text": 5}]),
        converse_response([{"toolUse": {"name": "x"}}]),
        converse_response([{"toolUse": "x"}]),
    ],
)
def test_malformed_buffered_bodies_are_502(body: bytes) -> None:
    adapter = adapter_for()
    with pytest.raises(GatewayError) as caught:
        adapter.response_body(body)
    assert (caught.value.status, caught.value.code) == (502, "malformed_provider_response")


# -- errors ----------------------------------------------------------------------------------


def aws_error_type(name: str) -> str:
    return f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"


@pytest.mark.parametrize(
    ("status", "error_type", "message", "expected_status", "expected_code"),
    [
        (429, "ThrottlingException", "Too many requests, please wait.", 429, "rate_limit_exceeded"),
        (429, None, "slow down", 429, "rate_limit_exceeded"),
        (400, "ServiceQuotaExceededException", "quota", 429, "rate_limit_exceeded"),
        (503, "ServiceUnavailableException", "unavailable", 503, "provider_overloaded"),
        (503, None, "unavailable", 503, "provider_overloaded"),
        (429, "ModelNotReadyException", "model is loading", 503, "provider_overloaded"),
        (403, "AccessDeniedException", "not authorized for AKIA123", 502, "provider_auth_failed"),
        (403, "UnrecognizedClientException", "invalid token", 502, "provider_auth_failed"),
        (403, "InvalidSignatureException", "mismatch", 502, "provider_auth_failed"),
        (401, None, "who are you", 502, "provider_auth_failed"),
        (
            400,
            "ValidationException",
            "Input is too long for requested model.",
            400,
            "context_length_exceeded",
        ),
        (
            400,
            "ValidationException",
            "prompt is too long: 250000 tokens > 200000 maximum",
            400,
            "context_length_exceeded",
        ),
        (
            400,
            "ValidationException",
            "max_tokens: 9000 > 8192 maximum tokens allowed",
            400,
            "context_length_exceeded",
        ),
        (
            400,
            "ValidationException",
            "Malformed input request: extraneous key",
            400,
            "provider_invalid_request",
        ),
        (400, None, "bad request", 400, "provider_invalid_request"),
        (404, "ResourceNotFoundException", "Model not found", 502, "provider_error"),
        (404, None, "no such thing", 502, "provider_error"),
        (408, "ModelTimeoutException", "Model timed out", 504, "provider_timeout"),
        (408, None, "timeout", 504, "provider_timeout"),
        (500, "InternalServerException", "oops", 502, "provider_error"),
        (500, None, "oops", 502, "provider_error"),
        (424, "ModelErrorException", "the model failed", 502, "provider_error"),
    ],
)
def test_error_mapping(
    status: int,
    error_type: str | None,
    message: str,
    expected_status: int,
    expected_code: str,
) -> None:
    headers = {"content-type": "application/json"}
    if error_type is not None:
        headers["x-amzn-errortype"] = aws_error_type(error_type)
    error = adapter_for().response_error(status, headers, orjson.dumps({"message": message}))
    assert (error.status, error.code) == (expected_status, expected_code)
    if expected_status == 429:
        assert error.headers["retry-after"] == "1"
    if expected_code == "provider_auth_failed":
        assert message not in error.message  # provider messages may echo key material


def test_error_type_from_body_and_mixed_case_header() -> None:
    adapter = adapter_for()
    body = b'{"__type": "com.amazon.coral.availability#ThrottlingException", "message": "x"}'
    assert adapter.response_error(400, {}, body).status == 429
    headers = {"X-Amzn-ErrorType": aws_error_type("ModelTimeoutException")}
    assert adapter.response_error(400, headers, b'{"Message": "slow"}').status == 504


def test_retry_after_is_honoured() -> None:
    headers = {"x-amzn-errortype": aws_error_type("ThrottlingException"), "retry-after": "7"}
    error = adapter_for().response_error(429, headers, b'{"message": "x"}')
    assert error.headers == {"retry-after": "7"}


def test_non_json_error_body() -> None:
    error = adapter_for().response_error(502, {}, b"<html>Bad Gateway</html>")
    assert (error.status, error.code) == (502, "provider_error")
    assert "Bad Gateway" in error.message


def test_error_responses_are_buffered() -> None:
    assert adapter_for(stream=True).response_mode(429, {}) is ResponseMode.BUFFERED
    assert adapter_for().response_mode(500, {}) is ResponseMode.BUFFERED


# -- streams ---------------------------------------------------------------------------------


def events(*frames: bytes) -> bytes:
    return b"".join(frames)


USAGE = {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7}
TEXT_STREAM = events(
    event_message("messageStart", {"role": "assistant", "p": "abcd"}),
    event_message(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "ab"}
    ),
    event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo 👋"}}),
    event_message("contentBlockStop", {"contentBlockIndex": 0}),
    event_message("messageStop", {"stopReason": "end_turn"}),
    event_message("metadata", {"usage": USAGE, "metrics": {"latencyMs": 100}}),
)


def parse_sse(data: bytes) -> list[Any]:
    """SSE data events as JSON (without `id`/`created`), `[DONE]` as the string."""
    return openai_chunks.parse_sse(data)


def chunk(delta: dict[str, Any], finish: str | None = None, usage: bool = False) -> dict[str, Any]:
    return openai_chunks.chunk(MODEL_ID, delta, finish, usage)


def run_stream(
    chunks: list[bytes], *, include_usage: bool = False, eos_with_last: bool = False
) -> tuple[list[Any], Usage | None]:
    """The translated events, and the usage the last record reported."""
    adapter = adapter_for(stream=True, include_usage=include_usage)
    assert adapter.response_mode(200, {}) is ResponseMode.STREAMED
    out = b""
    usage = None
    for index, piece in enumerate(chunks):
        record = adapter.stream_chunk(piece, eos_with_last and index == len(chunks) - 1)
        out += record.body
        usage = record.usage
    if not eos_with_last:
        record = adapter.stream_chunk(b"", True)
        out += record.body
        usage = record.usage
    return parse_sse(out), usage


def assert_split_invariant(stream: bytes, **kwargs: Any) -> list[Any]:
    """Translate unsplit, at every split point and byte by byte; all must agree."""
    whole, _ = run_stream([stream], **kwargs)
    for i in range(len(stream) + 1):
        assert run_stream([stream[:i], stream[i:]], **kwargs)[0] == whole, i
    assert run_stream([bytes([b]) for b in stream], **kwargs)[0] == whole
    assert run_stream([stream], eos_with_last=True, **kwargs)[0] == whole
    return whole


def test_stream_response_headers() -> None:
    changes = adapter_for(stream=True).response_headers(200, {"content-length": "99"})
    assert changes.set_headers == {"content-type": "text/event-stream; charset=utf-8"}
    assert changes.remove_headers == ["content-length"]


def test_text_stream_at_every_split_point() -> None:
    whole = assert_split_invariant(TEXT_STREAM)
    assert whole == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo 👋"}),
        chunk({}, "stop"),
        "[DONE]",
    ]
    _, usage = run_stream([TEXT_STREAM])
    assert usage == Usage(5, 2, 7)


def test_text_stream_with_usage_chunk() -> None:
    whole = assert_split_invariant(TEXT_STREAM, include_usage=True)
    assert whole[-3:] == [
        chunk({}, "stop", usage=True),
        {
            "object": "chat.completion.chunk",
            "model": MODEL_ID,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
        "[DONE]",
    ]


def test_events_are_emitted_as_soon_as_their_frame_completes() -> None:
    adapter = adapter_for(stream=True)
    first = event_message("messageStart", {"role": "assistant"})
    second = event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}})
    assert adapter.stream_chunk(first[:-1], False).body == b""
    assert parse_sse(adapter.stream_chunk(first[-1:] + second[:3], False).body) == [
        chunk({"role": "assistant", "content": ""})
    ]
    assert parse_sse(adapter.stream_chunk(second[3:], False).body) == [chunk({"content": "x"})]


@pytest.mark.parametrize(("stop_reason", "finish_reason"), STOP_REASONS)
def test_stream_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    stream = events(
        event_message("messageStart", {"role": "assistant"}),
        event_message("messageStop", {"stopReason": stop_reason}),
        event_message("metadata", {"usage": USAGE}),
    )
    result, _ = run_stream([stream])
    assert result[-2] == chunk({}, finish_reason)


TOOL_STREAM = events(
    event_message("messageStart", {"role": "assistant"}),
    event_message(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me check."}}
    ),
    event_message("contentBlockStop", {"contentBlockIndex": 0}),
    event_message(
        "contentBlockStart",
        {
            "contentBlockIndex": 1,
            "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather"}},
        },
    ),
    event_message(
        "contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}}
    ),
    event_message(
        "contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}}
    ),
    event_message("contentBlockStop", {"contentBlockIndex": 1}),
    event_message(
        "contentBlockStart",
        {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "now"}}},
    ),
    event_message(
        "contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}
    ),
    event_message("contentBlockStop", {"contentBlockIndex": 2}),
    event_message("messageStop", {"stopReason": "tool_use"}),
    event_message("metadata", {"usage": USAGE}),
)


def test_tool_call_stream_at_every_split_point() -> None:
    def start(index: int, call_id: str, name: str) -> dict[str, Any]:
        return openai_chunks.tool_start(MODEL_ID, index, call_id, name, usage=False)

    def arguments(index: int, fragment: str) -> dict[str, Any]:
        return openai_chunks.tool_arguments(MODEL_ID, index, fragment, usage=False)

    assert assert_split_invariant(TOOL_STREAM) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me check."}),
        start(0, "tooluse_1", "get_weather"),
        arguments(0, '{"city":'),
        arguments(0, '"Paris"}'),
        start(1, "tooluse_2", "now"),
        arguments(1, "{}"),
        chunk({}, "tool_calls"),
        "[DONE]",
    ]


def only_error(event: dict[str, Any]) -> tuple[str, str]:
    return event["error"]["type"], event["error"]["code"]


@pytest.mark.parametrize(
    ("exception_type", "message", "expected"),
    [
        ("throttlingException", "Too many requests", ("rate_limit_error", "rate_limit_exceeded")),
        ("modelStreamErrorException", "stream broke", ("upstream_error", "provider_error")),
        (
            "validationException",
            "Input is too long for requested model.",
            ("invalid_request_error", "context_length_exceeded"),
        ),
        ("internalServerException", "oops", ("upstream_error", "provider_error")),
        ("serviceUnavailableException", "busy", ("service_unavailable", "provider_overloaded")),
        ("someNewException", "??", ("upstream_error", "provider_error")),
    ],
)
def test_exception_frame_mid_stream(
    exception_type: str, message: str, expected: tuple[str, str]
) -> None:
    stream = events(
        event_message("messageStart", {"role": "assistant"}),
        event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "par"}}),
        exception_message(exception_type, message),
        event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "ignored"}}),
    )
    whole = assert_split_invariant(stream)
    assert whole[:2] == [chunk({"role": "assistant", "content": ""}), chunk({"content": "par"})]
    assert only_error(whole[2]) == expected
    assert whole[2]["error"]["param"] in (None, "messages")
    assert whole[3:] == ["[DONE]"]


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 20])
def test_truncated_stream_ends_with_an_error(cut: int) -> None:
    stream = TEXT_STREAM[:-cut]
    whole = assert_split_invariant(stream)
    assert only_error(whole[-2]) == ("upstream_error", "malformed_provider_response")
    assert "mid-frame" in whole[-2]["error"]["message"]
    assert whole[-1] == "[DONE]"
    assert whole[:3] == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo 👋"}),
    ]


def test_stream_without_message_stop_is_an_error() -> None:
    stream = events(
        event_message("messageStart", {"role": "assistant"}),
        event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}),
    )
    whole = assert_split_invariant(stream)
    assert only_error(whole[-2]) == ("upstream_error", "malformed_provider_response")
    assert "before messageStop" in whole[-2]["error"]["message"]


def test_stream_ending_after_message_stop_without_metadata_finishes() -> None:
    stream = events(
        event_message("messageStart", {"role": "assistant"}),
        event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}),
        event_message("messageStop", {"stopReason": "max_tokens"}),
    )
    whole = assert_split_invariant(stream, include_usage=True)
    assert whole[-3] == chunk({}, "length", usage=True)
    assert whole[-2]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_metadata_before_message_stop_finishes_at_message_stop() -> None:
    stream = events(
        event_message("messageStart", {"role": "assistant"}),
        event_message("metadata", {"usage": USAGE}),
        event_message("messageStop", {"stopReason": "end_turn"}),
    )
    adapter = adapter_for(stream=True)
    out = adapter.stream_chunk(stream, False).body
    assert parse_sse(out)[-2:] == [chunk({}, "stop"), "[DONE]"]
    assert adapter.stream_chunk(b"", True).body == b""


@pytest.mark.parametrize(
    "bad_frame",
    [
        encode_message(
            {":message-type": "event", ":event-type": "contentBlockDelta"}, b"{not json"
        ),
        encode_message({":message-type": "event", ":event-type": "contentBlockDelta"}, b"[1]"),
        event_message("contentBlockDelta", {"contentBlockIndex": 0}),
        event_message(
            "contentBlockDelta", {"contentBlockIndex": 7, "delta": {"toolUse": {"input": "{"}}}
        ),
        event_message(
            "contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"name": "x"}}}
        ),
        event_message("messageStop", {"stopReason": None}),
        encode_message({":message-type": "surprise"}, b"{}"),
        encode_message(
            {":message-type": "error", ":error-code": "InternalFailure", ":error-message": "boom"},
            b"",
        ),
    ],
)
def test_malformed_events_end_the_stream_with_an_error(bad_frame: bytes) -> None:
    stream = events(event_message("messageStart", {"role": "assistant"}), bad_frame, TEXT_STREAM)
    whole = assert_split_invariant(stream)
    assert whole[0] == chunk({"role": "assistant", "content": ""})
    assert whole[1]["error"]["type"] == "upstream_error"
    assert whole[2:] == ["[DONE]"]


def test_crc_corruption_mid_stream() -> None:
    corrupt = bytearray(TEXT_STREAM)
    second_frame = int.from_bytes(corrupt[:4], "big")
    corrupt[second_frame + 30] ^= 0x01
    whole = assert_split_invariant(bytes(corrupt))
    assert whole[0] == chunk({"role": "assistant", "content": ""})
    assert only_error(whole[1]) == ("upstream_error", "malformed_provider_response")
    assert "corrupt event stream" in whole[1]["error"]["message"]
    assert "Checksum mismatch" in whole[1]["error"]["message"]
    assert whole[2:] == ["[DONE]"]


def test_unknown_events_and_reasoning_deltas_are_ignored() -> None:
    stream = events(
        event_message("messageStart", {"role": "assistant"}),
        event_message(
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "hmm"}}},
        ),
        event_message("somethingNew", {"x": 1}),
        event_message("contentBlockStart", {"contentBlockIndex": 1, "start": {}}),
        TEXT_STREAM,
    )
    whole, _ = run_stream([stream])
    assert [e for e in whole if e != "[DONE]" and "error" in e] == []
    assert chunk({"content": "Hel"}) in whole


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_stream_never_raises_on_garbage(data: bytes, cut: int) -> None:
    adapter = adapter_for(stream=True)
    out = adapter.stream_chunk(TEXT_STREAM[:cut] + data, False).body
    out += adapter.stream_chunk(b"", True).body
    assert out.endswith(b"data: [DONE]\n\n")
    parse_sse(out)


def test_a_gemini_thought_signature_in_a_call_id_is_not_sent_to_bedrock() -> None:
    # Bedrock tool use ids are at most 64 characters: a carried signature would not fit.
    signed = call_id_with_signature("call_1", "++//" + "A" * 200)
    body = chat("weather?", *openai_chunks.tool_call_turns(signed))
    messages = translate(body)["messages"]
    assert messages[1]["content"][0]["toolUse"]["toolUseId"] == "call_1"
    assert messages[2]["content"][0]["toolResult"]["toolUseId"] == "call_1"
