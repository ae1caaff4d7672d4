"""Property tests: whatever a client sends, the pipeline answers or raises GatewayError.

The routed models cover every request translator: OpenAI, Azure, Anthropic, Gemini (chat and
embeddings) and Bedrock; a translator that trips over a validated request fails them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extproc.errors import GatewayError
from extproc.pipeline.actions import Continue, Respond
from extproc.pipeline.request import RequestPipeline
from tests.unit.test_pipeline import KEY, gateway

GATEWAY = gateway()
PATHS = st.sampled_from(
    ["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/models/gpt", "/health", "/x"]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "model",
    "messages",
    "temperature",
    "max_tokens",
    "top_p",
    "top_k",
    "timeout",
    "stream",
    "stream_options",
    "input",
    "encoding_format",
    "max_completion_tokens",
    "dimensions",
    "tools",
    "tool_choice",
    "stop",
    "n",
    "seed",
    "user",
    "response_format",
    "parallel_tool_calls",
    "logprobs",
    "frequency_penalty",
    "modalities",
]
ROLES = ["user", "system", "developer", "assistant", "tool", "function", "x"]
text = st.text(max_size=12)
parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "refusal", "file"]) | json_values}
    ).map(lambda part: {**part, "text": "t", "image_url": {"url": "data:image/png;base64,AA"}})
    | json_values,
    max_size=3,
)
function = st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "get_weather", "bad name"]), "arguments": json_values | text}
)
tool_call = st.fixed_dictionaries(
    {"id": st.sampled_from(["c1", "c2", "call_x__sig__AAAA"]), "type": st.just("function")},
    optional={"function": function},
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES) | json_values},  # unhashable roles were a 500 (issue 15)
    optional={
        "content": st.none() | text | parts | json_values,
        "tool_calls": st.lists(tool_call, max_size=2) | json_values,
        "tool_call_id": st.sampled_from(["c1", "c2", "call_x__sig__AAAA"]) | json_values,
        "name": text,
    },
)
tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "custom"])},
    optional={
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["f", "get_weather", "x y"])},
            optional={"parameters": json_values, "description": json_values},
        )
    },
)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
messages = st.lists(message, max_size=4)
tools = st.none() | st.lists(tool, max_size=2) | json_values
MODELS = ["gpt", "emb", "azgpt", "claude", "gemini", "nova", "gemb", "ghost"]


REACHED: set[str] = set()


def drive(headers: dict[str, str], body: bytes) -> None:
    # A bare 200 is an unusable answer (no content type): it counts against the breaker.
    GATEWAY.breakers.reset(time.monotonic())
    pipe = RequestPipeline(GATEWAY)
    try:
        action = pipe.on_request_headers(headers, False)
        if isinstance(action, Respond):
            return
        assert isinstance(action, Continue)
        action = pipe.on_request_body(body, True)
        assert isinstance(action, Continue)
        assert action.metadata and action.metadata["gw"]["route"]
        REACHED.add(f"routed:{action.metadata['gw']['model']}")
        answer = pipe.on_response_headers({":status": "200"}, False)
        assert isinstance(answer, Continue)
    except GatewayError as error:
        assert 400 <= error.status < 500
        parsed = orjson.loads(pipe.fail(error).body)
        assert parsed["error"]["code"] == error.code


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(PATHS, st.sampled_from(["GET", "POST", "PUT", ""]), st.binary(max_size=200))
def test_arbitrary_bytes(path: str, method: str, body: bytes) -> None:
    drive({":path": path, ":method": method, "authorization": f"Bearer {KEY}"}, body)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.sampled_from(MODELS), messages, tools)
@example(body={}, model="gpt", msgs=[{"role": "user", "content": "hi"}], tool_list=None)
def test_arbitrary_json_fields(
    body: dict[str, Any], model: str, msgs: list[Any], tool_list: Any
) -> None:
    body.setdefault("model", model)
    body.setdefault("messages", msgs)
    if tool_list is not None:
        body.setdefault("tools", tool_list)
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        drive(
            {":path": path, ":method": "POST", "authorization": f"Bearer {KEY}"}, orjson.dumps(body)
        )


# -- valid requests, so that every translator sees many shapes it must map or refuse cleanly --

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
valid_part = st.one_of(
    words.map(lambda t: {"type": "text", "text": t + "x"}),
    st.sampled_from(
        [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "refusal", "refusal": "no"},
        ]
    ),
)
valid_content = words.map(lambda t: t + "x") | st.lists(valid_part, min_size=1, max_size=3)
FUNCTIONS = ["get_weather", "now"]


@st.composite
def valid_chats(draw: st.DrawFn) -> dict[str, Any]:
    """A chat body every validation rule accepts: translators must map it or refuse it."""
    out: list[dict[str, Any]] = []
    if draw(st.booleans()):
        out.append({"role": draw(st.sampled_from(["system", "developer"])), "content": "be"})
    for turn in range(draw(st.integers(0, 3))):
        out.append({"role": "user", "content": draw(valid_content)})
        if draw(st.booleans()):
            calls = [
                {
                    "id": f"c{turn}_{i}" + draw(st.sampled_from(["", "__sig__AAAA"])),
                    "type": "function",
                    "function": {
                        "name": draw(st.sampled_from(FUNCTIONS)),
                        "arguments": draw(st.sampled_from(["", "{}", '{"city": "Oslo"}'])),
                    },
                }
                for i in range(draw(st.integers(1, 2)))
            ]
            text = draw(st.none() | st.just("ok"))
            out.append({"role": "assistant", "content": text, "tool_calls": calls})
            for call in calls:
                out.append({"role": "tool", "tool_call_id": call["id"], "content": "r"})
        elif draw(st.booleans()):
            out.append({"role": "assistant", "content": draw(valid_content)})
    out.append({"role": "user", "content": draw(valid_content)})
    body: dict[str, Any] = {"messages": out}
    optional = {
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(1, 50),
        "max_tokens": st.integers(1, 128_000),
        "stream": st.booleans(),
        "stop": st.sampled_from(["END", ["a", "b"], []]),
        "n": st.integers(1, 3),
        "seed": st.integers(-5, 5),
        "user": words,
        "response_format": st.sampled_from(
            [{"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {}}]
        ),
        "logprobs": st.booleans(),
        "frequency_penalty": st.floats(-2, 2),
        "parallel_tool_calls": st.booleans(),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    if draw(st.booleans()):
        body["tools"] = [
            {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
            for name in FUNCTIONS
        ] + draw(st.sampled_from([[], [{"type": "custom", "custom": {"name": "c"}}]]))
        choice = st.sampled_from(["none", "auto", "required"]) | st.sampled_from(FUNCTIONS).map(
            lambda name: {"type": "function", "function": {"name": name}}
        )
        if draw(st.booleans()):
            body["tool_choice"] = draw(choice)
    return body


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(valid_chats(), st.sampled_from(["gpt", "azgpt", "claude", "gemini", "nova", "pair"]))
def test_valid_requests_are_translated_or_refused_cleanly(body: dict[str, Any], model: str) -> None:
    body["model"] = model
    drive(
        {":path": "/v1/chat/completions", ":method": "POST", "authorization": f"Bearer {KEY}"},
        orjson.dumps(body),
    )


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=6))
def test_arbitrary_headers(headers: dict[str, str]) -> None:
    drive(headers, b"{}")


def test_the_properties_reach_the_routed_path() -> None:
    # Guards the properties above: without a routed request their success branch is dead.
    for model in ("gpt", "claude", "gemini", "nova"):
        drive(
            {":path": "/v1/chat/completions", ":method": "POST", "authorization": f"Bearer {KEY}"},
            orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
        assert f"routed:{model}" in REACHED
