"""End to end through real Envoy with the openai SDK: Anthropic, Gemini and Bedrock translation.

The fake provider speaks each provider's real wire format (Anthropic SSE, Gemini SSE, the
Bedrock binary event stream with SigV4 verification); these tests drive it with the SDK and
check both what the client sees and what the provider received.
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson
import pytest

from extproc.dev.fakes import FakeProviderServer, RecordedRequest
from extproc.dev.fakes.gemini import thought_signature
from tests.e2e.conftest import FULL_KEY, UPSTREAM_KEYS, Stack

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Kind:
    """What differs per provider: model names, native stop reasons, where things live."""

    name: str
    model: str
    upstream: str
    length_reason: str  # the provider's native "ran out of tokens" reason
    filter_reason: str  # a native reason that means content_filter
    overloaded_status: int


ANTHROPIC = Kind("anthropic", "chat-anthropic", "claude-up", "max_tokens", "refusal", 529)
GOOGLE = Kind("google", "chat-gemini", "gemini-up", "MAX_TOKENS", "SAFETY", 503)
BEDROCK = Kind(
    "bedrock",
    "chat-bedrock",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "max_tokens",
    "guardrail_intervened",
    503,
)
KINDS = [ANTHROPIC, GOOGLE, BEDROCK]
IDS = [k.name for k in KINDS]

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
PIXEL = base64.b64encode(
    bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
).decode()


def system_text(kind: Kind, seen: RecordedRequest) -> str:
    body = seen.json
    if kind is ANTHROPIC:
        system = body["system"]
        return system if isinstance(system, str) else "".join(b["text"] for b in system)
    if kind is GOOGLE:
        return "".join(p["text"] for p in body["systemInstruction"]["parts"])
    return "".join(b["text"] for b in body["system"])


def turns(kind: Kind, seen: RecordedRequest) -> list[tuple[str, Any]]:
    """(role, content blocks) of the conversation the provider received."""
    if kind is GOOGLE:
        return [(t["role"], t["parts"]) for t in seen.json["contents"]]
    return [(t["role"], t["content"]) for t in seen.json["messages"]]


def auth_ok(kind: Kind, seen: RecordedRequest) -> None:
    assert seen.header("authorization") is None or kind is BEDROCK
    if kind is ANTHROPIC:
        assert seen.header("x-api-key") == UPSTREAM_KEYS["TEST_ANTHROPIC_KEY"]
        assert seen.header("anthropic-version")
    elif kind is GOOGLE:
        assert seen.header("x-goog-api-key") == UPSTREAM_KEYS["TEST_GOOGLE_KEY"]
    else:
        assert (seen.header("authorization") or "").startswith("AWS4-HMAC-SHA256 Credential=")
    for _, value in seen.headers:
        assert FULL_KEY not in value


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_plain_chat_with_system_prompt(stack: Stack, fake: FakeProviderServer, kind: Kind) -> None:
    reply = stack.client().chat.completions.create(
        model=kind.model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello 😀 שלום"},
        ],
        temperature=0.3,
        max_tokens=50,
    )
    assert reply.model == kind.upstream  # the model that answered, as its provider names it
    assert reply.choices[0].message.content == "echo: hello 😀 שלום"
    assert reply.choices[0].finish_reason == "stop"
    assert (
        reply.usage is not None
        and reply.usage.prompt_tokens > 0
        and reply.usage.completion_tokens > 0
    )
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    (seen,) = fake.requests
    auth_ok(kind, seen)
    assert system_text(kind, seen) == "You are terse."
    assert [role for role, _ in turns(kind, seen)] == ["user"]
    if kind is ANTHROPIC:
        assert seen.path.endswith("/messages")
        assert (seen.json["model"], seen.json["max_tokens"], seen.json["temperature"]) == (
            kind.upstream,
            50,
            0.3,
        )
    elif kind is GOOGLE:
        assert seen.path.endswith(f"/models/{kind.upstream}:generateContent")
        config = seen.json["generationConfig"]
        assert (config["maxOutputTokens"], config["temperature"]) == (50, 0.3)
    else:
        assert seen.path.startswith("/model/") and seen.path.endswith("/converse")
        assert seen.json["inferenceConfig"]["maxTokens"] == 50


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_multi_turn(stack: Stack, fake: FakeProviderServer, kind: Kind) -> None:
    reply = stack.client().chat.completions.create(
        model=kind.model,
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "second"},
            {"role": "user", "content": "third"},
        ],
    )
    assert reply.choices[0].message.content is not None
    assert reply.choices[0].message.content.startswith("echo: ")
    roles = [role for role, _ in turns(kind, fake.requests[0])]
    # Consecutive user turns are merged; the assistant turn keeps the provider's role name.
    assistant = "model" if kind is GOOGLE else "assistant"
    assert roles == ["user", assistant, "user"]


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_tools_round_trip(stack: Stack, fake: FakeProviderServer, kind: Kind) -> None:
    fake.set_behaviour(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = stack.client().chat.completions.create(
        model=kind.model, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    sent_tools = orjson.dumps(fake.requests[0].json)
    assert b"get_weather" in sent_tools and b"Weather for a city" in sent_tools

    fake.set_behaviour()  # back to echo
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    second = stack.client().chat.completions.create(
        model=kind.model, messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    history = orjson.dumps(turns(kind, fake.requests[1]))
    assert b"get_weather" in history  # the assistant's tool call went back in provider form
    assert b"21" in history  # and so did the tool result


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
def test_gemini_3_thought_signatures_survive_the_round_trip(
    stack: Stack, fake: FakeProviderServer, stream: bool
) -> None:
    # Gemini 3 signs its function calls and refuses (400) a next request whose history lacks
    # the signature. OpenAI tool calls have no field for it: it rides in the tool call id,
    # which clients echo back.
    fake.set_behaviour(
        thought_signatures=True,
        tool_calls=[
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": {"city": "Paris"}},
        ],
    )
    messages: list[Any] = [{"role": "user", "content": "weather and time in Paris?"}]
    client = stack.client()
    if stream:
        ids: dict[int, str] = {}
        names: dict[int, str] = {}
        arguments: dict[int, str] = {}
        for chunk in client.chat.completions.create(
            model="chat-gemini", messages=messages, tools=[WEATHER_TOOL], stream=True
        ):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                ids[delta.index] = ids.get(delta.index, "") + (delta.id or "")
                function = delta.function
                names[delta.index] = names.get(delta.index, "") + (
                    (function and function.name) or ""
                )
                arguments[delta.index] = arguments.get(delta.index, "") + (
                    (function and function.arguments) or ""
                )
        calls = [
            {
                "id": ids[i],
                "type": "function",
                "function": {"name": names[i], "arguments": arguments[i]},
            }
            for i in sorted(ids)
        ]
    else:
        first = client.chat.completions.create(
            model="chat-gemini", messages=messages, tools=[WEATHER_TOOL]
        )
        assert first.choices[0].message.tool_calls is not None
        calls = [c.model_dump(exclude_none=True) for c in first.choices[0].message.tool_calls]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert len({c["id"] for c in calls}) == 2
    # Ids stay within the characters every provider accepts in a tool call id.
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", c["id"]) for c in calls)

    fake.set_behaviour(thought_signatures=True)  # answer with text now
    messages += [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temp_c": 21}'},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "14:00"},
    ]
    second = client.chat.completions.create(
        model="chat-gemini", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    (model_turn,) = [c for c in fake.requests[1].json["contents"] if c["role"] == "model"]
    first_call, second_call = model_turn["parts"]
    # The signature went back exactly as Gemini sent it, on the first call only.
    assert first_call["thoughtSignature"] == thought_signature("get_weather")
    assert "thoughtSignature" not in second_call


def test_a_conversation_can_move_from_gemini_3_to_openai(
    stack: Stack, fake: FakeProviderServer
) -> None:
    # Ids carrying a Gemini signature are far over OpenAI's 40 characters (OpenAI answers
    # 400 string_above_max_length, as the fake does): the OpenAI adapter drops the signature.
    fake.set_behaviour(
        thought_signatures=True, tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    )
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
    first = stack.client().chat.completions.create(
        model="chat-gemini", messages=messages, tools=[WEATHER_TOOL]
    )
    assert first.choices[0].message.tool_calls is not None
    (call,) = first.choices[0].message.tool_calls
    assert len(call.id) > 40
    fake.set_behaviour()
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = stack.client().chat.completions.create(
        model="chat-openai", messages=messages, tools=[WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop"
    sent = fake.requests[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"]
    assert len(sent[2]["tool_call_id"]) <= 40


def test_gemini_3_refuses_history_without_its_signature(
    stack: Stack, fake: FakeProviderServer
) -> None:
    # The fake's check is real: a tool call id the gateway did not issue (no signature) is
    # refused by "Gemini 3", and the client gets Google's 400 as an OpenAI error.
    fake.set_behaviour(thought_signatures=True)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            model="chat-gemini",
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
        )
    assert "thought_signature" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_image_part(stack: Stack, fake: FakeProviderServer, kind: Kind) -> None:
    stack.client().chat.completions.create(
        model=kind.model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                ],
            }
        ],
    )
    sent = orjson.dumps(fake.requests[0].json)
    assert PIXEL.encode() in sent  # the image bytes travelled in the provider's own shape
    assert b"data:image/png" not in sent


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@pytest.mark.parametrize("which", ["length", "content_filter"])
def test_finish_reasons(stack: Stack, fake: FakeProviderServer, kind: Kind, which: str) -> None:
    native = kind.length_reason if which == "length" else kind.filter_reason
    fake.set_behaviour(stop_reason=native)
    reply = stack.client().chat.completions.create(
        model=kind.model, messages=[{"role": "user", "content": "go"}], stop=["END"]
    )
    assert reply.choices[0].finish_reason == which
    sent = fake.requests[0].json
    stops = {
        "anthropic": lambda: sent["stop_sequences"],
        "google": lambda: sent["generationConfig"]["stopSequences"],
        "bedrock": lambda: sent["inferenceConfig"]["stopSequences"],
    }[kind.name]()
    assert stops == ["END"]


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_stream_with_usage_arrives_chunk_by_chunk(
    stack: Stack, fake: FakeProviderServer, kind: Kind
) -> None:
    gate = threading.Event()
    fake.set_behaviour(stream_chunks=["alpha ", "beta ", "gamma"], stream_gate=gate)
    try:
        stream = stack.client().chat.completions.create(
            model=kind.model,
            messages=[{"role": "user", "content": "stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = iter(stream)
        text = ""
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                break
        # The provider is held mid-stream, yet the first text already reached the client.
        assert text == "alpha "
        assert fake.stream_finished == 0
        gate.set()
        finish = usage = None
        for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert text == "alpha beta gamma"
        assert finish == "stop"
        assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    finally:
        gate.set()


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_stream_tool_call(stack: Stack, fake: FakeProviderServer, kind: Kind) -> None:
    fake.set_behaviour(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    stream = stack.client().chat.completions.create(
        model=kind.model,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            assert call.index == 0
            name += call.function.name if call.function and call.function.name else ""
            arguments += (
                call.function.arguments if call.function and call.function.arguments else ""
            )
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert orjson.loads(arguments) == {"city": "Oslo"}
    assert finish == "tool_calls"


ERROR_CASES = [
    (429, {"retry-after": "9"}, 429, "rate_limit_exceeded"),
    (401, {}, 502, "provider_auth_failed"),
    (403, {}, 502, "provider_auth_failed"),
    (500, {}, 502, "provider_error"),
]


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@pytest.mark.parametrize(("status", "headers", "expected", "code"), ERROR_CASES)
def test_provider_errors(
    stack: Stack,
    fake: FakeProviderServer,
    kind: Kind,
    status: int,
    headers: dict[str, str],
    expected: int,
    code: str,
) -> None:
    fake.set_behaviour(status=status, error_headers=headers)
    response = post_chat(stack, kind)
    assert response.status_code == expected, response.text
    assert response.json()["error"]["code"] == code
    if expected == 429:
        assert response.headers["retry-after"] == "9"


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_overloaded_is_503(stack: Stack, fake: FakeProviderServer, kind: Kind) -> None:
    fake.set_behaviour(status=kind.overloaded_status)
    response = post_chat(stack, kind)
    assert response.status_code == 503, response.text


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_context_too_long_is_400(stack: Stack, fake: FakeProviderServer, kind: Kind) -> None:
    bodies = {
        "anthropic": {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "prompt is too long: 250000 tokens > 200000 maximum",
            },
        },
        "google": {
            "error": {
                "code": 400,
                "message": "The input token count (1200000) exceeds the maximum number of "
                "tokens allowed (1048576).",
                "status": "INVALID_ARGUMENT",
            }
        },
        "bedrock": {"message": "Input is too long for requested model."},
    }
    headers = (
        {
            "x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        }
        if kind is BEDROCK
        else {}
    )
    fake.set_behaviour(
        status=400, error_body=orjson.dumps(bodies[kind.name]), error_headers=headers
    )
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(
            model=kind.model, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_invalid_request_passes_the_provider_message(
    stack: Stack, fake: FakeProviderServer, kind: Kind
) -> None:
    message = "messages.0.content: unexpected block type 'banana'"
    bodies = {
        "anthropic": {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": message},
        },
        "google": {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}},
        "bedrock": {"message": message},
    }
    headers = {"x-amzn-errortype": "ValidationException"} if kind is BEDROCK else {}
    fake.set_behaviour(
        status=400, error_body=orjson.dumps(bodies[kind.name]), error_headers=headers
    )
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().chat.completions.create(
            model=kind.model, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.code == "provider_invalid_request"
    assert message in info.value.message


MALFORMED = {
    "empty": b"",
    "truncated": b'{"id": "msg_01", "type": "mess',
    "missing_fields": b"{}",
    "html": b"<!DOCTYPE html><html><body>Gateway error</body></html>",
}


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_provider_output_is_502(
    stack: Stack, fake: FakeProviderServer, kind: Kind, case: str
) -> None:
    fake.set_behaviour(status=200, error_body=MALFORMED[case])
    response = post_chat(stack, kind)
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "malformed_provider_response"
    assert stack.processor is not None and stack.processor.poll() is None


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
@pytest.mark.parametrize("fault", ["truncated", "provider_error_event"])
def test_broken_stream_ends_with_an_error_event(
    stack: Stack, fake: FakeProviderServer, kind: Kind, fault: str
) -> None:
    if fault == "truncated":
        fake.set_behaviour(stream_chunks=["one ", "two ", "three"], stream_truncate_after=3)
    else:
        fake.set_behaviour(stream_chunks=["one ", "two ", "three"], stream_error_after=3)
    response = httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": kind.model, "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"authorization": f"Bearer {FULL_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200
    events = [
        line[len("data: ") :] for line in response.text.split("\n\n") if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    last = orjson.loads(events[-2])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.APIError):
        for _ in stack.client().chat.completions.create(
            model=kind.model, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


@pytest.mark.parametrize("kind", [ANTHROPIC, BEDROCK], ids=["anthropic", "bedrock"])
def test_embeddings_unsupported_is_a_clear_400(
    stack: Stack, fake: FakeProviderServer, kind: Kind
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        stack.client().embeddings.create(model=f"embed-{kind.name}", input="x")
    assert info.value.code == "unsupported_endpoint"
    assert kind.name in info.value.message
    assert fake.requests == []


def test_gemini_embeddings(stack: Stack, fake: FakeProviderServer) -> None:
    single = stack.client().embeddings.create(model="embed-gemini", input="alpha")
    assert len(single.data) == 1 and len(single.data[0].embedding) > 0
    batch = stack.client().embeddings.create(model="embed-gemini", input=["alpha", "beta"])
    assert [d.index for d in batch.data] == [0, 1]
    assert batch.data[0].embedding == single.data[0].embedding  # deterministic fake vectors
    assert fake.requests[0].path.endswith(":embedContent")
    assert fake.requests[1].path.endswith(":batchEmbedContents")


def test_bedrock_request_is_signed_and_a_wrong_secret_is_a_502(
    stack: Stack, fake: FakeProviderServer
) -> None:
    reply = stack.client().chat.completions.create(
        model="chat-bedrock", messages=[{"role": "user", "content": "signed"}]
    )
    assert reply.choices[0].message.content == "echo: signed"  # the fake verified SigV4
    seen = fake.requests[0]
    assert seen.path == "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"  # decoded
    assert "Credential=AKIDFAKEBEDROCK/" in (seen.header("authorization") or "")
    assert seen.header("x-amz-date")
    with pytest.raises(openai.InternalServerError) as info:
        stack.client().chat.completions.create(
            model="chat-bedrock-badsig", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 502
    assert info.value.code == "provider_auth_failed"


def post_chat(stack: Stack, kind: Kind) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/chat/completions",
        json={"model": kind.model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {FULL_KEY}"},
        timeout=30,
    )


# The model of an answer is the model that produced it, as its provider names it: for every
# provider type, whole and streamed (the fakes name the model they were asked for).
ANSWERING_MODELS = [
    ("chat-openai", "gpt-up"),
    ("chat-azure", "my-deploy"),
    ("chat-vllm", "llama-up"),
    ("chat-anthropic", ANTHROPIC.upstream),
    ("chat-gemini", GOOGLE.upstream),
    ("chat-bedrock", BEDROCK.upstream),  # Converse names none: the target's model id
]


@pytest.mark.parametrize(("model", "answered_by"), ANSWERING_MODELS)
def test_the_answer_names_the_model_that_produced_it(
    stack: Stack, fake: FakeProviderServer, model: str, answered_by: str
) -> None:
    client = stack.client()
    messages = [{"role": "user", "content": "who answers?"}]
    reply = client.chat.completions.create(model=model, messages=messages)
    assert reply.model == answered_by
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks and {chunk.model for chunk in chunks} == {answered_by}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
