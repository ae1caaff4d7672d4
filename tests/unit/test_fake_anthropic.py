"""Tests of the fake Anthropic Messages API, over real HTTP to the threaded fake provider.

The last tests run the Anthropic adapter against the fake: the fake must speak what a
client of the real API (and the gateway's translator) expects.
"""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from extproc.config.schema import ProviderConfig, ProviderType
from extproc.dev.fakes import FakeProviderServer
from extproc.errors import GatewayError
from extproc.providers.anthropic.adapter import AnthropicAdapter
from extproc.providers.base import Translated
from extproc.streaming.sse import SSEEvent, SSEParser
from tests.unit.adapters import prepare

HEADERS = {"x-api-key": "sk-ant-fake", "anthropic-version": "2023-06-01"}
TRICKY = "hi 👩🏽‍💻 שלום مرحبا zero\u200bwidth e\u0301 漢字"


def post(
    fake: FakeProviderServer,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    path: str = "/v1/messages",
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    request = urllib.request.Request(
        fake.base_url + path,
        data=data if method == "POST" else None,
        method=method,
        headers={"content-type": "application/json", **(HEADERS if headers is None else headers)},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def messages_body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 64, "messages": list(messages), **fields}


def events(raw: bytes) -> tuple[list[SSEEvent], bool]:
    """(parsed events, whether an unfinished event was left over)."""
    parser = SSEParser()
    parsed = parser.feed(raw)
    return parsed, parser.pending


def datas(raw: bytes) -> list[dict[str, Any]]:
    parsed, pending = events(raw)
    assert not pending
    out = []
    for event in parsed:
        data = orjson.loads(event.data)
        assert data["type"] == event.event  # every Anthropic event names its type twice
        out.append(data)
    return out


def error_of(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    assert data["type"] == "error"
    error: dict[str, Any] = data["error"]
    assert isinstance(error["message"], str)
    return error


# -- requests and checks ---------------------------------------------------------------------


def test_non_stream_echo(fake: FakeProviderServer) -> None:
    body = messages_body(
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "a "}, {"type": "text", "text": TRICKY}],
        },
        system="be brief",
    )
    status, headers, raw = post(fake, body)
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert "request-id" in headers
    message = orjson.loads(raw)
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["model"] == "claude-test"
    assert message["id"].startswith("msg_")
    assert message["content"] == [{"type": "text", "text": "echo: a " + TRICKY}]
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    # count_tokens: whitespace-separated words.
    prompt_words = len(("be brief first ok a " + TRICKY).split())
    assert message["usage"] == {
        "input_tokens": prompt_words,
        "output_tokens": len(("echo: a " + TRICKY).split()),
    }
    recorded = fake.requests[-1]
    assert recorded.path == "/v1/messages"
    assert recorded.header("x-api-key") == "sk-ant-fake"
    assert recorded.json == body


def test_reply_override_and_stop_reason(fake: FakeProviderServer) -> None:
    fake.set_behaviour(reply="fixed", stop_reason="max_tokens")
    _, _, raw = post(fake, messages_body({"role": "user", "content": "x"}))
    message = orjson.loads(raw)
    assert message["content"] == [{"type": "text", "text": "fixed"}]
    assert message["stop_reason"] == "max_tokens"


def test_tool_calls_non_stream(fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        tool_calls=[
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "now", "arguments": {}},
        ]
    )
    _, _, raw = post(fake, messages_body({"role": "user", "content": "x"}))
    message = orjson.loads(raw)
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {
            "type": "tool_use",
            "id": "toolu_fake_0",
            "name": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "tool_use", "id": "toolu_fake_1", "name": "now", "input": {}},
    ]


def test_tool_calls_with_reply_keep_the_text_first(fake: FakeProviderServer) -> None:
    fake.set_behaviour(reply="Checking.", tool_calls=[{"name": "f", "arguments": {"a": 1}}])
    _, _, raw = post(fake, messages_body({"role": "user", "content": "x"}))
    content = orjson.loads(raw)["content"]
    assert [block["type"] for block in content] == ["text", "tool_use"]


@pytest.mark.parametrize(
    ("headers", "status", "error_type"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "k"}, 400, "invalid_request_error"),
    ],
)
def test_required_headers(
    fake: FakeProviderServer, headers: dict[str, str], status: int, error_type: str
) -> None:
    got, _, raw = post(fake, messages_body({"role": "user", "content": "x"}), headers=headers)
    assert got == status
    assert error_of(raw)["type"] == error_type


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "max_tokens": 10},
        {"model": "m", "max_tokens": 10, "messages": []},
        {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]},
        b"not json",
    ],
)
def test_invalid_bodies(fake: FakeProviderServer, body: Any) -> None:
    status, _, raw = post(fake, body)
    assert status == 400
    assert error_of(raw)["type"] == "invalid_request_error"


def test_only_post(fake: FakeProviderServer) -> None:
    status, _, raw = post(fake, None, method="GET")
    assert status == 404
    assert error_of(raw)["type"] == "not_found_error"


# -- streams ---------------------------------------------------------------------------------


def test_stream(fake: FakeProviderServer) -> None:
    status, headers, raw = post(
        fake, messages_body({"role": "user", "content": "tell me"}, stream=True)
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    stream = datas(raw)
    kinds = [d["type"] for d in stream]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert "ping" in kinds
    start = stream[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 2
    blocks = [d for d in stream if d["type"] == "content_block_start"]
    assert blocks == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    ]
    text = "".join(d["delta"]["text"] for d in stream if d["type"] == "content_block_delta")
    assert text == "echo: tell me"
    assert stream[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert stream[-2]["usage"] == {"output_tokens": 3}
    assert fake.stream_finished == 1


def test_stream_chunks_are_sent_verbatim(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_chunks=["Hel", "lo ", TRICKY])
    _, _, raw = post(fake, messages_body({"role": "user", "content": "x"}, stream=True))
    deltas = [d["delta"] for d in datas(raw) if d["type"] == "content_block_delta"]
    assert deltas == [
        {"type": "text_delta", "text": "Hel"},
        {"type": "text_delta", "text": "lo "},
        {"type": "text_delta", "text": TRICKY},
    ]


def test_stream_tool_calls(fake: FakeProviderServer) -> None:
    arguments = {"city": "Paris", "days": 3}
    fake.set_behaviour(tool_calls=[{"name": "get_weather", "arguments": arguments}])
    _, _, raw = post(fake, messages_body({"role": "user", "content": "x"}, stream=True))
    stream = datas(raw)
    starts = [d for d in stream if d["type"] == "content_block_start"]
    assert starts == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_fake_0",
                "name": "get_weather",
                "input": {},
            },
        }
    ]
    partial = [
        d["delta"]["partial_json"]
        for d in stream
        if d["type"] == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert len(partial) > 1
    assert orjson.loads("".join(partial)) == arguments
    assert stream[-2]["delta"]["stop_reason"] == "tool_use"


def test_stream_error_after(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_error_after=3)
    _, _, raw = post(fake, messages_body({"role": "user", "content": "a b c"}, stream=True))
    parsed, pending = events(raw)
    assert not pending
    assert [e.event for e in parsed] == [
        "message_start",
        "content_block_start",
        "ping",
        "error",
    ]
    assert orjson.loads(parsed[-1].data) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


def test_stream_truncation_leaves_an_unfinished_event(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_truncate_after=4)
    _, _, raw = post(fake, messages_body({"role": "user", "content": "a b c"}, stream=True))
    parsed, pending = events(raw)
    assert len(parsed) == 4
    assert pending
    assert b"message_stop" not in raw


# -- injected errors -------------------------------------------------------------------------

# The error type Anthropic documents for each status.
DOCUMENTED_TYPES = [
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (413, "request_too_large"),
    (429, "rate_limit_error"),
    (500, "api_error"),
    (529, "overloaded_error"),
]


@pytest.mark.parametrize(("status", "error_type"), DOCUMENTED_TYPES)
def test_injected_errors(fake: FakeProviderServer, status: int, error_type: str) -> None:
    fake.set_behaviour(status=status)
    got, headers, raw = post(fake, messages_body({"role": "user", "content": "x"}))
    assert got == status
    assert headers["content-type"].startswith("application/json")
    assert error_of(raw)["type"] == error_type


def test_injected_error_headers_and_body(fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        status=429, error_headers={"retry-after": "9"}, error_body=b"<html>slow down</html>"
    )
    status, headers, raw = post(fake, messages_body({"role": "user", "content": "x"}))
    assert (status, headers["retry-after"], raw) == (429, "9", b"<html>slow down</html>")


def test_fail_times_then_success(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=529, fail_times=1)
    assert post(fake, messages_body({"role": "user", "content": "x"}))[0] == 529
    assert post(fake, messages_body({"role": "user", "content": "x"}))[0] == 200


def test_a_2xx_status_with_error_body_serves_that_body(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=200, error_body=b'{"truncated":')
    status, _, raw = post(fake, messages_body({"role": "user", "content": "x"}))
    assert (status, raw) == (200, b'{"truncated":')


# -- the adapter against the fake ------------------------------------------------------------


def through_adapter(
    fake: FakeProviderServer, openai_body: dict[str, Any], *, stream: bool
) -> tuple[int, bytes, Translated]:
    provider = ProviderConfig(
        name="fake-anthropic",
        type=ProviderType.ANTHROPIC,
        base_url=fake.base_url + "/v1",
        api_key_env="X",
    )
    adapter = AnthropicAdapter(provider, SecretStr("sk-ant-fake"), "claude-test", 4096)
    if stream:
        openai_body = {**openai_body, "stream": True, "stream_options": {"include_usage": True}}
    upstream = prepare(adapter, openai_body)
    assert upstream.body is not None
    status, _, raw = post(fake, upstream.body, headers=upstream.set_headers, path=upstream.path)
    if status >= 300:
        raise adapter.response_error(status, {}, raw)
    translated = adapter.stream_chunk(raw, True) if stream else adapter.response_body(raw)
    return status, translated.body, translated


def test_adapter_buffered_round_trip(fake: FakeProviderServer) -> None:
    body = {
        "model": "smart",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": TRICKY}],
    }
    _, out, translated = through_adapter(fake, body, stream=False)
    completion = orjson.loads(out)
    assert completion["choices"][0]["message"]["content"] == "echo: " + TRICKY
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["model"] == "claude-test"  # the model the fake says answered
    sent = fake.requests[-1].json
    assert sent["system"] == "sys" and sent["max_tokens"] == 4096
    assert translated.usage is not None
    assert translated.usage.completion_tokens == len(("echo: " + TRICKY).split())


def test_adapter_stream_round_trip_with_tools(fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        stream_chunks=["Let me ", "check."],
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}],
    )
    body = {"model": "smart", "messages": [{"role": "user", "content": "w?"}], "stream": True}
    _, out, _ = through_adapter(fake, body, stream=True)
    parser = SSEParser()
    chunks = [orjson.loads(e.data) for e in parser.feed(out) if e.data != "[DONE]"]
    assert out.endswith(b"data: [DONE]\n\n")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    arguments = "".join(
        call["function"]["arguments"] for d in deltas for call in d.get("tool_calls", ())
    )
    assert text == "Let me check."
    assert orjson.loads(arguments) == {"city": "Oslo"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 1


def test_adapter_maps_the_fakes_errors(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=529)
    body = {"model": "smart", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(GatewayError) as info:
        through_adapter(fake, body, stream=False)
    assert (info.value.status, info.value.code) == (503, "provider_overloaded")


def test_adapter_stream_error_after(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_error_after=4)
    body = {"model": "smart", "messages": [{"role": "user", "content": "a b"}], "stream": True}
    _, out, _ = through_adapter(fake, body, stream=True)
    last = SSEParser().feed(out)[-2]
    assert orjson.loads(last.data)["error"]["code"] == "provider_overloaded"


def test_stream_gate_holds_after_the_first_text_delta(fake: FakeProviderServer) -> None:
    gate = threading.Event()
    fake.set_behaviour(stream_gate=gate, stream_chunks=["one ", "two"])
    connection = http.client.HTTPConnection(fake.host, fake.port, timeout=5)
    try:
        body = orjson.dumps(messages_body({"role": "user", "content": "x"}, stream=True))
        connection.request("POST", "/v1/messages", body=body, headers=HEADERS)
        response = connection.getresponse()
        received = b""
        while b"one " not in received:
            received += response.read1(65536)
        assert b"two" not in received and b"message_stop" not in received
        gate.set()
        received += response.read()
    finally:
        connection.close()
    assert [d["type"] for d in datas(received)][-1] == "message_stop"
