"""Anthropic Messages API: OpenAI chat request → `POST {base_path}/messages`, and back.

Owns the request translation, the buffered-response translation and the error
mapping; the SSE stream translation lives in `anthropic_stream.py`.

Feature decisions (OpenAI request field → Messages API):
- system / developer messages, wherever they appear → top-level `system` (joined by a
  blank line); consecutive same-role turns are merged; `tool` messages → `tool_result`
  blocks in a user turn; assistant `tool_calls` → `tool_use` blocks (arguments must be a
  JSON object, else 400 `invalid_message`).
- max_completion_tokens / max_tokens / the model's default_max_tokens → `max_tokens`;
  stop → `stop_sequences`; temperature (0 to 1 only), top_p, top_k; user → metadata.user_id;
  tools / tool_choice / parallel_tool_calls=false → tools / tool_choice /
  disable_parallel_tool_use; image_url (https or base64 data URL) → image blocks;
  base64 PDF `file` parts → document blocks.
- Rejected with 400 `unsupported_parameter` (they would change the answer silently):
  n > 1, logprobs / top_logprobs, response_format other than text, audio output,
  input_audio parts, other file parts, non-zero frequency/presence penalties,
  logit_bias, reasoning_effort, web_search_options, legacy functions / function_call /
  `function` messages, non-function tools, temperature above 1.
- Dropped (hints without an Anthropic equivalent): seed, service_tier, store, metadata,
  prediction, a tool's `strict`, tool_choice when no tools are given.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from extproc.config.credentials import Credential
from extproc.config.schema import ProviderConfig
from extproc.errors import GatewayError, bad_request
from extproc.providers.anthropic_stream import (
    AnthropicStreamTranslator,
    apply_usage,
    finish_reason,
)
from extproc.providers.base import (
    JSON_CONTENT_TYPE,
    Endpoint,
    RequestContext,
    TranslatingAdapter,
    UpstreamRequest,
    api_key,
    append_turn,
    serialize,
    strip_thought_signatures,
    tool_arguments,
)
from extproc.providers.errors import malformed_response, provider_error
from extproc.providers.openai_format import ChatStreamWriter, chat_completion, tool_call

PROVIDER_TYPE: Final = "anthropic"
DEFAULT_VERSION: Final = "2023-06-01"

# The HTTP status Anthropic documents for each error type (used for in-stream errors).
ERROR_STATUSES: Final[dict[str, int]] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
# Statuses whose meaning holds even when the body is not Anthropic's (a proxy's page).
_STATUS_SPEAKS_FOR_ITSELF: Final = frozenset({401, 403, 408, 413, 429, 503, 504, 529})
_CONTEXT_LENGTH: Final = re.compile(
    r"prompt is too long|exceeds? (the )?context (limit|window)|context window", re.IGNORECASE
)
_IMAGE_MEDIA_PREFIX: Final = "image/"


class AnthropicAdapter(TranslatingAdapter):
    """Adapter for the Anthropic Messages API (`base_url` like `https://api.anthropic.com/v1`)."""

    unsupported_endpoints = frozenset({Endpoint.EMBEDDINGS})

    def __init__(self, provider: ProviderConfig, credential: Credential | None) -> None:
        super().__init__(provider, credential)
        self._stream: AnthropicStreamTranslator | None = None

    def request(
        self, context: RequestContext, body: dict[str, Any], body_changed: bool
    ) -> UpstreamRequest:
        """Translate a validated chat request into a Messages API request."""
        strip_thought_signatures(body)  # only Gemini takes them back
        if context.endpoint is not Endpoint.CHAT:
            raise GatewayError(
                400,
                "unsupported_endpoint",
                f"provider type '{PROVIDER_TYPE}' does not support {context.endpoint.value}",
            )
        self.context = context
        out = UpstreamRequest(
            path=self.provider.base_path + "/messages",
            set_headers={**self.credential_headers(), "content-type": JSON_CONTENT_TYPE},
            # accept-encoding: the translators need the body uncompressed.
            remove_headers=["authorization", "anthropic-beta", "accept-encoding"],
            body=serialize(translate_request(body, context)),
        )
        return out

    def credential_headers(self) -> dict[str, str]:
        """`x-api-key` (with a key) and the `anthropic-version` every request needs."""
        headers = {"anthropic-version": self.provider.anthropic_version or DEFAULT_VERSION}
        if self.credential is not None:
            headers["x-api-key"] = api_key(self.credential)
        return headers

    @property
    def streaming(self) -> bool:
        """True when this request asked the provider for a stream."""
        return self.context is not None and self.context.stream

    def response_body(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """Translate a stream chunk, or the whole Messages response (502 if malformed)."""
        if self.streaming:
            stream = self._stream
            if stream is None:
                stream = self._stream = AnthropicStreamTranslator(
                    self.provider.name,
                    ChatStreamWriter(self._context().client_model, self._context().include_usage),
                    self.usage,
                    self._stream_error,
                )
            return stream.feed(chunk, end_of_stream)
        return self._translate_message(chunk)

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map an Anthropic error response (`{"type": "error", "error": {...}}`)."""
        error = _error_object(body)
        if error is not None:
            return map_anthropic_error(status, headers, error[0], error[1], self.provider.name)
        # Not Anthropic's shape: an HTML page from a proxy, an empty body, ...
        snippet = body[:200].decode("utf-8", "replace").strip()
        what = f"non-JSON error body: {snippet}" if snippet else "empty error body"
        if status in _STATUS_SPEAKS_FOR_ITSELF or status >= 500:
            return provider_error(status, what, self.provider.name, headers=headers)
        return malformed_response(self.provider.name, f"HTTP {status} with an unreadable body")

    # -- helpers --------------------------------------------------------------------------

    def _context(self) -> RequestContext:
        if self.context is None:
            raise RuntimeError("AnthropicAdapter.request() was not called")
        return self.context

    def _stream_error(self, error_type: str, message: str) -> GatewayError:
        status = ERROR_STATUSES.get(error_type, 500)
        return map_anthropic_error(status, {}, error_type, message, self.provider.name)

    def _translate_message(self, body: bytes) -> bytes:
        name = self.provider.name
        if not body.strip():
            raise malformed_response(name, "an empty response body")
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise malformed_response(name, "a response body that is not JSON") from None
        if not isinstance(message, dict):
            raise malformed_response(name, "a response body that is not a JSON object")
        if message.get("type") == "error":
            error = _error_object(body)
            if error is not None:
                status = ERROR_STATUSES.get(error[0], 500)
                raise map_anthropic_error(status, {}, error[0], error[1], name)
        content = message.get("content")
        stop_reason = message.get("stop_reason")
        if not isinstance(content, list):
            raise malformed_response(name, "a message without a content list")
        if stop_reason is not None and not isinstance(stop_reason, str):
            raise malformed_response(name, "a message with a malformed stop_reason")
        if not apply_usage(self.usage, message.get("usage"), {}):
            raise malformed_response(name, "a message without valid usage")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text = block.get("text")
                if not isinstance(text, str):
                    raise malformed_response(name, "a text block without text")
                texts.append(text)
            elif kind == "tool_use":
                call_id, tool, arguments = block.get("id"), block.get("name"), block.get("input")
                if not (
                    isinstance(call_id, str)
                    and isinstance(tool, str)
                    and isinstance(arguments, dict)
                ):
                    raise malformed_response(name, "a tool_use block without id, name or input")
                calls.append(tool_call(call_id, tool, orjson.dumps(arguments).decode()))
            elif not isinstance(kind, str):
                raise malformed_response(name, "a content block without a type")
            # thinking, redacted_thinking and server-tool blocks are not part of the answer
        text = "".join(texts)
        return serialize(
            chat_completion(
                self._context().client_model,
                text if text or not calls else None,
                finish_reason(stop_reason),
                self.usage,
                calls or None,
            )
        )


def map_anthropic_error(
    status: int, headers: dict[str, str], error_type: str, message: str, provider: str
) -> GatewayError:
    """The client-facing error for an Anthropic error type and message."""
    if error_type == "rate_limit_error":
        return provider_error(429, message, provider, headers=headers, rate_limited=True)
    if error_type == "overloaded_error":
        return provider_error(529, message, provider, headers=headers, overloaded=True)
    if error_type in ("authentication_error", "permission_error"):
        return provider_error(ERROR_STATUSES[error_type], message, provider, headers=headers)
    if error_type == "invalid_request_error" and status != 413:
        return provider_error(
            400,
            message,
            provider,
            headers=headers,
            context_length=_CONTEXT_LENGTH.search(message) is not None,
        )
    if status < 400:  # an error object inside a 2xx answer
        status = ERROR_STATUSES.get(error_type, 500)
    return provider_error(status, message, provider, headers=headers)


def _error_object(body: bytes) -> tuple[str, str] | None:
    """(type, message) of an Anthropic error body, or None when it has another shape."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("type"), str):
        return None
    message = error.get("message")
    return error["type"], message if isinstance(message, str) else ""


# -- request translation ----------------------------------------------------------------------


def unsupported(feature: str, param: str | None = None) -> GatewayError:
    """The 400 for an OpenAI feature the Messages API cannot express."""
    return bad_request(
        "unsupported_parameter",
        f"provider type '{PROVIDER_TYPE}' does not support {feature}",
        param,
    )


def translate_request(body: dict[str, Any], context: RequestContext) -> dict[str, Any]:
    """The Messages API body for a validated OpenAI chat completion body."""
    _check_supported(body)
    system, messages = _translate_messages(body["messages"])
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    out: dict[str, Any] = {
        "model": context.upstream_model,
        "max_tokens": int(limit) if limit is not None else context.default_max_tokens,
    }
    if system:
        out["system"] = system
    out["messages"] = messages
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            out["stop_sequences"] = stop
    elif stop is not None:
        raise bad_request("invalid_request", "stop must be a string or array of strings", "stop")
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("top_k") is not None:
        out["top_k"] = int(body["top_k"])
    tools = _translate_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _translate_tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice is not None:
            out["tool_choice"] = choice
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if body.get("stream") is True:
        out["stream"] = True
    return out


def _check_supported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n other than 1", "n")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise unsupported("logprobs", "logprobs")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") != "text"
    ):
        raise unsupported("response_format other than text", "response_format")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise unsupported("audio output", "modalities")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name):
            raise unsupported(name, name)
    if body.get("logit_bias"):
        raise unsupported("logit_bias", "logit_bias")
    if body.get("reasoning_effort") is not None:
        raise unsupported("reasoning_effort", "reasoning_effort")
    if body.get("web_search_options") is not None:
        raise unsupported("web_search_options", "web_search_options")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise unsupported(f"legacy function calling ('{name}'); use tools", name)
    temperature = body.get("temperature")
    if temperature is not None and temperature > 1:
        raise unsupported("temperature above 1 (its range is 0 to 1)", "temperature")


def _translate_messages(messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Messages API turns) for validated OpenAI messages."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.append(_system_text(message.get("content"), where))
            continue
        if role == "user":
            blocks = _user_blocks(message["content"], where)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise unsupported("legacy function calling ('function' messages); use tools", where)
        if not blocks:
            raise bad_request("invalid_message", f"{where} has no content", where)
        append_turn(turns, role, blocks)
    if not turns:
        raise bad_request(
            "invalid_message",
            f"provider type '{PROVIDER_TYPE}' needs a user or assistant message "
            "besides system messages",
            "messages",
        )
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return "\n\n".join(system), turns


def _system_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part in content:
        if part.get("type") != "text":
            raise bad_request(
                "invalid_message", f"{where}: system messages may contain only text", where
            )
        texts.append(part["text"])
    return "\n\n".join(texts)


def _text_parts(content: Any, where: str, allowed: str) -> list[dict[str, Any]]:
    """Text blocks for string content or text / refusal parts (others are rejected)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content or ()):
        kind = part.get("type")
        text = part.get("text") if kind == "text" else part.get("refusal")
        if kind not in ("text", "refusal") or not isinstance(text, str):
            raise bad_request(
                "invalid_message", f"{where}[{index}]: {allowed} may contain only text", where
            )
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        kind = part["type"]
        if kind == "text":
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            blocks.extend(_text_parts([part], part_where, "this part"))
        elif kind == "image_url":
            blocks.append(_image_block(part["image_url"]["url"], part_where))
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), part_where))
        else:
            raise unsupported(f"'{kind}' content parts", part_where)
    return blocks


def _image_block(url: str, where: str) -> dict[str, Any]:
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    parsed = _data_url(url)
    if parsed is None or not parsed[0].startswith(_IMAGE_MEDIA_PREFIX):
        raise bad_request(
            "invalid_message",
            f"{where}.image_url.url must be an http(s) URL or a base64 image data URL",
            where,
        )
    media_type, data = parsed
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document_block(file: Any, where: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    parsed = _data_url(data) if isinstance(data, str) else None
    if parsed is None or parsed[0] != "application/pdf":
        raise unsupported("file parts other than base64 PDF file_data", where)
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]},
    }
    filename = file.get("filename") if isinstance(file, dict) else None
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL, else None."""
    if not url.startswith("data:"):
        return None
    header, comma, data = url[5:].partition(",")
    params = header.split(";")
    if not comma or not params[0] or "base64" not in params[1:] or not data:
        return None
    return params[0].lower(), data


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise unsupported("legacy function calling ('function_call'); use tool_calls", where)
    blocks = _text_parts(message.get("content"), f"{where}.content", "assistant messages")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise bad_request("invalid_message", f"{where}.tool_calls must be an array", where)
    for index, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or call.get("type", "function") != "function"
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
        ):
            raise bad_request(
                "invalid_message",
                f"{call_where} must be a function call with an id and a name",
                call_where,
            )
        parsed = tool_arguments(function.get("arguments"), call_where)
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": parsed,
            }
        )
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request("invalid_message", f"{where}.tool_call_id is required", where)
    content = message.get("content")
    result: Any = content
    if not isinstance(content, str):
        result = _text_parts(content, f"{where}.content", "tool messages")
    return {"type": "tool_result", "tool_use_id": call_id, "content": result}


def _translate_tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad_request("invalid_request", "tools must be an array", "tools")
    out: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise unsupported(f"tools of type '{kind}'", where)
        function = tool.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("invalid_request", f"{where}.function.name is required", where)
        schema = function.get("parameters")
        entry: dict[str, Any] = {"name": name}
        description = function.get("description")
        if isinstance(description, str) and description:
            entry["description"] = description
        entry["input_schema"] = (
            schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        )
        out.append(entry)
    return out


def _translate_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(name, str):
        return {"type": "tool", "name": name}
    raise bad_request(
        "invalid_request",
        "tool_choice must be 'auto', 'required', 'none' or a named function",
        "tool_choice",
    )
