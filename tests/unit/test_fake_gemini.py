"""The fake Gemini wire format over real HTTP, and the openai SDK through the Gemini adapter.

The SDK tests put a tiny translating proxy (the adapter, no Envoy) between the official
`openai` client and the fake, so the SDK's real requests (e.g. base64 embeddings by
default) and parsers meet the adapter's real output.
"""

from __future__ import annotations

import base64
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import openai
import orjson
import pytest
from pydantic import SecretStr

from extproc.config.schema import ProviderConfig, ProviderType
from extproc.decisions.openai_request import Endpoint
from extproc.decisions.validation import check_model_id, validate
from extproc.dev.fakes import FakeProviderServer
from extproc.dev.fakes.app import wire_for
from extproc.dev.fakes.core import embedding_vector
from extproc.dev.fakes.gemini import WIRE
from extproc.errors import GatewayError
from extproc.providers.base import ResponseMode
from extproc.providers.google.adapter import GoogleGeminiAdapter

KEY = "AIza-fake"
GENERATE = "/v1beta/models/gemini-2.0-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
EMBED = "/v1beta/models/text-embedding-004:embedContent"
BATCH = "/v1beta/models/text-embedding-004:batchEmbedContents"


def post(
    fake: FakeProviderServer,
    path: str,
    body: Any,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(
        fake.base_url + path,
        data=orjson.dumps(body),
        method=method,
        headers={"Content-Type": "application/json", "x-goog-api-key": KEY, **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def contents(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def sse_payloads(body: bytes) -> list[Any]:
    assert body.endswith(b"\r\n\r\n")
    frames = body.split(b"\r\n\r\n")[:-1]
    assert all(frame.startswith(b"data: ") for frame in frames)
    return [orjson.loads(frame.removeprefix(b"data: ")) for frame in frames]


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/v1beta/models/gemini-2.0-flash:generateContent", True),
        ("/models/gemini-2.0-flash:streamGenerateContent", True),
        ("/some/prefix/v1/models/m:embedContent", True),
        ("/v1beta/models/m:batchEmbedContents", True),
        ("/v1/chat/completions", False),
        ("/v1beta/models/m:countTokens", False),
        ("/v1beta/models", False),
    ],
)
def test_matches(path: str, matches: bool) -> None:
    assert WIRE.matches(path) is matches
    assert (wire_for(path) is WIRE) is matches


# -- generateContent -------------------------------------------------------------------------


def test_generate_echoes_the_last_user_turn(fake: FakeProviderServer) -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [
            {"role": "user", "parts": [{"text": "first question"}]},
            {"role": "model", "parts": [{"text": "an answer"}]},
            {"role": "user", "parts": [{"text": "hello "}, {"text": "there 👋"}]},
        ],
    }
    status, headers, raw = post(fake, GENERATE, body)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    answer = orjson.loads(raw)
    [candidate] = answer["candidates"]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "echo: hello there 👋"}]}
    assert candidate["finishReason"] == "STOP"
    # Whitespace words: "be brief" + "first question" + "an answer" + "hello there 👋".
    assert answer["usageMetadata"] == {
        "promptTokenCount": 9,
        "candidatesTokenCount": 4,
        "totalTokenCount": 13,
    }
    assert answer["modelVersion"] == "gemini-2.0-flash"
    [recorded] = fake.requests
    assert recorded.header("x-goog-api-key") == KEY
    assert recorded.json == body


def test_key_query_parameter_is_accepted(fake: FakeProviderServer) -> None:
    request = urllib.request.Request(
        fake.base_url + GENERATE + "?key=" + KEY,
        data=orjson.dumps(contents("hi")),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200


def test_missing_key_is_403_permission_denied(fake: FakeProviderServer) -> None:
    request = urllib.request.Request(
        fake.base_url + GENERATE,
        data=orjson.dumps(contents("hi")),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    with info.value as error:
        assert error.code == 403
        body = orjson.loads(error.read())
    assert body["error"]["code"] == 403
    assert body["error"]["status"] == "PERMISSION_DENIED"


def test_blank_key_is_400_api_key_not_valid(fake: FakeProviderServer) -> None:
    status, _, raw = post(fake, GENERATE, contents("hi"), {"x-goog-api-key": " "})
    error = orjson.loads(raw)["error"]
    assert (status, error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"].startswith("API key not valid")
    assert error["details"][0]["reason"] == "API_KEY_INVALID"


@pytest.mark.parametrize("body", [{}, {"contents": []}, {"contents": "hi"}, [1]])
def test_contents_are_required(fake: FakeProviderServer, body: Any) -> None:
    status, _, raw = post(fake, GENERATE, body)
    assert status == 400
    assert orjson.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"


def test_get_is_404(fake: FakeProviderServer) -> None:
    request = urllib.request.Request(
        fake.base_url + GENERATE, headers={"x-goog-api-key": KEY}, method="GET"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    with info.value as error:
        assert error.code == 404
        assert orjson.loads(error.read())["error"]["status"] == "NOT_FOUND"


def test_reply_stop_reason_and_candidate_count(fake: FakeProviderServer) -> None:
    fake.set_behaviour(reply="fixed words here", stop_reason="MAX_TOKENS")
    body = {**contents("hi"), "generationConfig": {"candidateCount": 2}}
    _, _, raw = post(fake, GENERATE, body)
    answer = orjson.loads(raw)
    assert [c["index"] for c in answer["candidates"]] == [0, 1]
    for candidate in answer["candidates"]:
        assert candidate["content"]["parts"] == [{"text": "fixed words here"}]
        assert candidate["finishReason"] == "MAX_TOKENS"
    assert answer["usageMetadata"]["candidatesTokenCount"] == 6


def test_tool_calls_become_function_call_parts(fake: FakeProviderServer) -> None:
    fake.set_behaviour(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    _, _, raw = post(fake, GENERATE, contents("weather?"))
    [candidate] = orjson.loads(raw)["candidates"]
    assert candidate["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    ]
    assert candidate["finishReason"] == "STOP"


# -- streamGenerateContent -------------------------------------------------------------------


def test_stream_frames(fake: FakeProviderServer) -> None:
    status, headers, raw = post(fake, STREAM, contents("one two three"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    *pieces, closing = sse_payloads(raw)
    texts = [p["candidates"][0]["content"]["parts"][0]["text"] for p in pieces]
    assert texts == ["echo:", " one", " two", " three"]  # one event per word
    assert all("finishReason" not in p["candidates"][0] for p in pieces)
    assert all("usageMetadata" not in p for p in pieces)
    # The closing event: an empty text part, the finish reason and the usage.
    assert closing["candidates"][0]["content"]["parts"] == [{"text": ""}]
    assert closing["candidates"][0]["finishReason"] == "STOP"
    assert closing["usageMetadata"]["candidatesTokenCount"] == 4
    assert fake.stream_finished == 1


def test_stream_chunks_and_tool_calls(fake: FakeProviderServer) -> None:
    fake.set_behaviour(
        stream_chunks=["Let me ", "check."], tool_calls=[{"name": "now"}], stop_reason="OTHER"
    )
    payloads = sse_payloads(post(fake, STREAM, contents("time?"))[2])
    parts = [p["candidates"][0]["content"]["parts"] for p in payloads]
    assert parts == [
        [{"text": "Let me "}],
        [{"text": "check."}],
        [{"functionCall": {"name": "now", "args": {}}}],
        [{"text": ""}],
    ]
    assert payloads[-1]["candidates"][0]["finishReason"] == "OTHER"


def test_stream_error_after(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_error_after=1)
    payloads = sse_payloads(post(fake, STREAM, contents("one two three"))[2])
    assert len(payloads) == 2
    assert payloads[0]["candidates"][0]["content"]["parts"] == [{"text": "echo:"}]
    assert payloads[1]["error"]["status"] == "UNAVAILABLE"


def test_stream_truncate_after(fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_truncate_after=1)
    _, _, raw = post(fake, STREAM, contents("one two three"))
    first_end = raw.index(b"\r\n\r\n") + 4
    assert sse_payloads(raw[:first_end])[0]["candidates"]
    assert not raw.endswith(b"\r\n\r\n")
    assert fake.stream_finished == 0


def test_stream_faults_after_all_the_content(fake: FakeProviderServer) -> None:
    # N = the number of chunks still cuts the stream: before its closing event.
    fake.set_behaviour(stream_chunks=["a ", "b ", "c"], stream_error_after=3)
    payloads = sse_payloads(post(fake, STREAM, contents("x"))[2])
    assert len(payloads) == 4 and "error" in payloads[3]
    fake.set_behaviour(stream_chunks=["a ", "b ", "c"], stream_truncate_after=3)
    raw = post(fake, STREAM, contents("x"))[2]
    assert raw.count(b"\r\n\r\n") == 3 and not raw.endswith(b"\r\n\r\n")


# -- injected errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
    ],
)
def test_injected_errors_are_google_shaped(
    fake: FakeProviderServer, status: int, name: str
) -> None:
    fake.set_behaviour(status=status)
    got, headers, raw = post(fake, GENERATE, contents("hi"))
    error = orjson.loads(raw)["error"]
    assert (got, error["code"], error["status"]) == (status, status, name)
    assert error["message"]
    assert headers["Content-Type"].startswith("application/json")


def test_injected_429_carries_retry_info(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=429, error_headers={"Retry-After": "9"})
    _, headers, raw = post(fake, STREAM, contents("hi"))
    assert headers["Retry-After"] == "9"
    details = orjson.loads(raw)["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9s"} in details


def test_injected_error_body_verbatim_and_fail_times(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=500, error_body=b"<html>oops</html>", fail_times=1)
    status, _, raw = post(fake, GENERATE, contents("hi"))
    assert (status, raw) == (500, b"<html>oops</html>")
    status, _, raw = post(fake, GENERATE, contents("hi"))
    assert status == 200
    assert orjson.loads(raw)["candidates"]


def test_success_status_with_error_body_serves_that_body(fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=200, error_body=b'{"candidates": "nope"}')
    assert post(fake, GENERATE, contents("hi"))[::2] == (200, b'{"candidates": "nope"}')


# -- embeddings ------------------------------------------------------------------------------


def test_embed_content(fake: FakeProviderServer) -> None:
    body: dict[str, Any] = {"content": {"parts": [{"text": "hello"}]}}
    status, _, raw = post(fake, EMBED, body)
    assert status == 200
    assert orjson.loads(raw) == {"embedding": {"values": embedding_vector("hello", 8)}}
    body["outputDimensionality"] = 3
    assert orjson.loads(post(fake, EMBED, body)[2])["embedding"]["values"] == embedding_vector(
        "hello", 3
    )


def test_batch_embed_contents(fake: FakeProviderServer) -> None:
    model = "models/text-embedding-004"
    requests: list[dict[str, Any]] = [
        {"model": model, "content": {"parts": [{"text": "a"}]}},
        {"model": model, "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 4},
    ]
    status, _, raw = post(fake, BATCH, {"requests": requests})
    assert status == 200
    assert orjson.loads(raw) == {
        "embeddings": [{"values": embedding_vector("a", 8)}, {"values": embedding_vector("b", 4)}]
    }
    requests[0]["model"] = "models/other"
    assert post(fake, BATCH, {"requests": requests})[0] == 400


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"content": {"parts": []}},
        {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 0},
    ],
)
def test_bad_embed_requests(fake: FakeProviderServer, body: Any) -> None:
    status, _, raw = post(fake, EMBED, body)
    assert (status, orjson.loads(raw)["error"]["status"]) == (400, "INVALID_ARGUMENT")


# -- the openai SDK through the adapter ------------------------------------------------------


class TranslatingProxy(ThreadingHTTPServer):
    """OpenAI HTTP in, Gemini to the fake, translated back: the adapter's four moments."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: TranslatingProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        endpoint = Endpoint.CHAT if self.path.endswith("/chat/completions") else Endpoint.EMBEDDINGS
        upstream_model = "gemini-2.0-flash" if endpoint is Endpoint.CHAT else "embed-1"
        provider = ProviderConfig(
            name="gemini",
            type=ProviderType.GOOGLE,
            base_url=self.server.upstream + "/v1beta",
            api_key_env="GEMINI_KEY",
        )
        adapter = GoogleGeminiAdapter(provider, SecretStr(KEY), upstream_model, 4096)
        try:
            upstream = adapter.request(validate(endpoint, body, check_model_id(body)))
        except GatewayError as error:
            return self._send(error.status, error.body(), "application/json")
        request = urllib.request.Request(
            self.server.upstream + upstream.path,
            data=upstream.body,
            headers=upstream.set_headers,
            method="POST",
        )
        try:
            resp = urllib.request.urlopen(request, timeout=5)
        except urllib.error.HTTPError as http_error:
            with http_error:
                headers = {k.lower(): v for k, v in http_error.headers.items()}
                mapped = adapter.response_error(http_error.code, headers, http_error.read())
            return self._send(mapped.status, mapped.body(), "application/json", mapped.headers)
        with resp:
            if adapter.response_mode(resp.status, {}) is ResponseMode.STREAMED:
                changes = adapter.response_headers(resp.status, {})
                self.send_response(200)
                self.send_header("Content-Type", changes.set_headers["content-type"])
                self.end_headers()
                while piece := resp.read(7):  # small reads: split points everywhere
                    self.wfile.write(adapter.stream_chunk(piece, False).body)
                self.wfile.write(adapter.stream_chunk(b"", True).body)
                return None
            try:
                out = adapter.response_body(resp.read()).body
            except GatewayError as error:
                return self._send(error.status, error.body(), "application/json")
            return self._send(200, out, "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def client(fake: FakeProviderServer) -> Iterator[openai.OpenAI]:
    proxy = TranslatingProxy(fake.base_url)
    thread = threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        with openai.OpenAI(
            base_url=proxy.base_url, api_key="sk-client", max_retries=0, timeout=5
        ) as sdk:
            yield sdk
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)


def test_sdk_chat(client: openai.OpenAI, fake: FakeProviderServer) -> None:
    completion = client.chat.completions.create(
        model="my-gemini",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi 👋"}],
        max_tokens=20,
    )
    assert completion.model == "gemini-2.0-flash"  # the model that answered
    assert completion.choices[0].message.content == "echo: hi 👋"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4
    [recorded] = fake.requests
    assert recorded.header("authorization") is None
    assert recorded.json["generationConfig"] == {"maxOutputTokens": 20}


def test_sdk_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="my-gemini",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for event in stream:
        for choice in event.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
        usage = event.usage or usage
    assert text == "echo: one two three"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 4


def test_sdk_stream_tool_call(client: openai.OpenAI, fake: FakeProviderServer) -> None:
    fake.set_behaviour(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    tools: Any = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
        }
    ]
    stream = client.chat.completions.create(
        model="my-gemini",
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        stream=True,
    )
    names, arguments, finish = [], "", None
    for event in stream:
        for choice in event.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert names == ["get_weather"]
    assert orjson.loads(arguments) == {"city": "Oslo"}
    assert finish == "tool_calls"


def test_sdk_stream_error_mid_way(client: openai.OpenAI, fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_error_after=1)
    stream = client.chat.completions.create(
        model="my-gemini", messages=[{"role": "user", "content": "one two"}], stream=True
    )
    with pytest.raises(openai.APIError, match="overloaded"):
        for _ in stream:
            pass


def test_sdk_stream_cut_short(client: openai.OpenAI, fake: FakeProviderServer) -> None:
    fake.set_behaviour(stream_chunks=["a ", "b"], stream_truncate_after=2)
    stream = client.chat.completions.create(
        model="my-gemini", messages=[{"role": "user", "content": "x"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError, match="mid-event"):
        for event in stream:
            text += event.choices[0].delta.content or ""
    assert text == "a b"


def test_sdk_embeddings_default_base64(client: openai.OpenAI, fake: FakeProviderServer) -> None:
    # The SDK asks for base64 when no encoding_format is given and decodes float32 itself.
    result = client.embeddings.create(model="my-embed", input="hello")
    assert result.data[0].embedding == embedding_vector("hello", 8)
    assert fake.requests[-1].path.endswith("/models/embed-1:embedContent")
    result = client.embeddings.create(model="my-embed", input=["a", "b"], dimensions=4)
    assert [d.embedding for d in result.data] == [
        embedding_vector("a", 4),
        embedding_vector("b", 4),
    ]
    assert fake.requests[-1].path.endswith("/models/embed-1:batchEmbedContents")
    floats = client.embeddings.create(model="my-embed", input="x", encoding_format="float")
    assert floats.data[0].embedding == embedding_vector("x", 8)
    # Asked for explicitly, the SDK hands the base64 string over as it came: float32 LE.
    encoded = client.embeddings.create(model="my-embed", input="x", encoding_format="base64")
    raw = base64.b64decode(cast(str, encoded.data[0].embedding))
    assert list(struct.unpack("<8f", raw)) == embedding_vector("x", 8)


def test_sdk_provider_errors(client: openai.OpenAI, fake: FakeProviderServer) -> None:
    fake.set_behaviour(status=429)
    with pytest.raises(openai.RateLimitError) as rate:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    # The fake's RetryInfo delay became Retry-After.
    assert rate.value.response.headers["retry-after"] == "3"
    fake.set_behaviour(status=403)
    with pytest.raises(openai.APIStatusError) as denied:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert denied.value.status_code == 502


def test_sdk_unsupported_parameter(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], n=2, stream=True
        )
    assert info.value.code == "unsupported_parameter"
