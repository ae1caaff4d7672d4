"""Gemini adapter: request translation, buffered and streamed answers, error mapping.

Provider payloads here are written by hand in the shapes of the Gemini API reference
(GenerateContentResponse, Candidate.FinishReason, UsageMetadata, google.rpc errors).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from extproc.config.schema import ProviderConfig, ProviderType
from extproc.decisions.openai_request import Endpoint
from extproc.errors import GatewayError
from extproc.providers.base import ResponseMode, Translated, Usage
from extproc.providers.google.adapter import GoogleGeminiAdapter
from extproc.providers.tool_ids import (
    call_id_with_signature,
    split_call_id,
    strip_thought_signatures,
)
from tests.unit import openai_chunks
from tests.unit.adapters import prepare

BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
KEY = "AIza-test-key"
CLIENT_MODEL = "gemini-flash"
UPSTREAM_MODEL = "gemini-2.0-flash"


PROVIDER = ProviderConfig(
    name="gemini", type=ProviderType.GOOGLE, base_url=BASE_URL, api_key_env="GEMINI_KEY"
)


def make_adapter(
    base_url: str = BASE_URL, upstream_model: str = UPSTREAM_MODEL
) -> GoogleGeminiAdapter:
    provider = PROVIDER.model_copy(update={"base_url": base_url})
    return GoogleGeminiAdapter(provider, SecretStr(KEY), upstream_model, 4096)


def chat(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": CLIENT_MODEL, "messages": messages, **fields}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def with_stream(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    return {**body, "stream": True} if stream else body


def translate(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    upstream = prepare(make_adapter(), with_stream(body, stream))
    assert upstream.body is not None
    result: dict[str, Any] = orjson.loads(upstream.body)
    return result


def rejected(body: dict[str, Any], stream: bool = False) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        prepare(make_adapter(), with_stream(body, stream))
    return info.value


# -- request: path and headers ---------------------------------------------------------------


def test_chat_path_headers_and_credentials() -> None:
    upstream = prepare(make_adapter(), chat([user("hi")]))
    assert upstream.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert upstream.set_headers["x-goog-api-key"] == KEY
    assert upstream.set_headers["content-type"] == "application/json"
    assert "authorization" in upstream.remove_headers
    # Translated answers must arrive uncompressed.
    assert "accept-encoding" in upstream.remove_headers


def test_stream_path_uses_sse() -> None:
    upstream = prepare(make_adapter(), chat([user("hi")], stream=True))
    assert upstream.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"


def test_models_prefix_in_upstream_name_and_bare_base_url() -> None:
    adapter = make_adapter("http://127.0.0.1:9999", upstream_model="models/gemini-1.5-pro")
    upstream = prepare(adapter, chat([user("hi")]))
    assert upstream.path == "/models/gemini-1.5-pro:generateContent"


# -- request: messages -----------------------------------------------------------------------


def test_roles_system_and_merging() -> None:
    body = chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            user("first"),
            user("second"),
            {"role": "assistant", "content": "answer"},
            user("again"),
        ]
    )
    out = translate(body)
    assert out["systemInstruction"] == {
        "parts": [{"text": "Be brief."}, {"text": "Use metric units."}]
    }
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "first"}, {"text": "second"}]},
        {"role": "model", "parts": [{"text": "answer"}]},
        {"role": "user", "parts": [{"text": "again"}]},
    ]
    assert "model" not in out and "messages" not in out


def test_system_only_conversation_becomes_the_user_turn() -> None:
    out = translate(chat([{"role": "system", "content": "Say hello."}]))
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Say hello."}]}]
    assert "systemInstruction" not in out


def test_tricky_text_passes_byte_exact() -> None:
    text = "hi 👩🏽‍💻 שלום مرحبا zero\u200bwidth e\u0301 漢字"
    upstream = prepare(make_adapter(), chat([user(text)]))
    assert upstream.body is not None
    assert text.encode() in upstream.body


def test_image_parts() -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?x=1"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a/b.PNG"}},
    ]
    out = translate(chat([{"role": "user", "content": content}]))
    assert out["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": png}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?x=1"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/photo"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a/b.PNG"}},
    ]


@pytest.mark.parametrize(
    "url", ["ftp://example.com/a.png", "data:image/png,notbase64", "file:///etc/passwd"]
)
def test_bad_image_urls_are_400(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    error = rejected(chat([{"role": "user", "content": content}]))
    assert (error.status, error.code) == (400, "invalid_message")


def test_audio_and_file_parts() -> None:
    pdf = base64.b64encode(b"%PDF-1.4").decode()
    content = [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}"}},
    ]
    out = translate(chat([{"role": "user", "content": content}]))
    assert out["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": pdf}},
    ]


def test_file_id_is_unsupported() -> None:
    content = [{"type": "file", "file": {"file_id": "file-abc"}}]
    error = rejected(chat([{"role": "user", "content": content}]))
    assert (error.status, error.code) == (400, "unsupported_parameter")
    assert "google" in error.message


# -- request: generation config --------------------------------------------------------------


def test_generation_config_fields() -> None:
    body = chat(
        [user("hi")],
        max_tokens=50,
        max_completion_tokens=100,
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        stop=["END", "STOP"],
        n=2,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
    )
    assert translate(body)["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 0.3,
        "topP": 0.9,
        "topK": 40,
        "stopSequences": ["END", "STOP"],
        "candidateCount": 2,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
    }


def test_max_tokens_and_single_stop() -> None:
    config = translate(chat([user("hi")], max_tokens=12, stop="\n\n", n=1))["generationConfig"]
    assert config == {"maxOutputTokens": 12, "stopSequences": ["\n\n"]}


def test_no_generation_config_when_nothing_is_set() -> None:
    assert "generationConfig" not in translate(chat([user("hi")], stream=False, user="u1"))


def test_n_greater_than_one_in_a_stream_is_unsupported() -> None:
    error = rejected(chat([user("hi")], n=3, stream=True), stream=True)
    assert (error.status, error.code, error.param) == (400, "unsupported_parameter", "n")
    assert "google" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("logprobs", True), ("top_logprobs", 3), ("logit_bias", {"50256": -100})],
)
def test_unsupported_features_are_400(field: str, value: Any) -> None:
    error = rejected(chat([user("hi")], **{field: value}))
    assert (error.status, error.code, error.param) == (400, "unsupported_parameter", field)
    assert "'google'" in error.message


def test_falsy_unsupported_fields_pass() -> None:
    translate(chat([user("hi")], logprobs=False, logit_bias={}))


def test_response_format() -> None:
    json_object = {"type": "json_object"}
    config = translate(chat([user("hi")], response_format=json_object))["generationConfig"]
    assert config == {"responseMimeType": "application/json"}
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    json_schema = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    config = translate(chat([user("hi")], response_format=json_schema))["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": schema}
    assert "generationConfig" not in translate(chat([user("hi")], response_format={"type": "text"}))
    # An unknown type is not OpenAI's: validation refuses it, whatever the provider.
    error = rejected(chat([user("hi")], response_format={"type": "xml"}))
    assert (error.status, error.code, error.param) == (400, "invalid_request", "response_format")


# -- request: tools --------------------------------------------------------------------------

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": WEATHER_PARAMS,
        },
    },
    {"type": "function", "function": {"name": "now"}},
]


def test_tools_become_function_declarations() -> None:
    out = translate(chat([user("weather?")], tools=TOOLS))
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": WEATHER_PARAMS,
                },
                {"name": "now"},
            ]
        }
    ]
    assert "toolConfig" not in out


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "now"}},
            {"mode": "ANY", "allowedFunctionNames": ["now"]},
        ),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    out = translate(chat([user("weather?")], tools=TOOLS, tool_choice=choice))
    assert out["toolConfig"] == {"functionCallingConfig": config}


def test_non_function_tools_are_unsupported() -> None:
    error = rejected(chat([user("hi")], tools=[{"type": "code_interpreter"}]))
    assert (error.status, error.code) == (400, "unsupported_parameter")


def test_tool_call_round_trip() -> None:
    messages = [
        user("Weather in Paris and Oslo?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "cloudy, 9 C"},
        {"role": "assistant", "content": "Paris 21 C, Oslo 9 C."},
    ]
    out = translate(chat(messages, tools=TOOLS))
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Oslo?"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"content": "cloudy, 9 C"},
                    }
                },
            ],
        },
        {"role": "model", "parts": [{"text": "Paris 21 C, Oslo 9 C."}]},
    ]


def test_tool_result_for_unknown_call_is_400() -> None:
    messages = [user("hi"), {"role": "tool", "tool_call_id": "call_x", "content": "42"}]
    error = rejected(chat(messages))
    assert (error.status, error.code) == (400, "invalid_message")


def test_tool_call_arguments_must_be_a_json_object() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    messages = [user("hi"), {"role": "assistant", "content": None, "tool_calls": [call]}]
    error = rejected(chat(messages))
    assert (error.status, error.code) == (400, "invalid_message")


# -- request: embeddings ---------------------------------------------------------------------


def embed_request(body: dict[str, Any]) -> tuple[GoogleGeminiAdapter, str, dict[str, Any]]:
    adapter = make_adapter(upstream_model="text-embedding-004")
    upstream = prepare(adapter, body, Endpoint.EMBEDDINGS)
    assert upstream.body is not None
    assert upstream.set_headers["x-goog-api-key"] == KEY
    return adapter, upstream.path, orjson.loads(upstream.body)


def test_single_embedding_request() -> None:
    _, path, body = embed_request({"model": CLIENT_MODEL, "input": "hello", "dimensions": 64})
    assert path == "/v1beta/models/text-embedding-004:embedContent"
    assert body == {"content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 64}
    _, path, body = embed_request({"model": CLIENT_MODEL, "input": ["only one"]})
    assert path.endswith(":embedContent")
    assert body == {"content": {"parts": [{"text": "only one"}]}}


def test_batch_embedding_request() -> None:
    _, path, body = embed_request({"model": CLIENT_MODEL, "input": ["a", "b"]})
    assert path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert body == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}},
        ]
    }


@pytest.mark.parametrize("tokens", [[1, 2, 3], [[1, 2], [3]]])
def test_token_array_embedding_inputs_are_unsupported(tokens: Any) -> None:
    with pytest.raises(GatewayError) as info:
        embed_request({"model": CLIENT_MODEL, "input": tokens})
    assert (info.value.status, info.value.code, info.value.param) == (
        400,
        "unsupported_parameter",
        "input",
    )


def test_embedding_answers_float_and_base64() -> None:
    adapter, _, _ = embed_request({"model": CLIENT_MODEL, "input": ["a", "b"]})
    answer: dict[str, Any] = {"embeddings": [{"values": [0.5, -0.25]}, {"values": [1, 0.125]}]}
    out = orjson.loads(adapter.response_body(orjson.dumps(answer)).body)
    assert out["object"] == "list"
    assert out["model"] == "text-embedding-004"  # no modelVersion: the target's model
    assert [item["embedding"] for item in out["data"]] == [[0.5, -0.25], [1, 0.125]]
    assert [item["index"] for item in out["data"]] == [0, 1]

    body = {"model": CLIENT_MODEL, "input": "a", "encoding_format": "base64"}
    adapter, _, _ = embed_request(body)
    answer = {"embedding": {"values": [0.5, -0.25, 3.0]}}
    out = orjson.loads(adapter.response_body(orjson.dumps(answer)).body)
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (0.5, -0.25, 3.0)


def test_embedding_values_beyond_float32_are_502_in_base64() -> None:
    body = {"model": CLIENT_MODEL, "input": "a", "encoding_format": "base64"}
    adapter, _, _ = embed_request(body)
    with pytest.raises(GatewayError) as info:
        adapter.response_body(b'{"embedding": {"values": [1e300]}}')
    assert (info.value.status, info.value.code) == (502, "malformed_provider_response")


@pytest.mark.parametrize(
    "answer",
    [
        {"embeddings": [{"values": [0.1]}]},  # one vector for two inputs
        {"embeddings": [{"values": [0.1]}, {"values": "x"}]},
        {"embeddings": [{"values": [0.1]}, {}]},
        {"embedding": {"values": [0.1]}},
    ],
)
def test_malformed_batch_embedding_answers_are_502(answer: Any) -> None:
    adapter, _, _ = embed_request({"model": CLIENT_MODEL, "input": ["a", "b"]})
    with pytest.raises(GatewayError) as info:
        adapter.response_body(orjson.dumps(answer))
    assert (info.value.status, info.value.code) == (502, "malformed_provider_response")


# -- buffered answers ------------------------------------------------------------------------


def buffered(answer: Any, n: int = 1) -> tuple[Translated, dict[str, Any]]:
    adapter = make_adapter()
    prepare(adapter, chat([user("hi")], n=n))
    assert adapter.response_mode(200, {}) is ResponseMode.BUFFERED
    raw = answer if isinstance(answer, bytes) else orjson.dumps(answer)
    translated = adapter.response_body(raw)
    return translated, orjson.loads(translated.body)


def candidate(parts: list[dict[str, Any]], finish: str | None = "STOP") -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        out["finishReason"] = finish
    return out


USAGE = {"promptTokenCount": 11, "candidatesTokenCount": 5, "totalTokenCount": 16}


def test_buffered_text_answer() -> None:
    answer = {
        "candidates": [candidate([{"text": "Hello"}, {"text": ", world"}])],
        "usageMetadata": USAGE,
        "modelVersion": "gemini-2.0-flash-001",
    }
    adapter, out = buffered(answer)
    assert out["object"] == "chat.completion"
    assert out["model"] == "gemini-2.0-flash-001"
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    assert adapter.usage == Usage(11, 5, 16)
    assert adapter.model == "gemini-2.0-flash-001"  # the modelVersion Gemini names


# Candidate.FinishReason values of the Gemini API reference and the OpenAI reason for each.
FINISH_REASONS = [
    ("STOP", "stop"),
    ("MAX_TOKENS", "length"),
    ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"),
    ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"),
    ("LANGUAGE", "stop"),
    ("OTHER", "stop"),
    ("MALFORMED_FUNCTION_CALL", "stop"),
    ("FINISH_REASON_UNSPECIFIED", "stop"),
    ("SOMETHING_NEW", "stop"),
]


@pytest.mark.parametrize(("gemini", "openai"), FINISH_REASONS)
def test_buffered_finish_reasons(gemini: str, openai: str) -> None:
    _, out = buffered({"candidates": [candidate([{"text": "x"}], gemini)]})
    assert out["choices"][0]["finish_reason"] == openai


def test_safety_stop_without_content() -> None:
    answer = {"candidates": [{"finishReason": "SAFETY", "index": 0}], "usageMetadata": USAGE}
    _, out = buffered(answer)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] == ""


def test_buffered_function_calls() -> None:
    parts: list[dict[str, Any]] = [
        {"functionCall": {"name": "get_weather", "args": {"city": "Zürich"}}},
        {"functionCall": {"name": "now"}},
    ]
    _, out = buffered({"candidates": [candidate(parts)], "usageMetadata": USAGE})
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "now"]
    assert [orjson.loads(call["function"]["arguments"]) for call in calls] == [
        {"city": "Zürich"},
        {},
    ]
    assert all(call["type"] == "function" for call in calls)
    ids = [call["id"] for call in calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2


def test_buffered_text_and_function_call() -> None:
    parts: list[dict[str, Any]] = [
        {"text": "Let me check."},
        {"functionCall": {"name": "now", "args": {}}},
    ]
    _, out = buffered({"candidates": [candidate(parts)]})
    message = out["choices"][0]["message"]
    assert message["content"] == "Let me check."
    assert len(message["tool_calls"]) == 1
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_thought_parts_are_not_content_and_thoughts_count_as_completion() -> None:
    parts: list[dict[str, Any]] = [{"text": "thinking...", "thought": True}, {"text": "42"}]
    usage = {
        "promptTokenCount": 7,
        "candidatesTokenCount": 1,
        "thoughtsTokenCount": 30,
        "toolUsePromptTokenCount": 2,
        "totalTokenCount": 40,
    }
    _, out = buffered({"candidates": [candidate(parts)], "usageMetadata": usage})
    assert out["choices"][0]["message"]["content"] == "42"
    assert out["usage"] == {"prompt_tokens": 9, "completion_tokens": 31, "total_tokens": 40}


def test_usage_counts_absent_as_zero() -> None:
    # proto3 JSON leaves zero counts out.
    answer = {"candidates": [candidate([{"text": ""}])], "usageMetadata": {"promptTokenCount": 3}}
    _, out = buffered(answer)
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


def test_blocked_prompt() -> None:
    answer = {
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
        "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
    }
    _, out = buffered(answer)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] == ""
    assert out["usage"]["prompt_tokens"] == 4


def test_several_candidates_become_several_choices() -> None:
    second = candidate([{"text": "two"}], "MAX_TOKENS") | {"index": 1}
    answer = {"candidates": [candidate([{"text": "one"}]), second], "usageMetadata": USAGE}
    _, out = buffered(answer, n=2)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in out["choices"]] == ["one", "two"]
    assert [c["finish_reason"] for c in out["choices"]] == ["stop", "length"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b'{"candidates": [{"content": {"parts": [{"text": "trunc',
        b"<html><body>502 Bad Gateway</body></html>",
        b"[1, 2]",
        b'"just a string"',
        b"{}",
        b'{"candidates": {}}',
        b'{"candidates": []}',
        b'{"candidates": ["x"]}',
        b'{"candidates": [{"content": "text"}]}',
        b'{"candidates": [{"content": {"parts": {"text": "x"}}}]}',
        b'{"candidates": [{"content": {"parts": ["x"]}}]}',
        b'{"candidates": [{"content": {"parts": [{"text": 5}]}}]}',
        b'{"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}',
        b'{"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": 1}}]}}]}',
        b'{"candidates": [{"finishReason": 1}]}',
        b'{"candidates": [{"finishReason": "STOP"}], "usageMetadata": []}',
        b'{"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": "1"}}',
    ],
)
def test_malformed_buffered_answers_are_502(body: bytes) -> None:
    adapter = make_adapter()
    prepare(adapter, chat([user("hi")]))
    with pytest.raises(GatewayError) as info:
        adapter.response_body(body)
    assert (info.value.status, info.value.code) == (502, "malformed_provider_response")


def test_error_payload_inside_a_2xx_answer_is_mapped() -> None:
    adapter = make_adapter()
    prepare(adapter, chat([user("hi")]))
    body = orjson.dumps({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
    with pytest.raises(GatewayError) as info:
        adapter.response_body(body)
    assert (info.value.status, info.value.code) == (503, "provider_overloaded")


def test_response_modes_and_headers() -> None:
    adapter = make_adapter()
    prepare(adapter, chat([user("hi")], stream=True))
    assert adapter.response_mode(200, {"content-type": "text/event-stream"}) is (
        ResponseMode.STREAMED
    )
    assert adapter.response_mode(429, {}) is ResponseMode.BUFFERED
    changes = adapter.response_headers(200, {"content-length": "10"})
    assert changes.set_headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "content-length" in changes.remove_headers

    adapter = make_adapter()
    prepare(adapter, chat([user("hi")]))
    assert adapter.response_mode(200, {}) is ResponseMode.BUFFERED
    assert adapter.response_headers(200, {}).set_headers["content-type"] == "application/json"


# -- errors ----------------------------------------------------------------------------------


def google_error(code: int, status: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, **extra}}


def map_error(status: int, body: Any, headers: dict[str, str] | None = None) -> GatewayError:
    adapter = make_adapter()
    prepare(adapter, chat([user("hi")]))
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return adapter.response_error(status, headers or {}, raw)


RETRY_12S = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}


def test_rate_limit_with_retry_info() -> None:
    quota = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}
    body = google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", details=[quota, RETRY_12S])
    error = map_error(429, body)
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    assert error.headers["retry-after"] == "12"
    # The list-wrapped form some Google front ends send maps the same way.
    assert map_error(429, [body]).headers["retry-after"] == "12"


def test_rate_limit_header_wins_and_fractional_delay_rounds_up() -> None:
    body = google_error(429, "RESOURCE_EXHAUSTED", "slow down", details=[RETRY_12S])
    assert map_error(429, body, {"retry-after": "7"}).headers["retry-after"] == "7"
    half = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
    body = google_error(429, "RESOURCE_EXHAUSTED", "slow down", details=[half])
    assert map_error(429, body).headers["retry-after"] == "2"
    assert map_error(429, google_error(429, "RESOURCE_EXHAUSTED", "x")).headers["retry-after"]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            503,
            google_error(503, "UNAVAILABLE", "The model is overloaded."),
            (503, "provider_overloaded"),
        ),
        (401, google_error(401, "UNAUTHENTICATED", "bad creds"), (502, "provider_auth_failed")),
        (403, google_error(403, "PERMISSION_DENIED", "denied"), (502, "provider_auth_failed")),
        (
            400,
            google_error(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."
            ),
            (502, "provider_auth_failed"),
        ),
        (
            400,
            google_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed "
                "(1048576).",
            ),
            (400, "context_length_exceeded"),
        ),
        (
            400,
            google_error(400, "INVALID_ARGUMENT", "Invalid value at 'generation_config.top_k'"),
            (400, "provider_invalid_request"),
        ),
        (404, google_error(404, "NOT_FOUND", "models/x is not found"), (502, "provider_error")),
        (
            400,
            google_error(
                400, "FAILED_PRECONDITION", "User location is not supported for the API use."
            ),
            (502, "provider_error"),
        ),
        (
            500,
            google_error(500, "INTERNAL", "An internal error has occurred."),
            (502, "provider_error"),
        ),
        (
            504,
            google_error(504, "DEADLINE_EXCEEDED", "Deadline expired"),
            (504, "provider_timeout"),
        ),
        (502, b"<html>Bad Gateway</html>", (502, "provider_error")),
        (503, b"", (503, "provider_overloaded")),
    ],
)
def test_error_mapping(status: int, body: Any, expected: tuple[int, str]) -> None:
    error = map_error(status, body)
    assert (error.status, error.code) == expected


def test_auth_failures_do_not_leak_the_provider_message() -> None:
    body = google_error(400, "INVALID_ARGUMENT", "API key not valid: AIza-secret-bits")
    error = map_error(400, body)
    assert "AIza" not in error.message


def test_invalid_argument_message_is_passed_on() -> None:
    error = map_error(400, google_error(400, "INVALID_ARGUMENT", "temperature out of range"))
    assert "temperature out of range" in error.message


# -- streaming -------------------------------------------------------------------------------


def sse(events: list[Any], newline: bytes = b"\r\n") -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + newline + newline for e in events)


def stream_adapter(include_usage: bool = True) -> GoogleGeminiAdapter:
    adapter = make_adapter()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    prepare(adapter, chat([user("hi")], stream=True, **options))
    assert adapter.response_mode(200, {}) is ResponseMode.STREAMED
    return adapter


def feed(chunks: list[bytes], include_usage: bool = True) -> tuple[bytes, Translated]:
    """Feed chunks (the last one with end_of_stream): everything emitted, and the last record."""
    adapter = stream_adapter(include_usage)
    out = b""
    last = Translated(b"")
    for i, chunk in enumerate(chunks):
        last = adapter.stream_chunk(chunk, i == len(chunks) - 1)
        out += last.body
    return out, last


def parse(out: bytes) -> list[Any]:
    """OpenAI SSE → list of events (dicts, or "[DONE]"), with random ids normalised."""
    assert out.endswith(b"\n\n")
    return openai_chunks.parse_sse(out, call_id_prefix="call_")


def splits(raw: bytes) -> Iterator[list[bytes]]:
    """Every two-chunk split, then byte by byte (with a final empty end_of_stream chunk)."""
    for i in range(len(raw) + 1):
        yield [raw[:i], raw[i:]]
    yield [raw[i : i + 1] for i in range(len(raw))] + [b""]


def assert_split_invariant(raw: bytes, include_usage: bool = True) -> list[Any]:
    whole = parse(feed([raw], include_usage)[0])
    for chunks in splits(raw):
        assert parse(feed(chunks, include_usage)[0]) == whole, chunks
    return whole


def chunk(delta: dict[str, Any], finish: str | None = None, usage: bool = True) -> dict[str, Any]:
    return openai_chunks.chunk(UPSTREAM_MODEL, delta, finish, usage)


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return openai_chunks.usage_chunk(UPSTREAM_MODEL, prompt, completion)


TEXT_STREAM = [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo 👋"}]}, "index": 0}]},
    {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": " שלום"}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7},
        "modelVersion": "gemini-2.0-flash",
    },
]
TEXT_EXPECTED = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo 👋"}),
    chunk({"content": " שלום"}),
    chunk({}, "stop"),
    usage_chunk(4, 3),
    "[DONE]",
]


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_text_stream_at_every_split(newline: bytes) -> None:
    raw = sse(TEXT_STREAM, newline)
    assert assert_split_invariant(raw) == TEXT_EXPECTED
    _, last = feed([raw])
    assert last.usage == Usage(4, 3, 7)


def test_stream_events_are_emitted_as_soon_as_complete() -> None:
    raw = sse(TEXT_STREAM)
    first_end = raw.index(b"\r\n\r\n") + 4
    adapter = stream_adapter()
    out = adapter.stream_chunk(raw[:first_end], False).body
    assert parse(out) == TEXT_EXPECTED[:2]


def test_stream_without_usage_option() -> None:
    raw = sse(TEXT_STREAM)
    events = assert_split_invariant(raw, include_usage=False)
    assert events[-2] == chunk({}, "stop", usage=False)
    assert all(e == "[DONE]" or "usage" not in e for e in events)


TOOL_STREAM = [
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Checking."}]}}]},
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"name": "now", "args": {}}},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 12},
    },
]


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_tool_call_stream_at_every_split(newline: bytes) -> None:
    events = assert_split_invariant(sse(TOOL_STREAM, newline))

    def start(index: int, name: str) -> dict[str, Any]:
        return openai_chunks.tool_start(UPSTREAM_MODEL, index, "ID", name)

    def arguments(index: int, fragment: str) -> dict[str, Any]:
        return openai_chunks.tool_arguments(UPSTREAM_MODEL, index, fragment)

    assert events[:6] == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking."}),
        start(0, "get_weather"),
        arguments(0, '{"city":"Paris"}'),
        start(1, "now"),
        arguments(1, "{}"),
    ]
    assert events[6:] == [chunk({}, "tool_calls"), usage_chunk(9, 12), "[DONE]"]


@pytest.mark.parametrize(
    ("finish", "openai"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter")]
)
def test_stream_finish_reasons(finish: str, openai: str) -> None:
    events = [{"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": finish}]}]
    out = parse(feed([sse(events)])[0])
    assert out[-3] == chunk({}, openai)


def test_stream_blocked_prompt() -> None:
    events = [{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}]
    out = parse(feed([sse(events)])[0])
    assert out == [
        chunk({"role": "assistant", "content": ""}),
        chunk({}, "content_filter"),
        usage_chunk(0, 0),
        "[DONE]",
    ]


def assert_ends_with_error(events: list[Any], code: str) -> dict[str, Any]:
    assert events[-1] == "[DONE]"
    error: dict[str, Any] = events[-2]["error"]
    assert error["code"] == code
    finished = [
        choice["finish_reason"]
        for event in events[:-2]
        for choice in event["choices"]
        if choice["finish_reason"]
    ]
    assert finished == []
    return error


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_stream_ending_without_finish_reason(newline: bytes) -> None:
    raw = sse(TEXT_STREAM[:2], newline)
    events = assert_split_invariant(raw)
    assert events[:3] == TEXT_EXPECTED[:3]
    error = assert_ends_with_error(events, "malformed_provider_response")
    assert "finish reason" in error["message"]


def test_stream_cut_mid_event() -> None:
    raw = sse(TEXT_STREAM)
    cut = raw[: len(raw) - 20]
    events = assert_split_invariant(cut)
    assert events[:3] == TEXT_EXPECTED[:3]
    error = assert_ends_with_error(events, "malformed_provider_response")
    assert "mid-event" in error["message"]


@pytest.mark.parametrize("wrapped", [False, True])
def test_mid_stream_error_payload(wrapped: bool) -> None:
    error: Any = {
        "error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
    }
    if wrapped:
        error = [error]
    raw = sse([TEXT_STREAM[0], error, TEXT_STREAM[2]])
    events = assert_split_invariant(raw)
    assert events[:2] == TEXT_EXPECTED[:2]
    assert len(events) == 4  # role, "Hel", error, [DONE]: nothing after the error
    assert_ends_with_error(events, "provider_overloaded")


def test_mid_stream_rate_limit_error() -> None:
    error = {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}
    events = parse(feed([sse([error])])[0])
    assert events == [events[0], "[DONE]"]
    assert events[0]["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    "bad",
    [
        b"data: {not json\r\n\r\n",
        b"data: [1, 2]\r\n\r\n",
        b'data: {"candidates": {"a": 1}}\r\n\r\n',
        b'data: {"candidates": [{"content": {"parts": [{"text": 1}]}}]}\r\n\r\n',
        b'data: {"usageMetadata": {"promptTokenCount": -1}}\r\n\r\n',
    ],
)
def test_malformed_stream_events_fail_cleanly(bad: bytes) -> None:
    raw = sse(TEXT_STREAM[:1]) + bad + sse(TEXT_STREAM[1:])
    events = assert_split_invariant(raw)
    assert events[:2] == TEXT_EXPECTED[:2]
    assert len(events) == 4
    assert_ends_with_error(events, "malformed_provider_response")


def test_nothing_is_emitted_after_the_stream_ended() -> None:
    adapter = stream_adapter()
    adapter.stream_chunk(sse([{"error": {"code": 500, "status": "INTERNAL"}}]), False)
    assert adapter.stream_chunk(sse(TEXT_STREAM), True).body == b""


def test_empty_stream_is_an_error() -> None:
    events = parse(feed([b""])[0])
    assert events[-1] == "[DONE]"
    assert events[0]["error"]["code"] == "malformed_provider_response"


def test_comments_and_empty_data_are_ignored() -> None:
    raw = b": keep-alive\r\n\r\ndata: \r\n\r\n" + sse(TEXT_STREAM)
    assert assert_split_invariant(raw) == TEXT_EXPECTED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_stream_never_raises_and_always_ends(chunks: list[bytes]) -> None:
    out, _ = feed([*chunks, b""])
    assert out.endswith(b"data: [DONE]\n\n")


# -- Gemini 3 thought signatures ------------------------------------------------------------


@given(st.binary(min_size=1, max_size=300))
def test_a_signature_rides_in_the_call_id_and_comes_back_exactly(raw: bytes) -> None:
    signature = base64.b64encode(raw).decode()  # standard alphabet, padded, as Gemini sends it
    call_id = call_id_with_signature("call_abc", signature)
    assert call_id.startswith("call_abc")
    assert all(c.isalnum() or c in "_-" for c in call_id)
    assert split_call_id(call_id) == ("call_abc", signature)


def test_ids_without_a_signature_are_left_alone() -> None:
    assert call_id_with_signature("call_abc", None) == "call_abc"
    assert split_call_id("call_abc") == ("call_abc", None)
    assert split_call_id("toolu_01XyZ") == ("toolu_01XyZ", None)


SIGNED = "++//ZmFrZS10aG91Z2h0OmY="


def test_signed_function_calls_come_back_with_their_signature() -> None:
    parts = [
        {"functionCall": {"name": "get_weather", "args": {}}, "thoughtSignature": SIGNED},
        {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
    ]
    _, out = buffered({"candidates": [candidate(parts)]})
    first, second = out["choices"][0]["message"]["tool_calls"]
    assert split_call_id(first["id"])[1] == SIGNED
    assert split_call_id(second["id"])[1] is None
    history = chat(
        [
            user("weather?"),
            {"role": "assistant", "content": None, "tool_calls": [first, second]},
            {"role": "tool", "tool_call_id": first["id"], "content": "sunny"},
            {"role": "tool", "tool_call_id": second["id"], "content": "rain"},
        ],
        tools=TOOLS,
    )
    model_turn = translate(history)["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == SIGNED
    assert "thoughtSignature" not in model_turn["parts"][1]


def test_a_signature_that_is_not_a_string_is_a_malformed_answer() -> None:
    part = {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": 7}
    with pytest.raises(GatewayError) as caught:
        buffered({"candidates": [candidate([part])]})
    assert caught.value.status == 502


def test_openai_requests_lose_carried_signatures() -> None:
    signed = call_id_with_signature("call_abc", SIGNED)

    def call(call_id: str) -> dict[str, Any]:
        return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}

    body: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [call(signed), call("call_b")]},
            {"role": "tool", "tool_call_id": signed, "content": "r"},
        ]
    }
    assert strip_thought_signatures(body) is True
    assert [c["id"] for c in body["messages"][1]["tool_calls"]] == ["call_abc", "call_b"]
    assert body["messages"][2]["tool_call_id"] == "call_abc"
    assert strip_thought_signatures(body) is False  # nothing left to drop
    assert strip_thought_signatures({"model": "m", "input": "x"}) is False  # embeddings
