"""Unit tests of request validation (rules from the design brief's table)."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.decisions.openai_request import Endpoint, ToolChoice, ToolChoiceMode
from extproc.decisions.validation import (
    COUNT_BRACKETS_BELOW,
    check_model_id,
    check_timeout,
    json_depth_exceeds,
    parse_json_body,
    validate,
    validate_chat,
    validate_embeddings,
)
from extproc.errors import GatewayError

MESSAGES = [{"role": "user", "content": "hi"}]


def check_chat_request(body: dict[str, Any]) -> Any:
    return validate_chat(body, "m")


def check_embeddings_request(body: dict[str, Any]) -> Any:
    return validate_embeddings(body, "m")


def chat(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": MESSAGES}
    body.update(fields)
    return body


def error_of(fn: Any, *args: Any) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        fn(*args)
    return info.value


# -- numeric bounds, property-based -------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(finite)
def test_temperature_bounds(value: float) -> None:
    if 0.0 <= value <= 2.0:
        check_chat_request(chat(temperature=value))
    else:
        assert error_of(check_chat_request, chat(temperature=value)).code == "invalid_temperature"


@given(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from(["max_tokens", "max_completion_tokens"]),
)
def test_max_tokens_bounds(value: int, name: str) -> None:
    if 1 <= value <= 128_000:
        check_chat_request(chat(**{name: value}))
    else:
        err = error_of(check_chat_request, chat(**{name: value}))
        assert (err.code, err.param, err.status) == ("invalid_max_tokens", name, 400)


@given(finite)
def test_top_p_bounds(value: float) -> None:
    if 0.0 < value <= 1.0:
        check_chat_request(chat(top_p=value))
    else:
        assert error_of(check_chat_request, chat(top_p=value)).code == "invalid_top_p"


@given(st.integers(min_value=-1000, max_value=1000))
def test_top_k_bounds(value: int) -> None:
    if value >= 1:
        check_chat_request(chat(top_k=value))
    else:
        assert error_of(check_chat_request, chat(top_k=value)).code == "invalid_top_k"


@given(finite)
def test_timeout_bounds(value: float) -> None:
    if 0 < value <= 600:
        assert check_timeout(value, "t") == value
    else:
        assert error_of(check_timeout, value, "t").code == "invalid_timeout"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("temperature", "0.5", "invalid_temperature"),
        ("temperature", True, "invalid_temperature"),
        ("max_tokens", 10.5, "invalid_max_tokens"),
        ("max_tokens", "100", "invalid_max_tokens"),
        ("max_tokens", False, "invalid_max_tokens"),
        ("top_p", 0, "invalid_top_p"),
        ("top_k", 1.5, "invalid_top_k"),
    ],
)
def test_wrong_types_are_rejected(field: str, value: Any, code: str) -> None:
    assert error_of(check_chat_request, chat(**{field: value})).code == code


def test_whole_float_max_tokens_is_an_integer() -> None:
    check_chat_request(chat(max_tokens=100.0))


def test_nulls_mean_defaults() -> None:
    check_chat_request(chat(temperature=None, top_p=None, max_tokens=None, top_k=None))


@pytest.mark.parametrize("value", ["abc", "", "nan", "inf", "0", "-1", "601"])
def test_timeout_header_strings(value: str) -> None:
    assert error_of(check_timeout, value, "header").code == "invalid_timeout"


def test_timeout_header_string_number() -> None:
    assert check_timeout(" 2.5 ", "header") == 2.5


# -- messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([], "empty_messages"),
        (None, "empty_messages"),
        ("hello", "invalid_message"),
        (["hello"], "invalid_message"),
        ([{"role": "wizard", "content": "x"}], "invalid_message"),
        ([{"role": "user"}], "invalid_message"),
        ([{"role": "user", "content": ""}], "invalid_message"),
        ([{"role": "user", "content": " \t\n\u3000 "}], "invalid_message"),
        ([{"role": "user", "content": []}], "invalid_message"),
        ([{"role": "user", "content": [{"type": "text", "text": "  "}]}], "invalid_message"),
        ([{"role": "user", "content": [{"type": "video", "url": "x"}]}], "invalid_message"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "invalid_message"),
        ([{"role": "user", "content": 42}], "invalid_message"),
    ],
)
def test_bad_messages(messages: Any, code: str) -> None:
    body = {"model": "m"}
    if messages is not None:
        body["messages"] = messages
    assert error_of(check_chat_request, body).code == code


@pytest.mark.parametrize(
    "content",
    ["😀", "مرحبا بالعالم", "\u200b", "a\u200db", [{"type": "text", "text": "hi"}]],
)
def test_unusual_but_valid_content(content: Any) -> None:
    check_chat_request(chat(messages=[{"role": "user", "content": content}]))


def test_assistant_tool_call_without_content() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call("1", "weather", '{"a": 1}')]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
    ]
    request = check_chat_request(chat(messages=messages))
    (checked,) = request.tool_calls[1]
    assert (checked.id, checked.name, checked.arguments) == ("1", "weather", {"a": 1})


def test_error_param_names_the_message() -> None:
    err = error_of(
        check_chat_request, chat(messages=[MESSAGES[0], {"role": "user", "content": " "}])
    )
    assert err.param == "messages[1].content"


# -- model ---------------------------------------------------------------------


@pytest.mark.parametrize("model", [None, "", "   ", 42, "x" * 257, ["m"]])
def test_bad_model_ids(model: Any) -> None:
    body = {} if model is None else {"model": model}
    assert error_of(check_model_id, body).code == "invalid_model_id"


def test_model_id_at_limit() -> None:
    assert check_model_id({"model": "x" * 256}) == "x" * 256


# -- body decoding -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"text"', "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b'{"a": "\xff\xfe"}', "invalid_encoding"),
        (b'{"a": "\xc3"}', "invalid_encoding"),
        (b'{"a": "\\ud800"}', "invalid_encoding"),
        (b"[" * 2000 + b"]" * 2000, "invalid_json"),
    ],
)
def test_bad_bodies(raw: bytes, code: str) -> None:
    assert error_of(parse_json_body, raw, 64).code == code


def test_depth_limit_is_configurable() -> None:
    nested = b'{"a":' * 10 + b"1" + b"}" * 10
    assert parse_json_body(nested, 10)
    assert error_of(parse_json_body, nested, 9).code == "invalid_json"


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=40))
def test_depth_measure(depth: int, limit: int) -> None:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    assert json_depth_exceeds(value, limit) is (depth > limit)


_JSON = st.recursive(
    st.none() | st.integers(-1000, 1000) | st.text(alphabet='{[]}a"', max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(st.text(max_size=3), _JSON, max_size=3), st.integers(min_value=1, max_value=8)
)
def test_parse_rejects_exactly_the_bodies_nested_too_deep(
    value: dict[str, Any], limit: int
) -> None:
    # parse_json_body skips the walk when the body has too few brackets to be too deep;
    # brackets inside strings must not change the verdict.
    raw = orjson.dumps(value)
    if json_depth_exceeds(value, limit):
        assert error_of(parse_json_body, raw, limit).code == "invalid_json"
    else:
        assert parse_json_body(raw, limit) == value


@pytest.mark.parametrize("depth", [8, 9])
def test_a_large_body_is_walked_without_counting_its_brackets(depth: int) -> None:
    # Above COUNT_BRACKETS_BELOW the nesting is walked straight away: a prompt full of brackets
    # in its text is still accepted, nesting one level too deep is still refused.
    padding = "[{" * COUNT_BRACKETS_BELOW
    value: Any = "x"
    for _ in range(depth - 1):
        value = [value]
    raw = orjson.dumps({"prompt": padding, "nested": value})
    assert len(raw) > COUNT_BRACKETS_BELOW
    if depth > 8:
        assert error_of(parse_json_body, raw, 8).code == "invalid_json"
    else:
        assert parse_json_body(raw, 8)["prompt"] == padding


def test_emoji_and_rtl_survive_decoding() -> None:
    text = "😀 שלום \u200b\u202e"
    assert parse_json_body(('{"t": "' + text + '"}').encode(), 8)["t"] == text


# -- embeddings ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_embedding_inputs(value: Any) -> None:
    check_embeddings_request({"model": "e", "input": value})


@pytest.mark.parametrize("value", [None, "", [], ["a", ""], [1, "a"], [[]], {"a": 1}, 5])
def test_bad_embedding_inputs(value: Any) -> None:
    body = {"model": "e"} if value is None else {"model": "e", "input": value}
    assert error_of(check_embeddings_request, body).code == "invalid_input"


def test_no_infinite_floats_pass_as_numbers() -> None:
    assert error_of(check_chat_request, chat(temperature=math.inf)).code == "invalid_temperature"


# -- the validated request: tools, tool_choice, stop, tool calls --------------------------


def call(call_id: str, name: str, arguments: Any = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


def test_the_record_carries_the_checked_fields() -> None:
    body = chat(
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=9,
        max_completion_tokens=7,
        stop="END",
        tools=[WEATHER, {"type": "custom", "custom": {"name": "x"}}],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        timeout=3,
    )
    request = validate(Endpoint.CHAT, body, "m")
    assert (request.endpoint, request.model, request.stream, request.include_usage) == (
        Endpoint.CHAT,
        "m",
        True,
        True,
    )
    assert request.max_tokens == 7  # max_completion_tokens wins, as OpenAI documents
    assert request.stop == ("END",)
    assert [(t.type, t.name, t.parameters) for t in request.tools] == [
        ("function", "weather", {"type": "object"}),
        ("custom", "", None),
    ]
    assert request.tool_choice == ToolChoice(ToolChoiceMode.FUNCTION, "weather")
    assert (request.timeout, request.body_changed, "timeout" in request.body) == (3.0, True, False)


def test_a_plain_request_is_unchanged() -> None:
    request = validate(Endpoint.CHAT, chat(), "m")
    assert (request.stream, request.include_usage, request.body_changed) == (False, False, False)
    assert (request.stop, request.tools, request.tool_choice, dict(request.tool_calls)) == (
        (),
        (),
        None,
        {},
    )


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"tools": "x"}, "invalid_request", "tools"),
        ({"tools": []}, "invalid_request", "tools"),
        ({"tools": [5]}, "invalid_request", "tools[0]"),
        ({"tools": [{"type": "function"}]}, "invalid_request", "tools[0].function"),
        (
            {"tools": [{"type": "function", "function": {"name": "no spaces"}}]},
            "invalid_request",
            "tools[0].function.name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "invalid_request",
            "tools[0].function.parameters",
        ),
        ({"tool_choice": 5, "tools": [WEATHER]}, "invalid_request", "tool_choice"),
        ({"tool_choice": "sometimes", "tools": [WEATHER]}, "invalid_request", "tool_choice"),
        ({"tool_choice": "function", "tools": [WEATHER]}, "invalid_request", "tool_choice"),
        ({"tool_choice": "auto"}, "invalid_request", "tool_choice"),
        (
            {
                "tool_choice": {"type": "function", "function": {"name": "other"}},
                "tools": [WEATHER],
            },
            "invalid_request",
            "tool_choice",
        ),
        ({"stop": 5}, "invalid_request", "stop"),
        ({"stop": [1]}, "invalid_request", "stop"),
        ({"stop": ""}, "invalid_request", "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_request", "stop"),
        ({"parallel_tool_calls": "yes"}, "invalid_request", "parallel_tool_calls"),
        ({"n": 0}, "invalid_request", "n"),
        ({"seed": 1.5}, "invalid_request", "seed"),
        ({"response_format": {"type": "yaml"}}, "invalid_request", "response_format"),
        ({"user": 5}, "invalid_request", "user"),
    ],
)
def test_bad_structured_fields(fields: dict[str, Any], code: str, param: str) -> None:
    err = error_of(check_chat_request, chat(**fields))
    assert (err.status, err.code, err.param) == (400, code, param)


def history(*calls: dict[str, Any], answered: str = "1") -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": list(calls)},
        {"role": "tool", "tool_call_id": answered, "content": "sunny"},
    ]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (history(call("1", "w", "not json")), "messages[1].tool_calls[0].function.arguments"),
        (history(call("1", "w", "[1]")), "messages[1].tool_calls[0].function.arguments"),
        (history(call("1", "w", {"a": 1})), "messages[1].tool_calls[0].function.arguments"),
        (history(call("1", "bad name")), "messages[1].tool_calls[0].function.name"),
        (history({"id": "1", "type": "custom"}), "messages[1].tool_calls[0]"),
        (history({"type": "function", "function": {"name": "w"}}), "messages[1].tool_calls[0]"),
        (history(call("1", "w"), answered="2"), "messages[2].tool_call_id"),
        (
            [{"role": "user", "content": "x"}, {"role": "tool", "content": "sunny"}],
            "messages[1].tool_call_id",
        ),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": "x"}],
            "messages[1].tool_calls",
        ),
    ],
)
def test_bad_tool_calls_in_the_history(messages: list[dict[str, Any]], param: str) -> None:
    err = error_of(check_chat_request, chat(messages=messages))
    assert (err.status, err.code, err.param) == (400, "invalid_message", param)


def test_blank_arguments_are_an_empty_object() -> None:
    request = check_chat_request(chat(messages=history(call("1", "w", " "))))
    assert request.tool_calls[1][0].arguments == {}


def test_embeddings_dimensions() -> None:
    assert check_embeddings_request({"model": "m", "input": "x", "dimensions": 8})
    err = error_of(check_embeddings_request, {"model": "m", "input": "x", "dimensions": 0})
    assert (err.code, err.param) == ("invalid_input", "dimensions")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": {}, "content": "hi"}], "messages[0].role"),
        ([{"role": ["user"], "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": [{"type": {}, "text": "x"}]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"type": ["text"]}]}], "messages[0].content[0]"),
    ],
)
def test_an_unhashable_role_or_part_type_is_a_400(messages: Any, param: str) -> None:
    """Regression (issue 15, found by schemathesis): these raised TypeError (a 500)."""
    error = error_of(check_chat_request, chat(messages=messages))
    assert (error.status, error.code, error.param) == (400, "invalid_message", param)
