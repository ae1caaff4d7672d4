"""Request validation: body decoding and the request rules of the design brief.

Pure functions: they take bytes or parsed JSON and either return what the
pipeline needs or raise `GatewayError` (400/404/413). No I/O, no gRPC.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from extproc.errors import GatewayError, bad_request

MAX_MODEL_ID_CHARS = 256
MAX_TOKENS_LIMIT = 128_000
MAX_TIMEOUT_SECONDS = 600.0
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
CONTENT_PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal"})


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
    # (in C, strings included, so never too few) spares most bodies the walk.
    if raw.count(b"{") + raw.count(b"[") > max_depth and json_depth_exceeds(data, max_depth):
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


def check_chat_request(body: dict[str, Any]) -> None:
    """Apply the sampling-parameter and message rules to a chat completion body."""
    _check_sampling(body)
    _check_messages(body.get("messages"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("invalid_request", "stream must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("invalid_request", "stream_options must be an object", "stream_options")


def _check_sampling(body: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None and (not is_number(temperature) or not 0 <= temperature <= 2):
        raise bad_request(
            "invalid_temperature", "temperature must be between 0 and 2", "temperature"
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
    if top_p is not None and (not is_number(top_p) or not 0 < top_p <= 1):
        raise bad_request("invalid_top_p", "top_p must be greater than 0 and at most 1", "top_p")
    top_k = body.get("top_k")
    if top_k is not None and (not is_integer(top_k) or top_k < 1):
        raise bad_request("invalid_top_k", "top_k must be an integer of at least 1", "top_k")


def _check_messages(messages: Any) -> None:
    if messages is None or (isinstance(messages, list) and not messages):
        raise bad_request(
            "empty_messages", "messages must contain at least one message", "messages"
        )
    if not isinstance(messages, list):
        raise bad_request("invalid_message", "messages must be an array", "messages")
    for index, message in enumerate(messages):
        _check_message(message, f"messages[{index}]")


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise bad_request("invalid_message", f"{where} must be an object", where)
    role = message.get("role")
    if role not in CHAT_ROLES:
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
        if not isinstance(part, dict) or part.get("type") not in CONTENT_PART_TYPES:
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


def check_embeddings_request(body: dict[str, Any]) -> None:
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
    if encoding is not None and encoding not in ("float", "base64"):
        raise bad_request(
            "invalid_input", "encoding_format must be 'float' or 'base64'", "encoding_format"
        )
