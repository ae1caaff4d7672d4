"""End to end through real Envoy with the openai SDK: chat, streams, embeddings, models."""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import pytest

from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import AZURE_API_VERSION, FULL_KEY, LIMITED_KEY, UPSTREAM_KEYS, Stack

ACTIVE = "gateway_extproc_streams_active"
CANCELLED = "gateway_extproc_streams_cancelled_total"
CONCURRENT_CLIENTS = 8
CONCURRENT_REQUESTS = 2000

pytestmark = pytest.mark.e2e

# (client model, upstream model, path the provider must see, upstream auth header, value)
OPENAI_COMPATIBLE = [
    ("chat-openai", "gpt-up", "/v1/chat/completions", "Bearer " + UPSTREAM_KEYS["TEST_OPENAI_KEY"]),
    ("chat-vllm", "llama-up", "/vllm/v1/chat/completions", None),
    ("chat-ollama", "llama3.1", "/ollama/v1/chat/completions", None),
    (
        "chat-together",
        "meta/llama-up",
        "/together/v1/chat/completions",
        "Bearer " + UPSTREAM_KEYS["TEST_TOGETHER_KEY"],
    ),
]


def processor_metric(stack: Stack, name: str) -> float:
    """A label-less metric of the processor."""
    text = httpx.get(f"{stack.admin_url}/metrics", timeout=10).text
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def cancelled(stack: Stack, poll_seconds: float = 60) -> float:
    """The processor's count of ext_proc streams Envoy cancelled, read once no stream is open.

    A stream still open may yet be cancelled (Envoy resets one the processor left open about a
    second after its request ended), so this waits until every stream has ended, normally or
    cancelled: only then is the count final for the requests made so far.
    """
    deadline = time.monotonic() + poll_seconds
    while (active := processor_metric(stack, ACTIVE)) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert active == 0, f"{active:g} ext_proc streams still open after {poll_seconds} s"
    return processor_metric(stack, CANCELLED)


def no_client_key_upstream(fake: FakeProviderServer) -> None:
    for request in fake.requests:
        for name, value in request.headers:
            assert FULL_KEY not in value, f"client key leaked upstream in {name}"
            assert LIMITED_KEY not in value
        assert FULL_KEY.encode() not in request.body


@pytest.mark.parametrize(("model", "upstream", "path", "auth"), OPENAI_COMPATIBLE)
def test_chat_openai_compatible(
    stack: Stack, fake: FakeProviderServer, model: str, upstream: str, path: str, auth: str | None
) -> None:
    reply = stack.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], temperature=0.2
    )
    assert reply.choices[0].message.content == "echo: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    (seen,) = fake.requests
    assert seen.path == path
    assert seen.json["model"] == upstream
    assert seen.json["temperature"] == 0.2
    assert seen.header("authorization") == auth
    assert seen.header("x-gateway-timeout") is None
    no_client_key_upstream(fake)


def test_chat_azure_path_version_and_key(stack: Stack, fake: FakeProviderServer) -> None:
    reply = stack.client().chat.completions.create(
        model="chat-azure", messages=[{"role": "user", "content": "hi azure"}]
    )
    assert reply.choices[0].message.content == "echo: hi azure"
    (seen,) = fake.requests
    assert seen.path == "/openai/deployments/my-deploy/chat/completions"
    assert seen.query_param("api-version") == AZURE_API_VERSION
    assert seen.header("api-key") == UPSTREAM_KEYS["TEST_AZURE_KEY"]
    assert seen.header("authorization") is None
    no_client_key_upstream(fake)


UNUSUAL_TEXT = "emoji 😀👩‍👩‍👧 RTL שלום مرحبا zero\u200bwidth\u200d joiner \u202e override"


def test_unusual_text_passes_byte_exact(stack: Stack, fake: FakeProviderServer) -> None:
    reply = stack.client().chat.completions.create(
        model="chat-openai", messages=[{"role": "user", "content": UNUSUAL_TEXT}]
    )
    assert reply.choices[0].message.content == "echo: " + UNUSUAL_TEXT
    (seen,) = fake.requests
    assert UNUSUAL_TEXT.encode("utf-8") in seen.body


def test_body_needing_no_rewrite_reaches_provider_byte_for_byte(
    stack: Stack, fake: FakeProviderServer
) -> None:
    # same-name needs no model rewrite, so the gateway must not re-serialize the
    # body: escapes, spacing and key order all survive.
    raw = (
        b'{ "model" : "same-name",\n "messages": [{"role": "user", '
        b'"content": "\\u00e9t\\u00e9 \xf0\x9f\x98\x80 \xe2\x80\x8b"}],   "temperature": 1.0 }'
    )
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {FULL_KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    (seen,) = fake.requests
    assert seen.body == raw
    assert response.json()["choices"][0]["message"]["content"] == "echo: été 😀 \u200b"


def test_stream_arrives_chunk_by_chunk(stack: Stack, fake: FakeProviderServer) -> None:
    gate = threading.Event()
    fake.set_behaviour(stream_chunks=["first ", "second ", "third"], stream_gate=gate)
    try:
        stream = stack.client().chat.completions.create(
            model="chat-openai",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = iter(stream)
        pieces: list[str] = []
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                break
        # The client holds the first content chunk while the provider is still
        # held at the gate: nothing buffered the stream.
        assert pieces == ["first "]
        assert fake.stream_finished == 0
        gate.set()
        usage = None
        finish = None
        for chunk in chunks:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert "".join(pieces) == "first second third"
        assert finish == "stop"
        assert usage is not None and usage.completion_tokens > 0
        assert fake.stream_finished == 1
    finally:
        gate.set()
    (seen,) = fake.requests
    assert seen.json["stream"] is True
    assert seen.json["model"] == "gpt-up"


def test_stream_azure(stack: Stack, fake: FakeProviderServer) -> None:
    stream = stack.client().chat.completions.create(
        model="chat-azure", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: one two three"
    assert fake.requests[0].deployment == "my-deploy"


@pytest.mark.parametrize(
    ("model", "path"), [("embed-openai", "/v1/embeddings"), ("embed-azure", None)]
)
def test_embeddings(stack: Stack, fake: FakeProviderServer, model: str, path: str | None) -> None:
    result = stack.client().embeddings.create(model=model, input=["alpha", "beta"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    (seen,) = fake.requests
    if path:
        assert seen.path == path
        assert seen.json["model"] == "text-embedding-up"
    else:
        assert seen.path == "/openai/deployments/embed-deploy/embeddings"
        assert seen.query_param("api-version") == AZURE_API_VERSION


def test_models_listed_from_config_per_tenant(stack: Stack, fake: FakeProviderServer) -> None:
    configured = [m["name"] for m in stack.config["models"]]
    assert [m.id for m in stack.client().models.list()] == configured
    assert [m.id for m in stack.client(LIMITED_KEY).models.list()] == ["chat-openai"]
    assert stack.client().models.retrieve("embed-azure").id == "embed-azure"
    assert fake.requests == []  # answered by the processor, no provider call


def test_health_on_the_listener(stack: Stack) -> None:
    response = httpx.get(f"{stack.base_url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_metrics_count_requests(stack: Stack, fake: FakeProviderServer) -> None:
    def count() -> float:
        text = httpx.get(f"{stack.admin_url}/metrics").text
        for line in text.splitlines():
            if (
                line.startswith("gateway_requests_total{")
                and 'model="chat-vllm"' in line
                and ('status="200"' in line)
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    for _ in range(3):
        stack.client().chat.completions.create(
            model="chat-vllm", messages=[{"role": "user", "content": "count me"}]
        )
    assert count() == before + 3
    text = httpx.get(f"{stack.admin_url}/metrics").text
    assert 'gateway_request_duration_seconds_count{model="chat-vllm",provider="p-vllm"}' in text
    assert FULL_KEY not in text
    assert orjson.loads(httpx.get(f"{stack.admin_url}/readyz").content)["status"] == "ready"


def test_headers_kept_from_the_processor_still_reach_the_provider(
    stack: Stack, fake: FakeProviderServer
) -> None:
    # SDK telemetry (x-stainless-*, user-agent) is kept out of the ext_proc messages by
    # forward_rules, not out of the request; headers the processor must strip it still sees.
    client = stack.client(default_headers={"x-api-key": "client-guess"})
    client.chat.completions.create(model="chat-openai", messages=[{"role": "user", "content": "x"}])
    (seen,) = fake.requests
    assert seen.header("x-stainless-lang") == "python"
    assert (seen.header("user-agent") or "").startswith("OpenAI/Python")
    assert seen.header("x-api-key") is None


def test_streams_end_by_the_processor_not_by_envoy_cancelling(stack: Stack) -> None:
    # The processor closes each ext_proc stream after its last answer. Left open, Envoy
    # cancels the stream when the HTTP request ends, and grpc.aio leaks native memory per
    # cancelled call: the processor's RSS grew by ~110 bytes per request before this.
    before = cancelled(stack)
    client = stack.client()
    for model in ("chat-openai", "chat-anthropic", "chat-gemini", "chat-bedrock"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    client.models.list()
    assert cancelled(stack) == before


def test_concurrent_requests_end_their_streams_cleanly(
    stack: Stack, fake: FakeProviderServer
) -> None:
    # Under load Envoy's end of the HTTP request can race the processor's closing status: with a
    # reset (Envoy's default) the processor sees a cancelled call and grpc.aio leaks per call.
    # The rendered bootstrap makes Envoy half-close and wait for the status instead; without
    # that flag this test saw cancellations (~0.3 % of calls at full load).
    text = httpx.get(f"{stack.envoy_admin_url}/runtime", timeout=10).json()
    flag = "envoy.reloadable_features.ext_proc_graceful_grpc_close"
    assert text["entries"][flag]["final_value"] == "true"

    body = orjson.dumps({"model": "chat-openai", "messages": [{"role": "user", "content": "x"}]})
    headers = {"authorization": f"Bearer {FULL_KEY}", "content-type": "application/json"}

    def worker(statuses: list[int]) -> None:
        with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as http:
            for _ in range(CONCURRENT_REQUESTS // CONCURRENT_CLIENTS):
                statuses.append(http.post("/v1/chat/completions", content=body).status_code)

    before = cancelled(stack)  # after any stream an earlier test left has ended
    results: list[list[int]] = [[] for _ in range(CONCURRENT_CLIENTS)]
    threads = [threading.Thread(target=worker, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [s for r in results for s in r]
    assert len(statuses) == CONCURRENT_REQUESTS and set(statuses) == {200}
    assert cancelled(stack) == before
