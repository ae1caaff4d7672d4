"""Request validation: body decoding and the request rules of the design brief.

Pure functions: they take bytes or parsed JSON and either return the validated request
(`openai_request.ValidatedRequest`) or raise `GatewayError` (400/404/413). No I/O, no gRPC.
The same bad field gets the same answer whatever provider the model routes to: provider
adapters check only what their provider cannot do, never the OpenAI shape again.
"""

from __future__ import annotations

import math
import re
from types import MappingProxyType
from typing import Any

import orjson

from extproc.decisions.openai_request import (
    NO_TOOL_CALLS,
    Endpoint,
    Tool,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ValidatedRequest,
)
from extproc.errors import GatewayError, bad_request

MAX_MODEL_ID_CHARS = 256
MAX_TOKENS_LIMIT = 128_000
MIN_TEMPERATURE = 0.0
MAX_TEMPERATURE = 2.0
MAX_TOP_P = 1.0  # and greater than 0
MAX_TIMEOUT_SECONDS = 600.0
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 128
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
ENCODING_FORMATS = ("float", "base64")
# OpenAI's rule for function names (tools, tool_choice, tool calls).
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONTENT_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})


# Bodies up to this size count their brackets before walking their nesting (`parse_json_body`).
COUNT_BRACKETS_BELOW = 16 * 1024


def payload_too_large(limit: int) -> GatewayError:
    """The 413 for a body above the configured limit."""
    return GatewayError(
        413, "payload_too_large", f"request body is larger than the limit of {limit} bytes"
    )


def parse_json_body(raw: bytes, max_depth: int) -> dict[str, Any]:
    """Decode a request body: valid UTF-8, valid JSON, an object, bounded nesting."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("invalid_encoding", "request body is not valid UTF-8") from None
        if "surrogate" in str(exc) or "UTF-8" in str(exc):
            raise bad_request(
                "invalid_encoding", "request body contains an invalid unicode escape"
            ) from None
        if "depth limit" in str(exc):
            raise _too_deep(max_depth) from None
        # orjson's message names position and cause, never body content.
        raise bad_request("invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("invalid_json", "request body must be a JSON object")
    # Nesting deeper than max_depth needs more than max_depth opening brackets; counting them
    # (in C, strings included, so never too few) spares a small body the walk. A large body is
    # walked straight away: its walk visits its containers only, and a prompt of plain text
    # has a handful, while two counts read every byte (0.6 ms a megabyte, 14 % of the
    # processor's samples on 1 MB prompts).
    if (len(raw) > COUNT_BRACKETS_BELOW or raw.count(b"{") + raw.count(b"[") > max_depth) and (
        json_depth_exceeds(data, max_depth)
    ):
        raise _too_deep(max_depth)
    return data


def _too_deep(max_depth: int) -> GatewayError:
    return bad_request("invalid_json", f"request body nests deeper than {max_depth} levels")


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when containers nest deeper than `max_depth` (the top object is depth 1)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def is_number(value: Any) -> bool:
    """JSON number (bools are not numbers here), finite."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and not math.isfinite(value))
    )


def is_integer(value: Any) -> bool:
    """JSON integer: an int, or a float with no fractional part (e.g. 5.0)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def check_model_id(body: dict[str, Any]) -> str:
    """Return the requested model name or raise `invalid_model_id`."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("invalid_model_id", "model must be a non-empty string", "model")
    if len(model) > MAX_MODEL_ID_CHARS:
        raise bad_request(
            "invalid_model_id",
            f"model must be at most {MAX_MODEL_ID_CHARS} characters",
            "model",
        )
    return model


def check_timeout(value: Any, source: str) -> float:
    """Validate a timeout in seconds: a number with 0 < x <= 600."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            value = None
    if not is_number(value) or not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise bad_request(
            "invalid_timeout",
            f"{source} must be a number of seconds greater than 0 and at most "
            f"{MAX_TIMEOUT_SECONDS:g}",
            "timeout",
        )
    return float(value)


def validate(endpoint: Endpoint, body: dict[str, Any], model: str) -> ValidatedRequest:
    """Apply every rule for `endpoint` to a parsed body whose model id was checked; return the
    validated request (the body's `timeout` field is checked and removed)."""
    if endpoint is Endpoint.CHAT:
        request = validate_chat(body, model)
    else:
        request = validate_embeddings(body, model)
    if "timeout" not in body:
        return request
    timeout = check_timeout(body.pop("timeout"), "the timeout field")
    return request._replace(timeout=timeout, body_changed=True)


def validate_chat(body: dict[str, Any], model: str) -> ValidatedRequest:
    """The sampling-parameter, message and tool rules of a chat completion body."""
    _check_sampling(body)
    messages = body.get("messages")
    calls = _check_messages(messages)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("invalid_request", "stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("invalid_request", "stream_options must be an object", "stream_options")
    _check_choices(body)
    tools = _check_tools(body.get("tools"))
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    return ValidatedRequest(
        endpoint=Endpoint.CHAT,
        model=model,
        body=body,
        stream=stream is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        max_tokens=int(limit) if limit is not None else None,
        stop=_check_stop(body.get("stop")),
        tools=tools,
        tool_choice=_check_tool_choice(body.get("tool_choice"), tools),
        tool_calls=MappingProxyType(calls) if calls else NO_TOOL_CALLS,
    )


def _check_sampling(body: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None and (
        not is_number(temperature) or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE
    ):
        raise bad_request(
            "invalid_temperature",
            f"temperature must be between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}",
            "temperature",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not is_integer(value) or not 1 <= value <= MAX_TOKENS_LIMIT):
            raise bad_request(
                "invalid_max_tokens",
                f"{name} must be an integer between 1 and {MAX_TOKENS_LIMIT}",
                name,
            )
    top_p = body.get("top_p")
    if top_p is not None and (not is_number(top_p) or not 0 < top_p <= MAX_TOP_P):
        raise bad_request(
            "invalid_top_p", f"top_p must be greater than 0 and at most {MAX_TOP_P:g}", "top_p"
        )
    top_k = body.get("top_k")
    if top_k is not None and (not is_integer(top_k) or top_k < 1):
        raise bad_request("invalid_top_k", "top_k must be an integer of at least 1", "top_k")


def _check_messages(messages: Any) -> dict[int, tuple[ToolCall, ...]]:
    """Check every message; return the decoded tool calls of assistant messages by index."""
    if messages is None or (isinstance(messages, list) and not messages):
        raise bad_request(
            "empty_messages", "messages must contain at least one message", "messages"
        )
    if not isinstance(messages, list):
        raise bad_request("invalid_message", "messages must be an array", "messages")
    calls: dict[int, tuple[ToolCall, ...]] = {}
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        _check_message(message, where)
        role = message["role"]
        if role == "assistant" and message.get("tool_calls") is not None:
            calls[index] = _check_tool_calls(message["tool_calls"], f"{where}.tool_calls")
            call_ids.update(call.id for call in calls[index])
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in call_ids:
                raise bad_request(
                    "invalid_message",
                    f"{where}.tool_call_id must name a tool call of an earlier assistant message",
                    f"{where}.tool_call_id",
                )
    return calls


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise bad_request("invalid_message", f"{where} must be an object", where)
    role = message.get("role")
    # A str check first: `{} in frozenset` raises (unhashable), which was a 500.
    if not isinstance(role, str) or role not in CHAT_ROLES:
        raise bad_request(
            "invalid_message",
            f"{where}.role must be one of {', '.join(sorted(CHAT_ROLES))}",
            f"{where}.role",
        )
    content = message.get("content")
    if (
        content is None
        and role == "assistant"
        and (message.get("tool_calls") or message.get("function_call"))
    ):
        return
    _check_content(content, f"{where}.content")


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        if not content.strip():
            raise bad_request("invalid_message", f"{where} must not be empty", where)
        return
    if not isinstance(content, list) or not content:
        raise bad_request(
            "invalid_message", f"{where} must be a non-empty string or array of parts", where
        )
    for index, part in enumerate(content):
        part_where = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in CONTENT_PART_TYPES:
            raise bad_request(
                "invalid_message",
                f"{part_where} must be an object with a type of "
                f"{', '.join(sorted(CONTENT_PART_TYPES))}",
                part_where,
            )
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str) or not text.strip():
                raise bad_request(
                    "invalid_message", f"{part_where}.text must not be empty", part_where
                )
        elif part["type"] == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise bad_request(
                    "invalid_message", f"{part_where}.image_url.url is required", part_where
                )


def validate_embeddings(body: dict[str, Any], model: str) -> ValidatedRequest:
    """Check an embeddings body: `input` is a non-empty string, list of strings or tokens."""
    value = body.get("input")
    ok = False
    if isinstance(value, str):
        ok = bool(value)
    elif isinstance(value, list) and value:
        ok = (
            all(isinstance(item, str) and item for item in value)
            or all(is_integer(item) for item in value)
            or all(
                isinstance(item, list) and item and all(is_integer(t) for t in item)
                for item in value
            )
        )
    if not ok:
        raise bad_request(
            "invalid_input",
            "input must be a non-empty string, array of strings, or array of token arrays",
            "input",
        )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODING_FORMATS:
        raise bad_request(
            "invalid_input", "encoding_format must be 'float' or 'base64'", "encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (not is_integer(dimensions) or dimensions < 1):
        raise bad_request("invalid_input", "dimensions must be a positive integer", "dimensions")
    return ValidatedRequest(endpoint=Endpoint.EMBEDDINGS, model=model, body=body)


# -- tools, stop and the other structured chat fields -----------------------------------------


def _check_tools(tools: Any) -> tuple[Tool, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list) or not tools:
        raise bad_request("invalid_request", "tools must be a non-empty array of tools", "tools")
    return tuple(_check_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools))


def _check_tool(tool: Any, where: str) -> Tool:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str) or not kind:
        raise bad_request("invalid_request", f"{where} must be an object with a type", where)
    if kind != "function":
        return Tool(kind)  # another OpenAI tool type: the provider says whether it has it
    function = tool.get("function")
    if not isinstance(function, dict):
        raise bad_request(
            "invalid_request", f"{where}.function must be an object", f"{where}.function"
        )
    name = _function_name(function.get("name"), f"{where}.function.name", "invalid_request")
    for field, kind, what in (("description", str, "a string"), ("parameters", dict, "an object")):
        value = function.get(field)
        if value is not None and not isinstance(value, kind):
            param = f"{where}.function.{field}"
            raise bad_request("invalid_request", f"{param} must be {what}", param)
    return Tool("function", name, function.get("description"), function.get("parameters"))


def _function_name(name: Any, where: str, code: str) -> str:
    if not isinstance(name, str) or FUNCTION_NAME.fullmatch(name) is None:
        raise bad_request(
            code,
            f"{where} must be 1 to 64 letters, digits, underscores or dashes",
            where,
        )
    return name


_TOOL_CHOICE_HELP = (
    "tool_choice must be 'none', 'auto', 'required' or "
    '{"type": "function", "function": {"name": ...}}'
)


def _check_tool_choice(choice: Any, tools: tuple[Tool, ...]) -> ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        try:
            checked = ToolChoice(ToolChoiceMode(choice))
        except ValueError:
            checked = None
        if checked is None or checked.mode is ToolChoiceMode.FUNCTION:
            raise bad_request("invalid_request", _TOOL_CHOICE_HELP, "tool_choice")
    else:
        function = choice.get("function") if isinstance(choice, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(choice, dict) or choice.get("type") != "function" or name is None:
            raise bad_request("invalid_request", _TOOL_CHOICE_HELP, "tool_choice")
        name = _function_name(name, "tool_choice.function.name", "invalid_request")
        if not any(tool.name == name for tool in tools):
            raise bad_request(
                "invalid_request",
                f"tool_choice names the function '{name}', which is not in tools",
                "tool_choice",
            )
        checked = ToolChoice(ToolChoiceMode.FUNCTION, name)
    if not tools:
        raise bad_request(
            "invalid_request", "tool_choice is only allowed when tools are given", "tool_choice"
        )
    return checked


def _check_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    sequences = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(sequences, list)
        or len(sequences) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and s for s in sequences)
    ):
        raise bad_request(
            "invalid_request",
            f"stop must be a non-empty string or an array of at most {MAX_STOP_SEQUENCES} "
            "non-empty strings",
            "stop",
        )
    return tuple(sequences)


def _check_tool_calls(calls: Any, where: str) -> tuple[ToolCall, ...]:
    if not isinstance(calls, list):
        raise bad_request("invalid_message", f"{where} must be an array", where)
    checked = []
    for index, call in enumerate(calls):
        call_where = f"{where}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        call_id = call.get("id") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or call.get("type", "function") != "function"
            or not isinstance(call_id, str)
            or not call_id
        ):
            raise bad_request(
                "invalid_message",
                f"{call_where} must be a function call with an id and a function",
                call_where,
            )
        name = _function_name(
            function.get("name"), f"{call_where}.function.name", "invalid_message"
        )
        checked.append(
            ToolCall(
                call_id,
                name,
                decode_arguments(function.get("arguments"), f"{call_where}.function.arguments"),
            )
        )
    return tuple(checked)


def decode_arguments(raw: Any, param: str) -> dict[str, Any]:
    """A function call's arguments: a JSON object encoded as a string (blank or absent: {});
    anything else is a 400 `invalid_message` naming `param`."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    value: Any = None
    if isinstance(raw, str):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise bad_request(
            "invalid_message", f"{param} must be a JSON object encoded as a string", param
        )
    return value


def _check_choices(body: dict[str, Any]) -> None:
    """The scalar chat fields whose shape OpenAI fixes: n, seed, parallel_tool_calls, user,
    response_format (what a provider makes of them is its adapter's business)."""
    n = body.get("n")
    if n is not None and (not is_integer(n) or not 1 <= n <= MAX_CHOICES):
        raise bad_request(
            "invalid_request", f"n must be an integer between 1 and {MAX_CHOICES}", "n"
        )
    seed = body.get("seed")
    if seed is not None and not is_integer(seed):
        raise bad_request("invalid_request", "seed must be an integer", "seed")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad_request(
            "invalid_request", "parallel_tool_calls must be a boolean", "parallel_tool_calls"
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("invalid_request", "user must be a string", "user")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") not in RESPONSE_FORMATS
    ):
        raise bad_request(
            "invalid_request",
            "response_format must be an object whose type is "
            + ", ".join(f"'{kind}'" for kind in RESPONSE_FORMATS),
            "response_format",
        )
