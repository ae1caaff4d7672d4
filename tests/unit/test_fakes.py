"""Tests of the fake upstream provider itself, talked to directly (no Envoy)."""

from __future__ import annotations

import ast
import base64
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import openai
import orjson
import pytest
from botocore.eventstream import EventStreamBuffer
from pydantic import SecretStr

from extproc.config.credentials import AwsCredentials
from extproc.dev.fakes import (
    Behaviour,
    FakeProviderServer,
    embedding_vector,
    openai_error,
    split_reply,
)
from extproc.dev.fakes.bedrock import current_credentials
from extproc.providers.bedrock.sigv4 import sign_headers

# Emoji with ZWJ + skin tone, RTL Hebrew/Arabic, zero-width space/joiner, combining accent, CJK.
TRICKY_TEXT = "hi 👩🏽‍💻 שלום مرحبا zero\u200bwidth\u200d e\u0301 漢字 🇺🇦"


def sdk_client(fake: FakeProviderServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0, timeout=5
    )


@pytest.fixture
def client(fake: FakeProviderServer) -> Iterator[openai.OpenAI]:
    with sdk_client(fake) as sdk:
        yield sdk


def http(
    fake: FakeProviderServer,
    path: str,
    body: Any = None,
    *,
    method: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, bytes]:
    """Plain urllib request: (status, case-insensitive headers, body), also for HTTP errors."""
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    request = urllib.request.Request(
        fake.base_url + path,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def sse_events(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n")
    events = body.split(b"\n\n")[:-1]
    assert all(event.startswith(b"data: ") for event in events)
    return [event[len(b"data: ") :] for event in events]


def chat_body(text: Any = "hello world", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": text}], **extra}


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- chat ------------------------------------------------------------------------------------


def test_chat_non_stream_shape_via_sdk(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hello there world"},
        ],
    )
    assert completion.id.startswith("chatcmpl-fake-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    assert completion.system_fingerprint == "fp_fake"
    (choice,) = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello there world"
    assert choice.message.refusal is None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 8  # words across all messages
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 12


def test_a_fake_told_to_keep_few_requests_remembers_only_the_latest() -> None:
    # The command-line fake keeps none: a benchmark's 1 MB prompts piled up to 22 GB.
    with FakeProviderServer(port=0, keep=2) as fake:
        for n in range(3):
            answer = httpx.post(
                f"{fake.base_url}/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": f"n{n}"}]},
            )
            assert answer.status_code == 200
        assert [r.json["messages"][0]["content"] for r in fake.requests] == ["n1", "n2"]


def test_chat_non_stream_exact_wire_shape(fake: FakeProviderServer) -> None:
    status, headers, body = http(fake, "/v1/chat/completions", chat_body("a b c"))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["x-request-id"] == "req_fake_1"
    payload = orjson.loads(body)
    assert isinstance(payload.pop("created"), int)
    assert payload == {
        "id": "chatcmpl-fake-1",
        "object": "chat.completion",
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: a b c", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "system_fingerprint": "fp_fake",
    }


def test_chat_echo_round_trips_unicode_byte_exact(
    fake: FakeProviderServer, client: openai.OpenAI
) -> None:
    completion = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": TRICKY_TEXT}]
    )
    assert completion.choices[0].message.content == "echo: " + TRICKY_TEXT

    _, _, body = http(fake, "/v1/chat/completions", chat_body(TRICKY_TEXT))
    assert ("echo: " + TRICKY_TEXT).encode() in body  # raw UTF-8, not \u escapes
    assert fake.requests[-1].json["messages"][0]["content"] == TRICKY_TEXT


def test_chat_content_parts_are_joined(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-test",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look: "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                    {"type": "text", "text": "שלום"},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "echo: look: שלום"


def test_path_prefix_is_tolerated(fake: FakeProviderServer) -> None:
    status, _, body = http(fake, "/some/gateway/prefix/v1/chat/completions", chat_body("x"))
    assert status == 200
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "echo: x"


def test_reply_override(fake: FakeProviderServer, client: openai.OpenAI) -> None:
    fake.set_behaviour(reply="fixed answer")
    completion = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "ignored"}]
    )
    assert completion.choices[0].message.content == "fixed answer"


def test_chat_validation_errors(fake: FakeProviderServer) -> None:
    status, _, body = http(fake, "/v1/chat/completions", {"model": "gpt-test"})
    assert status == 400
    assert orjson.loads(body)["error"]["param"] == "messages"

    status, _, body = http(fake, "/v1/chat/completions", {"messages": [{"role": "user"}]})
    assert status == 400
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"

    status, _, body = http(fake, "/v1/chat/completions", raw=b"{not json")
    assert status == 400
    assert "parse the JSON body" in orjson.loads(body)["error"]["message"]


# -- streaming -------------------------------------------------------------------------------


def test_stream_wire_shape_and_done(fake: FakeProviderServer) -> None:
    status, headers, body = http(fake, "/v1/chat/completions", chat_body("one two", stream=True))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Length" not in headers
    events = sse_events(body)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-fake-1"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "gpt-test"
        assert "usage" not in chunk
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d["content"] for d in deltas[1:-1]] == ["echo:", " one", " two"]
    assert deltas[-1] == {}
    assert finishes == [None, None, None, None, "stop"]
    assert fake.stream_started == fake.stream_finished == 1


def test_stream_via_sdk_concatenates_to_reply(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": TRICKY_TEXT}], stream=True
    )
    with stream:
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: " + TRICKY_TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_stream_usage_chunk_when_requested(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "count these words"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        chunks = list(stream)
    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 4)
    assert last.usage.total_tokens == 7
    assert all(c.usage is None for c in content)
    assert content[-1].choices[0].finish_reason == "stop"


def test_stream_explicit_chunks_and_chunk_count(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_chunks=["Hel", "lo", " 👋"])
    _, _, body = http(fake, "/v1/chat/completions", chat_body(stream=True))
    chunks = [orjson.loads(e) for e in sse_events(body)[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["Hel", "lo", " 👋"]

    fake.set_behaviour(reply="abcdefghij", stream_chunk_count=4)
    _, _, body = http(fake, "/v1/chat/completions", chat_body(stream=True))
    pieces = [orjson.loads(e)["choices"][0]["delta"]["content"] for e in sse_events(body)[1:-2]]
    assert pieces == ["ab", "cde", "fg", "hij"]


def test_split_reply_keeps_every_character() -> None:
    for text in ["", "one", "  lead and trail  ", "a\n\nb\tc", TRICKY_TEXT]:
        assert "".join(split_reply(text)) == text
        assert "".join(split_reply(text, 7)) == text
        assert len(split_reply(text, 7)) == 7
    assert split_reply("echo: a  b ") == ["echo:", " a", "  b", " "]


def test_chunk_interval_paces_the_stream() -> None:
    # An interval no test run reaches: the stream can only get past its first frame by not
    # pausing, and shutdown is what ends the pause (nothing is timed).
    behaviour = Behaviour(reply="a b c", chunk_interval_s=3600)
    with FakeProviderServer(behaviour=behaviour) as fake, sdk_client(fake) as client:
        stream = client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with stream:
            iterator = iter(stream)
            assert next(iterator).choices[0].delta.role == "assistant"
            fake.stop()
            rest = list(iterator)
    assert rest == []  # ended cleanly during the first pause, before the first content chunk
    assert (fake.stream_started, fake.stream_finished, fake.stream_aborted) == (1, 0, 1)


def test_stream_gate_holds_the_stream(fake: FakeProviderServer, client: openai.OpenAI) -> None:
    gate = threading.Event()
    fake.set_behaviour(stream_chunks=["first", " second", " third"], stream_gate=gate)
    stream = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "x"}], stream=True
    )
    with stream:
        iterator = iter(stream)
        assert next(iterator).choices[0].delta.role == "assistant"
        assert next(iterator).choices[0].delta.content == "first"
        assert fake.stream_started == 1
        assert fake.stream_finished == 0  # the client got data before the provider finished
        gate.set()
        rest = list(iterator)
    assert "".join(c.choices[0].delta.content or "" for c in rest) == " second third"
    assert fake.stream_finished == 1
    assert fake.stream_aborted == 0


def test_gated_stream_notices_client_disconnect(
    fake: FakeProviderServer, client: openai.OpenAI
) -> None:
    gate = threading.Event()
    fake.set_behaviour(stream_chunks=["first", " second"], stream_gate=gate)
    stream = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "x"}], stream=True
    )
    iterator = iter(stream)
    next(iterator)
    next(iterator)
    stream.close()
    wait_until(lambda: fake.stream_aborted == 1)
    assert fake.stream_finished == 0


# -- embeddings and models -------------------------------------------------------------------


def test_embeddings_via_sdk_default_base64(fake: FakeProviderServer, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-test", input=["alpha", TRICKY_TEXT])
    assert fake.requests[-1].json["encoding_format"] == "base64"  # the SDK's default
    assert result.model == "text-embedding-test"
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == embedding_vector("alpha", 8)
    assert result.data[1].embedding == embedding_vector(TRICKY_TEXT, 8)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == result.usage.total_tokens == 1 + len(TRICKY_TEXT.split())


def test_embeddings_float_format_and_inputs(fake: FakeProviderServer) -> None:
    body: dict[str, Any] = {"model": "e", "input": "one two", "encoding_format": "float"}
    status, headers, raw = http(fake, "/v1/embeddings", body)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    payload = orjson.loads(raw)
    assert payload == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding_vector("one two", 8)}],
        "model": "e",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }

    _, _, raw = http(fake, "/v1/embeddings", {"model": "e", "input": [1, 2, 3]})
    payload = orjson.loads(raw)
    assert len(payload["data"]) == 1  # a single token array
    assert payload["usage"]["prompt_tokens"] == 3

    _, _, raw = http(
        fake, "/v1/embeddings", {"model": "e", "input": [[1, 2], [3]], "dimensions": 3}
    )
    payload = orjson.loads(raw)
    assert [len(d["embedding"]) for d in payload["data"]] == [3, 3]

    body = {"model": "e", "input": "x", "encoding_format": "base64", "dimensions": 20}
    _, _, raw = http(fake, "/v1/embeddings", body)
    encoded = orjson.loads(raw)["data"][0]["embedding"]
    decoded = list(struct.unpack("<20f", base64.b64decode(encoded)))
    assert decoded == embedding_vector("x", 20)

    status, _, raw = http(fake, "/v1/embeddings", {"model": "e", "input": [{"bad": 1}]})
    assert status == 400
    assert orjson.loads(raw)["error"]["param"] == "input"


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [("fake-model", "model", "fake")]


def test_unknown_route_is_openai_404(fake: FakeProviderServer) -> None:
    status, _, body = http(fake, "/v1/chat/completions", method="GET")
    assert status == 404
    assert orjson.loads(body) == {
        "error": {
            "message": "Invalid URL (GET /v1/chat/completions)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert http(fake, "/v1/nope", {})[0] == 404


# -- Azure -----------------------------------------------------------------------------------


def test_azure_paths_via_sdk(fake: FakeProviderServer) -> None:
    with openai.AzureOpenAI(
        azure_endpoint=fake.base_url,
        api_version="2024-10-21",
        api_key="azure-key",
        max_retries=0,
        timeout=5,
    ) as azure:
        completion = azure.chat.completions.create(
            model="my-gpt-deployment", messages=[{"role": "user", "content": "hi azure"}]
        )
        embeddings = azure.embeddings.create(model="my-embedding-deployment", input="x")
    assert completion.model == "my-gpt-deployment"
    assert completion.choices[0].message.content == "echo: hi azure"
    assert embeddings.model == "my-embedding-deployment"
    assert embeddings.data[0].embedding == embedding_vector("x", 8)

    chat, embed = fake.requests
    assert chat.path == "/openai/deployments/my-gpt-deployment/chat/completions"
    assert chat.deployment == "my-gpt-deployment"
    assert chat.query_param("api-version") == "2024-10-21"
    assert chat.header("API-KEY") == "azure-key"
    assert embed.path == "/openai/deployments/my-embedding-deployment/embeddings"
    assert embed.deployment == "my-embedding-deployment"


def test_azure_body_model_is_ignored_for_deployment(fake: FakeProviderServer) -> None:
    path = "/openai/deployments/dep-1/chat/completions?api-version=2024-10-21"
    status, _, body = http(fake, path, {"messages": [{"role": "user", "content": "x"}]})
    assert status == 200
    assert orjson.loads(body)["model"] == "dep-1"


def test_azure_without_api_version_is_404(fake: FakeProviderServer) -> None:
    for path in [
        "/openai/deployments/dep-1/chat/completions",
        "/openai/deployments/dep-1/embeddings",
        "/openai/deployments/dep-1/unknown?api-version=2024-10-21",
    ]:
        status, headers, body = http(fake, path, chat_body())
        assert status == 404
        assert headers["Content-Type"] == "application/json"
        assert orjson.loads(body) == {"error": {"code": "404", "message": "Resource not found"}}
    assert [r.deployment for r in fake.requests] == ["dep-1"] * 3


# -- recording and control -------------------------------------------------------------------


def test_recording(fake: FakeProviderServer, client: openai.OpenAI) -> None:
    before = time.monotonic()
    client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Custom-Header": "v1"},
    )
    status, _, _ = http(
        fake, "/v1/chat/completions?trace=1&x=", raw=b"\xff not json", headers={"x-a": "b"}
    )
    assert status == 400

    first, second = fake.wait_for_requests(2)
    assert (first.seq, second.seq) == (1, 2)
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.header("authorization") == "Bearer sk-test"
    assert first.header("x-custom-header") == first.header("X-CUSTOM-HEADER") == "v1"
    assert first.header("missing") is None
    assert first.header_values("x-custom-header") == ["v1"]
    assert first.json["messages"] == [{"role": "user", "content": "hi"}]
    assert orjson.loads(first.body) == first.json
    assert before <= first.received_at <= second.received_at <= time.monotonic()

    assert second.body == b"\xff not json"
    assert second.json is None
    assert second.query_string == "trace=1&x="
    assert second.query_param("trace") == "1"
    assert second.query_param("x") == ""
    assert second.query_param("nope") is None
    assert second.deployment is None

    fake.clear()
    assert fake.requests == []
    with pytest.raises(TimeoutError):
        fake.wait_for_requests(1, timeout=0.05)


def test_requests_snapshot_is_a_copy(fake: FakeProviderServer) -> None:
    http(fake, "/v1/models")
    snapshot = fake.requests
    http(fake, "/v1/models")
    assert len(snapshot) == 1
    assert len(fake.requests) == 2


def test_injected_error_default_body(fake: FakeProviderServer, client: openai.OpenAI) -> None:
    fake.set_behaviour(status=429)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"

    status, headers, body = http(fake, "/v1/embeddings", {"model": "e", "input": "x"})
    assert status == 429
    assert headers["Content-Type"] == "application/json"
    assert body == openai_error(429)
    assert len(fake.requests) == 2  # injected failures are recorded too


def test_injected_error_custom_body_and_headers(fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        status=503,
        error_body=b"upstream overloaded",
        error_headers={"content-type": "text/plain", "Retry-After": "7"},
    )
    status, headers, body = http(fake, "/v1/chat/completions", chat_body())
    assert (status, body) == (503, b"upstream overloaded")
    assert headers["Content-Type"] == "text/plain"
    assert headers["Retry-After"] == "7"

    fake.set_behaviour(status=200, error_body=b'{"truncated":')  # malformed success body
    assert http(fake, "/v1/chat/completions", chat_body())[::2] == (200, b'{"truncated":')


def test_fail_times_then_recovers(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=500, fail_times=2, error_headers={"retry-after-ms": "1"})
    assert http(fake, "/v1/chat/completions", chat_body())[0] == 500
    assert http(fake, "/v1/chat/completions", chat_body())[0] == 500
    assert http(fake, "/v1/chat/completions", chat_body())[0] == 200
    assert len(fake.requests) == 3

    fake.set_behaviour(status=503, fail_times=2, error_headers={"retry-after-ms": "1"})
    with openai.OpenAI(
        base_url=fake.base_url + "/v1", api_key="x", max_retries=2, timeout=5
    ) as retrying:
        completion = retrying.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "retry me"}]
        )
    assert completion.choices[0].message.content == "echo: retry me"
    assert len(fake.requests) == 6


def test_latency_holds_the_answer_not_the_recording() -> None:
    # With an hour of latency and an hour of shutdown timeout, only a request still held by
    # the latency gets the shutdown answer; and it is recorded while it is held.
    answers: list[tuple[int, Message, bytes]] = []
    with FakeProviderServer(behaviour=Behaviour(latency_s=3600), shutdown_timeout=3600) as fake:
        caller = threading.Thread(target=lambda: answers.append(http(fake, "/v1/models")))
        caller.start()
        [recorded] = fake.wait_for_requests(1)
        assert recorded.path == "/v1/models"
        fake.stop()
        caller.join()
    [(status, _, body)] = answers
    assert status == 503
    assert orjson.loads(body)["error"]["message"] == "The fake provider is shutting down."


def test_clear_restores_default_behaviour(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=500)
    assert fake.behaviour.status == 500
    fake.clear()
    assert fake.behaviour == Behaviour()
    assert http(fake, "/v1/models")[0] == 200


def test_behaviour_validation() -> None:
    with pytest.raises(ValueError, match="fail_times"):
        Behaviour(fail_times=1)
    with pytest.raises(ValueError, match="status"):
        Behaviour(status=99)
    with pytest.raises(ValueError):
        Behaviour(latency_s=-1)
    with pytest.raises(ValueError, match="stream_drop_after"):
        Behaviour(stream_drop_after=-1)
    with pytest.raises(ValueError, match="body_drop_after_bytes"):
        Behaviour(body_drop_after_bytes=-1)


# -- lifecycle -------------------------------------------------------------------------------


def test_start_stop_and_port_selection() -> None:
    fake = FakeProviderServer(port=0)
    with pytest.raises(RuntimeError):
        _ = fake.port
    fake.start()
    try:
        assert fake.port > 0
        assert fake.base_url == f"http://127.0.0.1:{fake.port}"
        with pytest.raises(RuntimeError):
            fake.start()
        assert http(fake, "/v1/models")[0] == 200
    finally:
        fake.stop()
    fake.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(fake.base_url + "/v1/models", timeout=2)


def test_stop_ends_slow_and_gated_requests_itself() -> None:
    # The shutdown timeout is an hour: stop() returns only if the delay and the gate wait end
    # on shutdown, not when aiohttp gives up on them.
    gate = threading.Event()
    answers: list[tuple[int, Message, bytes]] = []
    with FakeProviderServer(shutdown_timeout=3600) as fake:
        fake.set_behaviour(latency_s=3600)
        caller = threading.Thread(target=lambda: answers.append(http(fake, "/v1/models")))
        caller.start()
        fake.wait_for_requests(1)
        fake.set_behaviour(stream_gate=gate)
        with sdk_client(fake) as client:
            stream = client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "x"}], stream=True
            )
            with stream:
                next(iter(stream))
                fake.stop()
        caller.join()
    assert not gate.is_set()
    assert [status for status, _, _ in answers] == [503]
    assert fake.stream_aborted == 1
    assert fake.stream_finished == 0


def test_cli_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "extproc.dev.fakes", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        prefix = "fake provider listening on http://127.0.0.1:"
        assert line.startswith(prefix), line
        url = line.removeprefix("fake provider listening on ")
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as resp:
            assert orjson.loads(resp.read())["data"][0]["id"] == "fake-model"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# -- layout ----------------------------------------------------------------------------------

FAKES_PACKAGE = "extproc.dev.fakes"
FAKES_DIR = Path(__file__).parents[2] / "extproc" / "dev" / "fakes"
WIRE_MODULES = ("openai", "anthropic", "gemini", "bedrock")


def loaded_fakes_modules(module: str) -> list[str]:
    """The modules of the fakes package loaded by importing `module` alone, in a fresh process."""
    code = (
        "import json, sys, importlib\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({FAKES_PACKAGE!r}))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = orjson.loads(run.stdout)
    return loaded


def sibling_imports(module: str) -> set[str]:
    """Submodules of the fakes package that `module` imports anywhere (functions included)."""
    tree = ast.parse((FAKES_DIR / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import"
            if node.module == FAKES_PACKAGE:
                found |= {alias.name for alias in node.names}
            elif node.module and node.module.startswith(FAKES_PACKAGE + "."):
                found.add(node.module.removeprefix(FAKES_PACKAGE + "."))
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.removeprefix(FAKES_PACKAGE + ".")
                for alias in node.names
                if alias.name.startswith(FAKES_PACKAGE + ".")
            }
    return found


def test_core_alone_loads_no_wire_module() -> None:
    assert loaded_fakes_modules(f"{FAKES_PACKAGE}.core") == [
        FAKES_PACKAGE,
        f"{FAKES_PACKAGE}.core",
    ]


@pytest.mark.parametrize("wire", WIRE_MODULES)
def test_a_wire_module_loads_only_the_core(wire: str) -> None:
    expected = {FAKES_PACKAGE, f"{FAKES_PACKAGE}.core", f"{FAKES_PACKAGE}.{wire}"}
    if wire == "bedrock":
        expected.add(f"{FAKES_PACKAGE}.eventstream_encoder")
    assert set(loaded_fakes_modules(f"{FAKES_PACKAGE}.{wire}")) == expected


def test_no_import_runs_back_up_not_even_inside_a_function() -> None:
    assert sibling_imports("core") == set()
    for wire in WIRE_MODULES:
        assert sibling_imports(wire) <= {"core", "eventstream_encoder"}, wire
    assert sibling_imports("app") == {"core", *WIRE_MODULES}


# -- connection faults -----------------------------------------------------------------------


class Exchange(NamedTuple):
    """What one raw HTTP/1.1 exchange delivered: the head, the body bytes, how it ended."""

    head: bytes
    body: bytes
    reset: bool  # the server reset the connection (ECONNRESET), rather than closing it


class WireRequest(NamedTuple):
    """A request of one wire format, buffered and streamed."""

    path: str
    stream_path: str
    headers: dict[str, str]
    body: dict[str, Any]
    stream_body: dict[str, Any]
    frame_end: bytes | None  # how an SSE frame ends; None for Bedrock's binary event stream


WIRE_REQUESTS = {
    "openai": WireRequest(
        "/v1/chat/completions",
        "/v1/chat/completions",
        {},
        chat_body("a b c d"),
        chat_body("a b c d", stream=True),
        b"\n\n",
    ),
    "anthropic": WireRequest(
        "/v1/messages",
        "/v1/messages",
        {"x-api-key": "k", "anthropic-version": "2023-06-01"},
        {"model": "claude", "max_tokens": 9, "messages": [{"role": "user", "content": "a b c"}]},
        {
            "model": "claude",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "a b c"}],
            "stream": True,
        },
        b"\n\n",
    ),
    "gemini": WireRequest(
        "/v1beta/models/g:generateContent",
        "/v1beta/models/g:streamGenerateContent?alt=sse",
        {"x-goog-api-key": "k"},
        {"contents": [{"role": "user", "parts": [{"text": "a b c"}]}]},
        {"contents": [{"role": "user", "parts": [{"text": "a b c"}]}]},
        b"\r\n\r\n",
    ),
    "bedrock": WireRequest(
        "/model/m/converse",
        "/model/m/converse-stream",
        {},
        {"messages": [{"role": "user", "content": [{"text": "a b c"}]}]},
        {"messages": [{"role": "user", "content": [{"text": "a b c"}]}]},
        None,
    ),
}


def exchange(fake: FakeProviderServer, wire: str, *, stream: bool) -> Exchange:
    """POST the wire's request on a fresh socket and read until the server ends it."""
    spec = WIRE_REQUESTS[wire]
    path = spec.stream_path if stream else spec.path
    body = orjson.dumps(spec.stream_body if stream else spec.body)
    headers = {"host": f"{fake.host}:{fake.port}", "content-type": "application/json"}
    if wire == "bedrock":
        key = current_credentials()
        token = SecretStr(key.session_token) if key.session_token else None
        creds = AwsCredentials(key.access_key_id, SecretStr(key.secret_access_key), token)
        region = key.region or "us-east-1"
        url = fake.base_url + path
        headers = sign_headers(creds, region, "bedrock", "POST", url, headers, body)
    headers |= spec.headers | {"content-length": str(len(body)), "connection": "close"}
    request = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    received = bytearray()
    reset = False
    with socket.create_connection((fake.host, fake.port), timeout=5) as sock:
        sock.sendall(request.encode() + b"\r\n" + body)
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not data:
                break
            received += data
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    return Exchange(head, rest, reset)


def dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """(the chunks of a chunked body, whether the zero-length terminator came)."""
    chunks: list[bytes] = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        chunks.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
    return chunks, False


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError("no Content-Length")


def assert_whole_frames(wire: str, chunks: list[bytes]) -> None:
    """Each chunk is one whole stream frame of the wire format."""
    end = WIRE_REQUESTS[wire].frame_end
    if end is None:
        for chunk in chunks:
            buffer = EventStreamBuffer()
            buffer.add_data(chunk)
            assert len(list(buffer)) == 1
    else:
        assert all(chunk.endswith(end) and chunk.count(end) == 1 for chunk in chunks)


@pytest.mark.parametrize("wire", WIRE_REQUESTS)
def test_stream_complete_as_the_baseline(fake: FakeProviderServer, wire: str) -> None:
    answer = exchange(fake, wire, stream=True)
    assert answer.head.startswith(b"HTTP/1.1 200 ")
    chunks, terminated = dechunk(answer.body)
    assert terminated and not answer.reset
    assert len(chunks) > 3
    assert_whole_frames(wire, chunks)


@pytest.mark.parametrize("wire", WIRE_REQUESTS)
@pytest.mark.parametrize("frames", [0, 1, 3])
def test_stream_drop_after_sends_whole_frames_then_resets(
    fake: FakeProviderServer, wire: str, frames: int
) -> None:
    fake.set_behaviour(stream_drop_after=frames, chunk_interval_s=0.001)
    answer = exchange(fake, wire, stream=True)
    assert answer.head.startswith(b"HTTP/1.1 200 ")
    chunks, terminated = dechunk(answer.body)
    assert len(chunks) == frames
    assert_whole_frames(wire, chunks)
    assert not terminated  # no zero-length chunk
    assert answer.reset  # and no clean close either
    assert (fake.stream_started, fake.stream_finished, fake.stream_aborted) == (1, 0, 1)


@pytest.mark.parametrize("wire", WIRE_REQUESTS)
@pytest.mark.parametrize("sent", [0, 7])
def test_body_drop_after_bytes_sends_the_full_length_and_less(
    fake: FakeProviderServer, wire: str, sent: int
) -> None:
    whole = exchange(fake, wire, stream=False)
    fake.set_behaviour(body_drop_after_bytes=sent)
    answer = exchange(fake, wire, stream=False)
    assert answer.head.startswith(b"HTTP/1.1 200 ")
    assert content_length(answer.head) == content_length(whole.head) == len(whole.body)
    assert answer.body == whole.body[:sent]
    assert answer.reset
    assert not whole.reset


def test_a_large_dropped_body_arrives_whole_up_to_the_limit(fake: FakeProviderServer) -> None:
    # Megabytes still in the kernel's send queue when the reset goes out would be lost.
    fake.set_behaviour(reply="x" * 8_000_000, body_drop_after_bytes=7_999_000)
    answer = exchange(fake, "openai", stream=False)
    assert len(answer.body) == 7_999_000
    assert answer.reset


def test_body_drop_also_cuts_injected_errors(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=503, body_drop_after_bytes=5)
    answer = exchange(fake, "anthropic", stream=False)
    assert answer.head.startswith(b"HTTP/1.1 503 ")
    assert content_length(answer.head) > 5
    assert answer.body == b'{"typ'
    assert answer.reset


def test_faults_past_the_end_leave_the_answer_whole(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_drop_after=1000, body_drop_after_bytes=100_000)
    streamed = exchange(fake, "openai", stream=True)
    assert dechunk(streamed.body)[1] and not streamed.reset
    buffered = exchange(fake, "openai", stream=False)
    assert len(buffered.body) == content_length(buffered.head)
    assert not buffered.reset
    assert (fake.stream_finished, fake.stream_aborted) == (1, 0)


def test_clients_see_the_drops_as_transport_errors(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_drop_after=2, body_drop_after_bytes=10)
    url = fake.base_url + "/v1/chat/completions"
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json=chat_body(), timeout=5)
    received: list[bytes] = []
    with (
        pytest.raises(httpx.TransportError),
        httpx.stream("POST", url, json=chat_body(stream=True), timeout=5) as response,
    ):
        received.extend(response.iter_raw())
    assert b"".join(received).count(b"\n\n") == 2


def test_a_gated_body_drop_waits_for_the_gate(fake: FakeProviderServer) -> None:
    # The client sees the headers and the first bytes, and only then (the gate) the reset.
    gate = threading.Event()
    fake.set_behaviour(body_drop_after_bytes=10, stream_gate=gate)
    url = fake.base_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=chat_body(), timeout=10) as response:
        assert response.status_code == 200
        pieces = response.iter_raw()
        first = next(pieces)
        assert first and len(first) <= 10
        gate.set()
        with pytest.raises(httpx.TransportError):
            for _ in pieces:
                pass


# -- misbehaving answers ---------------------------------------------------------------------


def ids_aside(data: bytes) -> bytes:
    """`data` with every digit a 0: answers differ only in their ids and times."""
    return re.sub(rb"\d", b"0", data)


@pytest.mark.parametrize("wire", WIRE_REQUESTS)
@pytest.mark.parametrize("stream", [False, True])
def test_mangle_replaces_the_bytes_the_wire_would_send(
    fake: FakeProviderServer, wire: str, stream: bool
) -> None:
    whole = exchange(fake, wire, stream=stream)
    seen: list[bytes] = []

    def mangle(data: bytes) -> bytes:
        seen.append(data)
        return b"\xff<garbage>" + data[: len(data) // 3]

    fake.set_behaviour(mangle=mangle)
    answer = exchange(fake, wire, stream=stream)
    assert answer.head.startswith(b"HTTP/1.1 200 ") and not answer.reset
    original = b"".join(dechunk(whole.body)[0] if stream else [whole.body])
    # The whole answer as the wire would have sent it (ids and times aside).
    assert len(seen) == 1 and len(seen[0]) == len(original)
    if wire != "bedrock":  # binary frames carry CRCs of those ids
        assert ids_aside(seen[0]) == ids_aside(original)
    if stream:
        chunks, terminated = dechunk(answer.body)
        assert terminated and b"".join(chunks) == mangle(seen[0])
    else:
        assert content_length(answer.head) == len(answer.body)  # the length follows
        assert answer.body == mangle(seen[0])


@pytest.mark.parametrize("stream", [False, True])
def test_content_type_replaces_the_answers(fake: FakeProviderServer, stream: bool) -> None:
    fake.set_behaviour(content_type="text/html; charset=utf-8")
    answer = exchange(fake, "anthropic", stream=stream)
    assert b"\r\ncontent-type: text/html; charset=utf-8" in answer.head.lower()
    assert answer.head.lower().count(b"content-type") == 1


def test_drip_sends_pieces_paced_and_whole(fake: FakeProviderServer) -> None:
    whole = exchange(fake, "gemini", stream=False)
    fake.set_behaviour(drip_bytes=7, chunk_interval_s=0.001)
    answer = exchange(fake, "gemini", stream=False)
    assert ids_aside(answer.body) == ids_aside(whole.body) and not answer.reset
    assert content_length(answer.head) == len(whole.body)
    streamed = exchange(fake, "gemini", stream=True)
    chunks, terminated = dechunk(streamed.body)
    assert terminated and all(len(chunk) == 7 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 7
    fake.set_behaviour()
    plain = b"".join(dechunk(exchange(fake, "gemini", stream=True).body)[0])
    assert ids_aside(b"".join(chunks)) == ids_aside(plain)


def test_dripped_pieces_count_as_frames_for_the_drop(fake: FakeProviderServer) -> None:
    fake.set_behaviour(drip_bytes=5, stream_drop_after=3)
    answer = exchange(fake, "openai", stream=True)
    chunks, terminated = dechunk(answer.body)
    assert [len(chunk) for chunk in chunks] == [5, 5, 5]
    assert not terminated and answer.reset


def test_mangle_and_drip_apply_to_injected_errors_and_drops(fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        status=500, mangle=lambda data: data.upper(), drip_bytes=4, body_drop_after_bytes=10
    )
    answer = exchange(fake, "openai", stream=False)
    assert answer.head.startswith(b"HTTP/1.1 500 ")
    assert content_length(answer.head) > 10
    assert answer.body == b'{"ERROR":{'
    assert answer.reset


def test_drip_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="drip_bytes"):
        Behaviour(drip_bytes=0)
