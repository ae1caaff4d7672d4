"""Unit tests of the Anthropic adapter: request translation, buffered and streamed answers, errors.

Fixtures are written in the shapes of Anthropic's Messages API reference; expected OpenAI
output is written from the OpenAI chat completion shapes, not taken from the adapter.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from extproc.config.schema import ProviderConfig, ProviderType
from extproc.decisions.openai_request import Endpoint
from extproc.errors import GatewayError
from extproc.providers.anthropic.adapter import AnthropicAdapter
from extproc.providers.base import ResponseMode, Translated, UpstreamRequest, Usage
from extproc.providers.tool_ids import call_id_with_signature
from tests.unit import openai_chunks
from tests.unit.adapters import prepare

KEY = "sk-ant-test-key"
UPSTREAM = "claude-sonnet-4-5"
# The model Anthropic names in its answers (a dated version of the requested alias).
ANSWER_MODEL = "claude-sonnet-4-5-20250929"
TRICKY = "hi 👩🏽‍💻 שלום مرحبا zero\u200bwidth e\u0301 漢字"


def provider(**extra: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "claude",
        "type": ProviderType.ANTHROPIC,
        "base_url": "https://api.anthropic.com/v1",
        "api_key_env": "ANTHROPIC_API_KEY",
        **extra,
    }
    return ProviderConfig.model_validate(fields)


def adapter(*, default_max_tokens: int = 4096, **provider_fields: Any) -> AnthropicAdapter:
    return AnthropicAdapter(
        provider(**provider_fields), SecretStr(KEY), UPSTREAM, default_max_tokens
    )


def answering(*, stream: bool = False, include_usage: bool = False) -> AnthropicAdapter:
    """An adapter that has translated a request, ready for its answer."""
    a = adapter()
    fields: dict[str, Any] = {"stream": stream}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}
    prepare(a, chat(user("hi"), **fields))
    return a


def translate(body: dict[str, Any], **options: Any) -> tuple[UpstreamRequest, dict[str, Any]]:
    upstream = prepare(adapter(**options), body)
    assert upstream.body is not None
    return upstream, orjson.loads(upstream.body)


def sent(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    return translate(body, **options)[1]


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "smart", "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any = None, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **fields}


def rejected(body: dict[str, Any], **options: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        translate(body, **options)
    return info.value


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# -- request: path, headers, basics ----------------------------------------------------------


def test_path_and_headers() -> None:
    upstream, _ = translate(chat(user("hi")))
    assert upstream.path == "/v1/messages"
    assert upstream.set_headers["x-api-key"] == KEY
    assert upstream.set_headers["anthropic-version"] == "2023-06-01"
    assert upstream.set_headers["content-type"] == "application/json"
    assert "authorization" in upstream.remove_headers
    assert "accept-encoding" in upstream.remove_headers


def test_configured_anthropic_version() -> None:
    upstream, _ = translate(chat(user("hi")), anthropic_version="2024-01-01")
    assert upstream.set_headers["anthropic-version"] == "2024-01-01"


def test_base_path_prefix() -> None:
    upstream, _ = translate(chat(user("hi")), base_url="https://gw.example/anthropic/v1")
    assert upstream.path == "/anthropic/v1/messages"


def test_minimal_body() -> None:
    assert sent(chat(user("hi"))) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_default_max_tokens_from_context() -> None:
    assert sent(chat(user("hi")), default_max_tokens=321)["max_tokens"] == 321


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 60}, 60),
        ({"max_tokens": 50, "max_completion_tokens": 60}, 60),
    ],
)
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert sent(chat(user("hi"), **fields))["max_tokens"] == expected


def test_text_passes_byte_exact() -> None:
    upstream, body = translate(chat(user(TRICKY)))
    assert body["messages"][0]["content"] == TRICKY
    assert upstream.body is not None and TRICKY.encode() in upstream.body


def test_sampling_stop_user_stream() -> None:
    body = sent(
        chat(
            user("hi"),
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop="END",
            user="user-42",
            stream=True,
            stream_options={"include_usage": True},
            seed=7,
        )
    )
    assert body["temperature"] == 0.5
    assert body["top_p"] == 0.9
    assert body["top_k"] == 40
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-42"}
    assert body["stream"] is True
    for dropped in ("stream_options", "seed", "stop", "user"):
        assert dropped not in body


def test_stop_list_and_no_stream() -> None:
    body = sent(chat(user("hi"), stop=["a", "b"], stream=False))
    assert body["stop_sequences"] == ["a", "b"]
    assert "stream" not in body


def test_embeddings_are_unsupported() -> None:
    assert AnthropicAdapter.unsupported(Endpoint.CHAT, provider()) is None
    error = AnthropicAdapter.unsupported(Endpoint.EMBEDDINGS, provider())
    assert error is not None
    assert (error.status, error.code) == (400, "unsupported_endpoint")
    assert error.message == "provider 'claude' (type 'anthropic') does not support embeddings"


# -- request: messages -----------------------------------------------------------------------


def test_system_messages_anywhere_become_top_level_system() -> None:
    body = sent(
        chat(
            {"role": "system", "content": "Be brief."},
            user("one"),
            {"role": "developer", "content": "Use French."},
            user("two"),
            {"role": "system", "content": [{"type": "text", "text": "No emoji."}]},
        )
    )
    assert body["system"] == "Be brief.\n\nUse French.\n\nNo emoji."
    # With the system message gone, the two user turns are one.
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        }
    ]


def test_only_system_messages_are_rejected() -> None:
    error = rejected(chat({"role": "system", "content": "alone"}))
    assert (error.status, error.code) == (400, "invalid_message")


def test_consecutive_turns_are_merged() -> None:
    body = sent(chat(user("a"), user("b"), assistant("c"), assistant("d"), user("e")))
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}],
        },
        {"role": "user", "content": "e"},
    ]


def test_text_part_lists() -> None:
    body = sent(chat(user([{"type": "text", "text": "x"}, {"type": "text", "text": "y"}])))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "x"},
        {"type": "text", "text": "y"},
    ]


def test_tools_round_trip_with_history() -> None:
    body = sent(
        chat(
            user("Weather in Paris and Oslo?"),
            assistant(
                "Let me check.",
                tool_calls=[
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
            ),
            {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "4C rain"}],
            },
            user("Thanks! Which is warmer?"),
            tools=[WEATHER_TOOL],
        )
    )
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "4C rain"}],
                },
                {"type": "text", "text": "Thanks! Which is warmer?"},
            ],
        },
    ]


def test_assistant_tool_call_without_content_and_empty_arguments() -> None:
    body = sent(
        chat(
            user("go"),
            assistant(
                None,
                tool_calls=[
                    {"id": "c", "type": "function", "function": {"name": "ping", "arguments": ""}}
                ],
            ),
            {"role": "tool", "tool_call_id": "c", "content": "pong"},
        )
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "c", "name": "ping", "input": {}}],
    }


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    body = sent(chat(user("x"), tools=[{"type": "function", "function": {"name": "now"}}]))
    assert body["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", '"text"', "not json"])
def test_invalid_tool_call_arguments(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    error = rejected(chat(user("x"), assistant(None, tool_calls=[call])))
    assert (error.status, error.code) == (400, "invalid_message")


def test_tool_message_needs_its_call_id() -> None:
    error = rejected(chat(user("x"), {"role": "tool", "content": "r"}))
    assert (error.status, error.code) == (400, "invalid_message")


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("auto", True, {"type": "auto"}),
        (None, None, None),
    ],
)
def test_tool_choice(tool_choice: Any, parallel: bool | None, expected: Any) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    assert sent(chat(user("x"), **fields)).get("tool_choice") == expected


def test_invalid_tool_choice() -> None:
    error = rejected(chat(user("x"), tools=[WEATHER_TOOL], tool_choice="sometimes"))
    assert (error.status, error.param) == (400, "tool_choice")


def test_images_data_url_and_https() -> None:
    body = sent(
        chat(
            user(
                [
                    {"type": "text", "text": "Compare"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                    },
                ]
            )
        )
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.png",
        "data:image/png,rawbytes",
        "data:;base64,AAAA",
        "data:text/plain;base64,AA",
    ],
)
def test_bad_image_urls(url: str) -> None:
    error = rejected(chat(user([{"type": "image_url", "image_url": {"url": url}}])))
    assert (error.status, error.code) == (400, "invalid_message")


def test_pdf_file_part_becomes_a_document() -> None:
    part = {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
    }
    body = sent(chat(user([part, {"type": "text", "text": "Summarize"}])))
    assert body["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        "title": "a.pdf",
    }


@pytest.mark.parametrize(
    ("body", "feature"),
    [
        (chat(user("x"), n=2), "n other than 1"),
        (chat(user("x"), logprobs=True), "logprobs"),
        (chat(user("x"), top_logprobs=2), "logprobs"),
        (chat(user("x"), response_format={"type": "json_object"}), "response_format"),
        (
            chat(
                user("x"),
                response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
            ),
            "response_format",
        ),
        (chat(user("x"), modalities=["text", "audio"]), "audio"),
        (chat(user("x"), frequency_penalty=0.5), "frequency_penalty"),
        (chat(user("x"), presence_penalty=-1), "presence_penalty"),
        (chat(user("x"), logit_bias={"50256": -100}), "logit_bias"),
        (chat(user("x"), reasoning_effort="high"), "reasoning_effort"),
        (chat(user("x"), functions=[{"name": "f"}]), "legacy function calling"),
        (chat(user("x"), temperature=1.5), "temperature"),
        (
            chat(user("x"), tools=[{"type": "custom", "custom": {"name": "c"}}]),
            "tools of type 'custom'",
        ),
        (
            chat(user([{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}])),
            "'input_audio' content parts",
        ),
        (chat(user([{"type": "file", "file": {"file_id": "file-1"}}])), "file parts"),
        (chat(user("x"), {"role": "function", "name": "f", "content": "r"}), "legacy function"),
    ],
)
def test_unsupported_features(body: dict[str, Any], feature: str) -> None:
    error = rejected(body)
    assert (error.status, error.code) == (400, "unsupported_parameter")
    assert "provider 'claude' (type 'anthropic')" in error.message
    assert feature in error.message


def test_harmless_defaults_are_accepted() -> None:
    body = sent(
        chat(
            user("x"),
            n=1,
            logprobs=False,
            frequency_penalty=0,
            presence_penalty=0.0,
            response_format={"type": "text"},
            logit_bias={},
            temperature=1,
        )
    )
    assert body["temperature"] == 1
    for absent in ("n", "logprobs", "frequency_penalty", "response_format", "logit_bias"):
        assert absent not in body


# -- buffered responses ----------------------------------------------------------------------


def message(
    content: list[dict[str, Any]],
    stop_reason: str | None = "end_turn",
    usage: dict[str, Any] | None = None,
) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage if usage is not None else {"input_tokens": 12, "output_tokens": 5},
        }
    )


def buffered(body: bytes) -> tuple[dict[str, Any], Translated]:
    a = answering()
    assert a.response_mode(200, {"content-type": "application/json"}) is ResponseMode.BUFFERED
    assert a.response_headers(200, {}).set_headers["content-type"] == "application/json"
    translated = a.response_body(body)
    return orjson.loads(translated.body), translated


# From Anthropic's stop reason documentation and OpenAI's finish_reason values.
STOP_REASONS = [
    ("end_turn", "stop"),
    ("stop_sequence", "stop"),
    ("pause_turn", "stop"),
    ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
    (None, "stop"),
]


@pytest.mark.parametrize(("stop_reason", "finish"), STOP_REASONS)
def test_buffered_stop_reasons(stop_reason: str | None, finish: str) -> None:
    out, _ = buffered(message([{"type": "text", "text": "ok"}], stop_reason))
    assert out["choices"][0]["finish_reason"] == finish


def test_buffered_text_and_usage() -> None:
    out, a = buffered(
        message(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Hello, "},
                {"type": "text", "text": TRICKY},
            ],
            usage={
                "input_tokens": 10,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 3,
                "output_tokens": 7,
            },
        )
    )
    assert out["object"] == "chat.completion"
    assert out["model"] == ANSWER_MODEL  # the model that answered, as Anthropic names it
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, " + TRICKY, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert out["usage"] == {
        "prompt_tokens": 18,
        "completion_tokens": 7,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    assert a.usage == Usage(18, 7, 25, cached_tokens=3)
    assert a.model == ANSWER_MODEL


def test_buffered_null_cache_counters() -> None:
    out, _ = buffered(
        message(
            [{"type": "text", "text": "x"}],
            usage={"input_tokens": 4, "cache_read_input_tokens": None, "output_tokens": 2},
        )
    )
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}


def test_buffered_tool_use() -> None:
    out, _ = buffered(
        message(
            [
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris", "unit": "c"},
                },
                {"type": "tool_use", "id": "toolu_02", "name": "now", "input": {}},
            ],
            "tool_use",
        )
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_01", "function", "get_weather"),
        ("toolu_02", "function", "now"),
    ]
    assert orjson.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert orjson.loads(calls[1]["function"]["arguments"]) == {}


def test_buffered_text_with_tool_use_keeps_the_text() -> None:
    out, _ = buffered(
        message(
            [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
            ],
            "tool_use",
        )
    )
    assert out["choices"][0]["message"]["content"] == "Checking."
    assert len(out["choices"][0]["message"]["tool_calls"]) == 1


MALFORMED_BODIES = [
    b"",
    b"   \n",
    message([{"type": "text", "text": "cut"}])[:-20],
    b"<html><body><h1>502 Bad Gateway</h1></body></html>",
    b"[]",
    b'"message"',
    b'{"id": "msg_01", "type": "message", "usage": {"input_tokens": 1, "output_tokens": 1}}',
    b'{"type": "message", "content": "text", "usage": {"input_tokens": 1, "output_tokens": 1}}',
    b'{"type": "message", "content": []}',
    message([{"type": "text", "text": "x"}], usage={"input_tokens": "ten", "output_tokens": 1}),
    message([{"type": "text", "text": "x"}], usage={"input_tokens": -1, "output_tokens": 1}),
    message([{"type": "text", "text": 5}]),
    message([{"type": "tool_use", "name": "f", "input": {}}]),
    message([{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]),
    message(["just a string"]),  # type: ignore[list-item]
    message([{"text": "no type"}]),
    orjson.dumps(
        {"type": "message", "content": [], "stop_reason": 3, "usage": {"output_tokens": 1}}
    ),
]


@pytest.mark.parametrize("body", MALFORMED_BODIES)
def test_malformed_buffered_responses_are_502(body: bytes) -> None:
    a = answering()
    with pytest.raises(GatewayError) as info:
        a.response_body(body)
    assert (info.value.status, info.value.code) == (502, "malformed_provider_response")


def test_error_object_in_a_2xx_body_is_mapped() -> None:
    body = orjson.dumps(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    with pytest.raises(GatewayError) as info:
        answering().response_body(body)
    assert info.value.status == 503


# -- error responses -------------------------------------------------------------------------


def anthropic_error(error_type: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_1"}
    )


TOO_LONG = "prompt is too long: 210000 tokens > 200000 maximum"
ERROR_CASES = [
    # (HTTP status, Anthropic error type, message) → (client status, client code)
    (
        (429, "rate_limit_error", "Number of request tokens has exceeded your limit"),
        (429, "rate_limit_exceeded"),
    ),
    ((529, "overloaded_error", "Overloaded"), (503, "provider_overloaded")),
    ((401, "authentication_error", "invalid x-api-key"), (502, "provider_auth_failed")),
    ((403, "permission_error", "no permission"), (502, "provider_auth_failed")),
    ((400, "invalid_request_error", TOO_LONG), (400, "context_length_exceeded")),
    (
        (400, "invalid_request_error", "messages.0: Field required"),
        (400, "provider_invalid_request"),
    ),
    ((500, "api_error", "Internal server error"), (502, "provider_error")),
    ((404, "not_found_error", "model: claude-nope"), (502, "provider_error")),
    ((413, "request_too_large", "Request exceeds the maximum size"), (413, "payload_too_large")),
    ((504, "timeout_error", "Request timed out"), (504, "provider_timeout")),
]


@pytest.mark.parametrize(("upstream", "expected"), ERROR_CASES)
def test_error_mapping(upstream: tuple[int, str, str], expected: tuple[int, str]) -> None:
    status, error_type, message = upstream
    error = adapter().response_error(status, {}, anthropic_error(error_type, message))
    assert (error.status, error.code) == expected
    assert "claude" in error.message


def test_rate_limit_keeps_retry_after() -> None:
    error = adapter().response_error(
        429, {"retry-after": "17"}, anthropic_error("rate_limit_error", "slow down")
    )
    assert error.status == 429
    assert error.headers["retry-after"] == "17"


def test_invalid_request_passes_the_provider_message() -> None:
    error = adapter().response_error(
        400, {}, anthropic_error("invalid_request_error", "stop_sequences: too many")
    )
    assert "stop_sequences: too many" in error.message


def test_auth_errors_never_echo_the_provider_message() -> None:
    error = adapter().response_error(
        401, {}, anthropic_error("authentication_error", f"invalid x-api-key {KEY}")
    )
    assert KEY not in error.message


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b"<html><body>Internal Server Error</body></html>"),
        (502, b""),
        (400, b"<html><body>Bad Request</body></html>"),
        (404, b""),
        (400, b'{"message": "not the Anthropic shape"}'),
        (500, b'{"type": "error", "error": "flat string"}'),
    ],
)
def test_unreadable_error_bodies_are_502(status: int, body: bytes) -> None:
    error = adapter().response_error(status, {}, body)
    assert error.status == 502


def test_status_alone_still_counts_for_rate_limits_and_overload() -> None:
    html = b"<html>Too Many Requests</html>"
    limited = adapter().response_error(429, {"retry-after": "3"}, html)
    assert (limited.status, limited.headers["retry-after"]) == (429, "3")
    assert adapter().response_error(529, {}, b"").status == 503


# -- streaming -------------------------------------------------------------------------------


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def message_start(input_tokens: int = 25, **usage: int) -> bytes:
    return event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-sonnet-4-5-20250929",
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
            },
        },
    )


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def delta(index: int, payload: dict[str, Any]) -> bytes:
    return event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload}
    )


def text_delta(index: int, text: str) -> bytes:
    return delta(index, {"type": "text_delta", "text": text})


def json_delta(index: int, partial: str) -> bytes:
    return delta(index, {"type": "input_json_delta", "partial_json": partial})


def block_stop(index: int) -> bytes:
    return event("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str, output_tokens: int) -> bytes:
    return event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
    )


PING = event("ping", {"type": "ping"})
MESSAGE_STOP = event("message_stop", {"type": "message_stop"})
OVERLOADED = event(
    "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
)

TEXT_STREAM = (
    message_start(25)
    + block_start(0, {"type": "text", "text": ""})
    + PING
    + text_delta(0, "Hello")
    + text_delta(0, " " + TRICKY)
    + block_stop(0)
    + message_delta("end_turn", 15)
    + MESSAGE_STOP
)

TOOL_STREAM = (
    message_start(30, cache_read_input_tokens=4)
    + block_start(0, {"type": "thinking", "thinking": ""})
    + delta(0, {"type": "thinking_delta", "thinking": "The user wants weather."})
    + delta(0, {"type": "signature_delta", "signature": "EqQBCg=="})
    + block_stop(0)
    + block_start(1, {"type": "text", "text": ""})
    + text_delta(1, "Checking.")
    + block_stop(1)
    + PING
    + block_start(2, {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}})
    + json_delta(2, "")
    + json_delta(2, '{"city": ')
    + json_delta(2, '"Paris"}')
    + block_stop(2)
    + block_start(3, {"type": "tool_use", "id": "toolu_B", "name": "now", "input": {}})
    + json_delta(3, "{}")
    + block_stop(3)
    + message_delta("tool_use", 42)
    + MESSAGE_STOP
)

ERROR_STREAM = (
    message_start(5)
    + block_start(0, {"type": "text", "text": ""})
    + text_delta(0, "partial")
    + OVERLOADED
    + text_delta(0, "ignored after the error")
    + MESSAGE_STOP
)


def parse(out: bytes) -> list[Any]:
    """OpenAI SSE output → list of chunk dicts (id/created removed) and "[DONE]"."""
    return openai_chunks.parse_sse(out)


class Run:
    """A stream fed through an adapter: the output and the last record it returned."""

    def __init__(self, chunks: list[bytes], include_usage: bool = True) -> None:
        self.adapter = answering(stream=True, include_usage=include_usage)
        self.out = b""
        for i, piece in enumerate(chunks):
            self.last = self.adapter.stream_chunk(piece, i == len(chunks) - 1)
            self.out += self.last.body


def run_stream(chunks: list[bytes], include_usage: bool = True) -> tuple[bytes, Translated]:
    run = Run(chunks, include_usage)
    return run.out, run.last


def chunk(delta_: dict[str, Any], finish: str | None = None, usage: bool = True) -> dict[str, Any]:
    return openai_chunks.chunk(ANSWER_MODEL, delta_, finish, usage)


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    return openai_chunks.usage_chunk(ANSWER_MODEL, prompt, completion, cached)


def test_stream_mode_and_headers() -> None:
    a = answering(stream=True)
    headers = {"content-type": "text/event-stream; charset=utf-8", "content-length": "9"}
    assert a.response_mode(200, headers) is ResponseMode.STREAMED
    changes = a.response_headers(200, headers)
    assert changes.set_headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "content-length" in changes.remove_headers
    assert a.response_mode(429, headers) is ResponseMode.BUFFERED


def test_text_stream() -> None:
    out, a = run_stream([TEXT_STREAM])
    assert parse(out) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " " + TRICKY}),
        chunk({}, "stop"),
        usage_chunk(25, 15),
        "[DONE]",
    ]
    assert a.usage == Usage(25, 15, 40)
    assert a.model == ANSWER_MODEL


def test_a_stream_is_complete_at_message_stop_not_at_an_error() -> None:
    # message_stop ends it: complete before the response's own end arrives.
    assert answering(stream=True).stream_chunk(TEXT_STREAM, False).complete
    assert not answering(stream=True).stream_chunk(TEXT_STREAM[:-20], False).complete
    assert not Run([ERROR_STREAM]).last.complete  # ended by an error event


def test_text_stream_without_include_usage() -> None:
    out, _ = run_stream([TEXT_STREAM], include_usage=False)
    assert parse(out) == [
        chunk({"role": "assistant", "content": ""}, usage=False),
        chunk({"content": "Hello"}, usage=False),
        chunk({"content": " " + TRICKY}, usage=False),
        chunk({}, "stop", usage=False),
        "[DONE]",
    ]


def test_tool_stream() -> None:
    out, a = run_stream([TOOL_STREAM])

    def call_start(index: int, call_id: str, name: str) -> dict[str, Any]:
        return openai_chunks.tool_start(ANSWER_MODEL, index, call_id, name)

    def call_args(index: int, fragment: str) -> dict[str, Any]:
        return openai_chunks.tool_arguments(ANSWER_MODEL, index, fragment)

    assert parse(out) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking."}),
        call_start(0, "toolu_A", "get_weather"),
        call_args(0, '{"city": '),
        call_args(0, '"Paris"}'),
        call_start(1, "toolu_B", "now"),
        call_args(1, "{}"),
        chunk({}, "tool_calls"),
        usage_chunk(34, 42, cached=4),
        "[DONE]",
    ]
    assert a.usage == Usage(34, 42, 76, cached_tokens=4)


@pytest.mark.parametrize(("stop_reason", "finish"), [s for s in STOP_REASONS if s[0]])
def test_stream_stop_reasons(stop_reason: str, finish: str) -> None:
    stream = (
        message_start()
        + block_start(0, {"type": "text", "text": ""})
        + text_delta(0, "x")
        + block_stop(0)
        + message_delta(stop_reason, 3)
        + MESSAGE_STOP
    )
    events = parse(run_stream([stream])[0])
    assert events[-3]["choices"][0]["finish_reason"] == finish


def test_message_delta_may_restate_input_usage() -> None:
    stream = (
        message_start(10)
        + event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"input_tokens": 12, "cache_read_input_tokens": 8, "output_tokens": 4},
            },
        )
        + MESSAGE_STOP
    )
    events = parse(run_stream([stream])[0])
    assert events[-2] == usage_chunk(20, 4, cached=8)


def test_mid_stream_error_event() -> None:
    run = Run([ERROR_STREAM])
    events = parse(run.out)
    assert events[:2] == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "partial"}),
    ]
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "provider_overloaded"
    assert error["type"] == "service_unavailable"
    assert "claude" in error["message"]
    assert len(events) == 4  # nothing after the error event
    assert run.adapter.stream_chunk(TEXT_STREAM, True).body == b""


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        ("rate_limit_error", "rate_limit_exceeded"),
        ("api_error", "provider_error"),
        ("invalid_request_error", "provider_invalid_request"),
        ("brand_new_error", "provider_error"),
    ],
)
def test_stream_error_types(error_type: str, code: str) -> None:
    stream = message_start() + event(
        "error", {"type": "error", "error": {"type": error_type, "message": "m"}}
    )
    events = parse(run_stream([stream])[0])
    assert events[-2]["error"]["code"] == code


@pytest.mark.parametrize(
    "cut",
    [
        len(message_start()) + 10,  # inside an event
        len(TEXT_STREAM) - len(MESSAGE_STOP) - 5,  # inside message_delta
        len(TEXT_STREAM) - 1,  # the last blank line is missing
    ],
)
def test_stream_cut_mid_event(cut: int) -> None:
    out, _ = run_stream([TEXT_STREAM[:cut]])
    events = parse(out)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "malformed_provider_response"
    assert "mid-event" in error["message"]


def test_stream_ends_between_events_without_message_stop() -> None:
    out, _ = run_stream([TEXT_STREAM[: -len(MESSAGE_STOP)]])
    events = parse(out)
    assert events[-2]["error"]["code"] == "malformed_provider_response"
    assert "message_stop" in events[-2]["error"]["message"]
    assert all(
        "finish_reason" not in e or e["choices"][0]["finish_reason"] is None for e in events[:-2]
    )


@pytest.mark.parametrize(
    "bad",
    [
        b"event: content_block_delta\ndata: {not json\n\n",
        b"data: [1, 2]\n\n",
        text_delta(7, "no such block"),
        json_delta(0, "{}"),  # block 0 is a text block
        event("message_start", {"type": "message_start"}),
        event("content_block_start", {"type": "content_block_start", "index": 1}),
        block_start(1, {"type": "tool_use", "name": "f", "input": {}}),
        event(
            "message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": "x"}}
        ),
        event("error", {"type": "error", "error": "flat"}),
    ],
)
def test_malformed_stream_events_end_the_stream(bad: bytes) -> None:
    head = message_start() + block_start(0, {"type": "text", "text": ""}) + text_delta(0, "ok")
    out, _ = run_stream([head + bad, text_delta(0, "more") + MESSAGE_STOP])
    events = parse(out)
    assert events[-1] == "[DONE]"
    assert "error" in events[-2]
    assert chunk({"content": "more"}) not in events


def test_unknown_events_and_deltas_are_ignored() -> None:
    stream = (
        message_start(3)
        + event("future_event", {"type": "future_event", "x": 1})
        + block_start(0, {"type": "text", "text": ""})
        + delta(0, {"type": "citations_delta", "citation": {"type": "char_location"}})
        + text_delta(0, "fine")
        + block_start(1, {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}})
        + json_delta(1, '{"q": "x"}')
        + block_stop(1)
        + message_delta("end_turn", 2)
        + MESSAGE_STOP
    )
    events = parse(run_stream([stream])[0])
    assert events == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "fine"}),
        chunk({}, "stop"),
        usage_chunk(3, 2),
        "[DONE]",
    ]


def test_each_event_is_emitted_as_soon_as_it_is_complete() -> None:
    a = answering(stream=True)
    assert parse(a.stream_chunk(message_start(), False).body) == [
        chunk({"role": "assistant", "content": ""}, usage=False)
    ]
    assert a.stream_chunk(block_start(0, {"type": "text", "text": ""}), False).body == b""
    piece = text_delta(0, "Hi")
    assert a.stream_chunk(piece[:-1], False).body == b""  # not complete yet
    assert parse(a.stream_chunk(piece[-1:], False).body) == [chunk({"content": "Hi"}, usage=False)]


@pytest.mark.parametrize(
    "stream",
    [TEXT_STREAM, TOOL_STREAM, ERROR_STREAM, TEXT_STREAM[:-30]],
    ids=["text", "tools", "error", "truncated"],
)
def test_every_split_point_gives_the_same_translation(stream: bytes) -> None:
    expected = parse(run_stream([stream])[0])
    for i in range(len(stream) + 1):
        assert parse(run_stream([stream[:i], stream[i:]])[0]) == expected, f"split at {i}"
    byte_by_byte = [stream[i : i + 1] for i in range(len(stream))] + [b""]
    assert parse(run_stream(byte_by_byte)[0]) == expected


def test_crlf_line_endings() -> None:
    expected = parse(run_stream([TEXT_STREAM])[0])
    assert parse(run_stream([TEXT_STREAM.replace(b"\n", b"\r\n")])[0]) == expected


def test_a_gemini_thought_signature_in_a_call_id_is_not_sent_to_anthropic() -> None:
    signed = call_id_with_signature("call_1", "++//ZmFrZQ==")
    body = chat(user("weather?"), *openai_chunks.tool_call_turns(signed))
    messages = sent(body)["messages"]
    assert messages[1]["content"][0]["id"] == "call_1"
    assert messages[2]["content"][0]["tool_use_id"] == "call_1"


# -- chunk boundaries are not event boundaries ------------------------------------------------


def splits(raw: bytes) -> list[list[bytes]]:
    """Every two-chunk split, then byte by byte (with a final empty end_of_stream chunk)."""
    out = [[raw[:i], raw[i:]] for i in range(len(raw) + 1)]
    out.append([raw[i : i + 1] for i in range(len(raw))] + [b""])
    return out


@pytest.mark.parametrize(
    "stream", [TEXT_STREAM, TOOL_STREAM, ERROR_STREAM], ids=["text", "tools", "error"]
)
def test_stream_at_every_split_point(stream: bytes) -> None:
    whole = parse(run_stream([stream])[0])
    assert whole[-1] == "[DONE]"
    for chunks in splits(stream):
        assert parse(run_stream(chunks)[0]) == whole, chunks


@given(st.lists(st.integers(min_value=0, max_value=len(TOOL_STREAM)), max_size=12))
def test_any_chunking_of_a_stream_translates_alike(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [
        TOOL_STREAM[a:b] for a, b in zip([0, *points], [*points, len(TOOL_STREAM)], strict=True)
    ]
    assert parse(run_stream(chunks)[0]) == parse(run_stream([TOOL_STREAM])[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_stream_never_raises_and_always_ends(chunks: list[bytes]) -> None:
    out, _ = run_stream([*chunks, b""])
    assert out.endswith(b"data: [DONE]\n\n")
