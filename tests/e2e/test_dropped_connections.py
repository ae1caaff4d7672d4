"""End to end: a provider that drops its connection mid-answer, in each response mode.

What a client sees is decided by whether Envoy has already sent it the response headers:
- Before (every BUFFERED answer: translated whole answers, mapped errors, pass-through whole
  answers read for their usage; and any answer the provider drops before the processor
  answered its headers): Envoy answers a clean 502.
- After (pass-through answers not read, with usage accounting off; every stream): Envoy can
  only reset the client's stream; the
  processor gets no further message, so it cannot add an error event. The client's HTTP
  stack reports the cut (an incomplete chunked body or a short Content-Length): an error,
  never a short answer that looks complete.
The fakes reset the TCP connection (no clean end); `stream_gate` makes the drop wait until the
test has seen the response headers, so the "after" cases are ordered by events, not time.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest

from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import FULL_KEY, Stack

pytestmark = pytest.mark.e2e

USER = [{"role": "user", "content": "tell me a long story"}]
TRANSLATED = ["chat-anthropic", "chat-gemini", "chat-bedrock"]
EVERY_WIRE = ["chat-openai", *TRANSLATED]


def breaker_failures(stack: Stack, key: str) -> int:
    breakers = httpx.get(f"{stack.admin_url}/breakers", timeout=10).json()
    return int(breakers.get(key, {}).get("consecutive_failures", 0))


BREAKERS = {
    "chat-openai": "p-openai/gpt-up",
    "chat-anthropic": "p-anthropic/claude-up",
    "chat-gemini": "p-google/gemini-up",
    "chat-bedrock": "p-bedrock/anthropic.claude-3-haiku-20240307-v1:0",
}


@pytest.mark.parametrize("model", EVERY_WIRE)
@pytest.mark.parametrize("status", [200, 500])
def test_a_buffered_answer_dropped_mid_body_is_a_clean_502(
    stack: Stack, fake: FakeProviderServer, model: str, status: int
) -> None:
    # The processor holds the headers until the whole body is in: nothing reached the client.
    behaviour: dict[str, Any] = {"body_drop_after_bytes": 30}
    if status != 200:
        behaviour["status"] = status
    fake.set_behaviour(**behaviour)
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(model=model, messages=USER)
    assert info.value.status_code == 502
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "provider_error"
    assert info.value.response.headers["x-gateway-error"] == "provider_error"
    # Counted against the target: a provider that always dies mid-answer opens its breaker.
    assert breaker_failures(stack, BREAKERS[model]) == 1


def test_a_pass_through_answer_dropped_after_its_headers_is_an_error(
    unread_stack: Stack, unread_fake: FakeProviderServer
) -> None:
    # Not read for usage, the answer passes Envoy as it comes: headers first, then the drop.
    gate = threading.Event()
    unread_fake.set_behaviour(body_drop_after_bytes=30, stream_gate=gate)
    with httpx.stream(
        "POST",
        f"{unread_stack.base_url}/v1/chat/completions",
        json={"model": "chat-openai", "messages": USER},
        headers={"authorization": f"Bearer {FULL_KEY}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200  # the headers went through: Envoy passed them on
        declared = int(response.headers["content-length"])
        received = b""
        pieces = response.iter_raw()
        received += next(pieces)
        gate.set()  # now the provider drops the connection
        with pytest.raises(httpx.RemoteProtocolError):
            for piece in pieces:
                received += piece
    assert len(received) < declared  # short of its Content-Length: the client knows


def consume(stream: Any, gate: threading.Event) -> list[str]:
    """Read chunks until the first content arrives, release the drop, read on."""
    texts: list[str] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
            gate.set()
    return texts


@pytest.mark.parametrize("model", EVERY_WIRE)
def test_a_stream_dropped_mid_way_is_an_error_for_the_client(
    stack: Stack, fake: FakeProviderServer, model: str
) -> None:
    gate = threading.Event()
    fake.set_behaviour(stream_drop_after=4, stream_gate=gate, reply="one two three four five")
    stream = stack.client().chat.completions.create(model=model, messages=USER, stream=True)
    texts: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        texts = consume(stream, gate)
    assert gate.is_set()  # some content arrived before the drop
    assert texts == []  # consume() never returned: the stream did not end normally
    # A stream cut short is not blamed on the target (a client that stops reading ends it
    # the same way); Envoy's stats show the reset.
    assert breaker_failures(stack, BREAKERS[model]) == 0


@pytest.mark.parametrize("model", TRANSLATED)
def test_a_translated_stream_ended_cleanly_mid_event_ends_with_an_error_event(
    stack: Stack, fake: FakeProviderServer, model: str
) -> None:
    # A clean end of the body (no reset) reaches the processor: the translator closes the
    # stream with an error event and [DONE], and the SDK raises it.
    fake.set_behaviour(stream_truncate_after=3)
    stream = stack.client().chat.completions.create(model=model, messages=USER, stream=True)
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert "malformed_provider_response" in str(info.value.body) or "mid-" in str(info.value)


def truncated_openai_stream(stack: Stack, fake: FakeProviderServer) -> bytes:
    fake.set_behaviour(stream_truncate_after=3)
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": "chat-openai", "messages": USER, "stream": True},
        headers={"authorization": f"Bearer {FULL_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200
    return response.content


def test_a_read_pass_through_stream_ended_cleanly_mid_event_ends_with_an_error_event(
    stack: Stack, fake: FakeProviderServer
) -> None:
    # Read for its usage, an OpenAI-compatible stream that ends cleanly before `data: [DONE]`
    # gets the gateway's error event and [DONE], like a translated one.
    content = truncated_openai_stream(stack, fake)
    assert b'"code":"malformed_provider_response"' in content
    assert content.endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"stop"' not in content


def test_an_unread_pass_through_stream_ended_cleanly_mid_event_reaches_the_client_as_it_is(
    unread_stack: Stack, unread_fake: FakeProviderServer
) -> None:
    # Known limitation (docs/architecture.md) with usage accounting off: an OpenAI-compatible
    # stream passes Envoy untouched, so a provider that ends it cleanly before `data: [DONE]`
    # reaches the client without [DONE] and without an error event; the client must treat a
    # stream without [DONE] (and without a finish_reason) as cut.
    content = truncated_openai_stream(unread_stack, unread_fake)
    assert b"data: [DONE]" not in content
    assert b'"finish_reason":"stop"' not in content
    assert b'"error"' not in content
