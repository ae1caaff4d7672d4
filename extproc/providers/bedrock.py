"""AWS Bedrock Converse / ConverseStream: OpenAI chat ↔ Converse shapes, SigV4, errors.

Owns the request translation (messages, system, tools, images, inference settings), the
signing call, the buffered Converse response mapping and the AWS error mapping; the
ConverseStream (event stream) translation lives in `bedrock_stream.py`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import orjson

from extproc.config.credentials import AwsCredentials, Credential
from extproc.config.schema import ProviderConfig
from extproc.errors import GatewayError, bad_request
from extproc.providers.aws_sigv4 import sign_headers
from extproc.providers.base import (
    JSON_CONTENT_TYPE,
    Endpoint,
    RequestContext,
    TranslatingAdapter,
    UpstreamRequest,
    append_turn,
    serialize,
    strip_thought_signatures,
    tool_arguments,
)
from extproc.providers.bedrock_stream import FINISH_REASONS, BedrockStreamTranslator, read_usage
from extproc.providers.errors import malformed_response, parse_json_error, provider_error
from extproc.providers.openai_format import ChatStreamWriter, chat_completion, tool_call

SERVICE: Final = "bedrock"
EVENTSTREAM_CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"

# AWS error type → the HTTP status whose client-facing mapping applies (see errors.py).
_ERROR_STATUS: Final[dict[str, int]] = {
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 429,
    "ServiceUnavailableException": 503,
    "ModelNotReadyException": 503,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "IncompleteSignatureException": 403,
    "MissingAuthenticationTokenException": 403,
    "ExpiredTokenException": 403,
    "ValidationException": 400,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "InternalServerException": 500,
    "ModelErrorException": 424,
    "ModelStreamErrorException": 424,
}
_CONTEXT_LENGTH: Final = re.compile(
    r"too long|too many (input )?tokens|max(imum)?[ _]?tokens|context (length|window)",
    re.IGNORECASE,
)

_IMAGE_FORMATS: Final[dict[str, str]] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_HISTORY_TOOL_DESCRIPTION: Final = "Tool used earlier in this conversation."


class BedrockAdapter(TranslatingAdapter):
    """Adapter for the Bedrock Runtime Converse API (`/model/{id}/converse[-stream]`).

    Needs `aws_region` and `AwsCredentials`. Embeddings are not part of Converse and are
    refused with 400 `unsupported_endpoint`.
    """

    unsupported_endpoints = frozenset({Endpoint.EMBEDDINGS})

    def __init__(self, provider: ProviderConfig, credential: Credential | None) -> None:
        super().__init__(provider, credential)
        self._model = ""
        self._stream = False
        self._translator: BedrockStreamTranslator | None = None
        self._buffered = bytearray()

    # -- request ---------------------------------------------------------------------------

    def request(
        self, context: RequestContext, body: dict[str, Any], body_changed: bool
    ) -> UpstreamRequest:
        """Translate to a Converse body, then sign it for `POST .../model/{id}/converse`."""
        strip_thought_signatures(body)  # only Gemini takes them back; ids here are <= 64 chars
        self.context = context
        self._model = context.client_model
        self._stream = context.stream
        if context.endpoint is not Endpoint.CHAT:
            raise GatewayError(
                400,
                "unsupported_endpoint",
                f"provider '{self.provider.name}' (bedrock Converse API) has no embeddings "
                "endpoint; route embeddings models to another provider",
            )
        credentials = self.credential
        if not isinstance(credentials, AwsCredentials):
            raise TypeError("bedrock providers need AwsCredentials")
        payload = serialize(converse_request(body))
        operation = "converse-stream" if context.stream else "converse"
        path = (
            f"{self.provider.base_path}/model/{quote(context.upstream_model, safe='')}/{operation}"
        )
        authority = self.provider.authority
        headers = sign_headers(
            credentials,
            self.provider.aws_region or "",
            SERVICE,
            "POST",
            f"{self.provider.scheme}://{authority}{path}",
            {"host": authority, "content-type": JSON_CONTENT_TYPE},
            payload,
        )
        del headers["host"]  # Envoy sets Host to the provider authority, which was signed
        headers["accept"] = EVENTSTREAM_CONTENT_TYPE if context.stream else JSON_CONTENT_TYPE
        remove = ["x-amz-content-sha256"]
        if "x-amz-security-token" not in headers:
            remove.append("x-amz-security-token")
        return UpstreamRequest(path=path, set_headers=headers, remove_headers=remove, body=payload)

    # -- response --------------------------------------------------------------------------

    @property
    def streaming(self) -> bool:
        """True when this request asked the provider for a stream."""
        return self._stream

    def response_body(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """A whole Converse response → `chat.completion`; stream chunks → SSE chunks."""
        if self._stream:
            translator = self._translator
            if translator is None:
                include_usage = self.context.include_usage if self.context else False
                translator = self._translator = BedrockStreamTranslator(
                    self.provider.name,
                    ChatStreamWriter(self._model, include_usage),
                    self.usage,
                    self._stream_exception,
                )
            return translator.feed(chunk, end_of_stream)
        if not end_of_stream:
            self._buffered += chunk
            return b""
        body = bytes(self._buffered) + chunk if self._buffered else chunk
        return orjson.dumps(self._completion(body))

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map an AWS error (`x-amzn-errortype` header, `{"message"}` body) to a client error."""
        message, body_type = _error_details(body)
        error_type = _error_type(_header(headers, "x-amzn-errortype")) or body_type
        return bedrock_error(self.provider.name, error_type, message, status, headers)

    def _stream_exception(self, exception_type: str, payload: bytes) -> GatewayError:
        """Map an in-stream `exception` message (`:exception-type` header, JSON payload)."""
        message, _ = _error_details(payload)
        return bedrock_error(self.provider.name, _error_type(exception_type), message, None, {})

    def _completion(self, body: bytes) -> dict[str, Any]:
        name = self.provider.name
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise malformed_response(name, "a Converse response that is not JSON") from None
        output = data.get("output") if isinstance(data, dict) else None
        message = output.get("message") if isinstance(output, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            raise malformed_response(name, "a Converse response without output.message.content")
        stop_reason = data.get("stopReason")
        if not isinstance(stop_reason, str):
            raise malformed_response(name, "a Converse response without a stopReason")
        usage = read_usage(data.get("usage"))
        if usage is None:
            raise malformed_response(name, "a Converse response without valid usage")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in content:
            if not isinstance(block, dict):
                raise malformed_response(name, "a Converse content block that is not an object")
            if "text" in block:
                if not isinstance(block["text"], str):
                    raise malformed_response(name, "a Converse text block that is not a string")
                texts.append(block["text"])
            elif "toolUse" in block:
                use = block["toolUse"]
                if not (
                    isinstance(use, dict)
                    and isinstance(use.get("toolUseId"), str)
                    and isinstance(use.get("name"), str)
                ):
                    raise malformed_response(name, "a Converse toolUse block without id and name")
                arguments = orjson.dumps(use.get("input", {})).decode()
                calls.append(tool_call(use["toolUseId"], use["name"], arguments))
            # reasoningContent, citations and other blocks have no OpenAI counterpart.
        self.usage = usage
        text = "".join(texts) if texts or not calls else None
        return chat_completion(
            self._model, text, FINISH_REASONS.get(stop_reason, "stop"), usage, calls or None
        )


# -- errors ----------------------------------------------------------------------------------


def bedrock_error(
    provider: str,
    error_type: str,
    message: str,
    status: int | None,
    headers: dict[str, str],
) -> GatewayError:
    """The client-facing error for an AWS error type (e.g. `ThrottlingException`) or status."""
    mapped = _ERROR_STATUS.get(error_type) or status or 502
    if mapped == 424:  # the model behind Bedrock failed; keep that visible in the message
        message = f"{error_type or 'model error'}: {message}"
    return provider_error(
        mapped,
        message,
        provider,
        headers=headers,
        context_length=mapped == 400 and bool(_CONTEXT_LENGTH.search(message)),
    )


def _error_type(value: str | None) -> str:
    """`ThrottlingException` from `ThrottlingException:http://...`, `ns#Type` or camelCase."""
    if not value:
        return ""
    value = value.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return value[:1].upper() + value[1:]


def _error_details(body: bytes) -> tuple[str, str]:
    """(message, error type from `__type`/`code`) of an AWS JSON error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        message = data.get("message") or data.get("Message")
        raw_type = data.get("__type") or data.get("code")
        return (
            message if isinstance(message, str) and message else "no message",
            _error_type(raw_type) if isinstance(raw_type, str) else "",
        )
    return parse_json_error(body)[0], ""


def _header(headers: dict[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    return next((v for k, v in headers.items() if k.lower() == name), None)


# -- request translation ---------------------------------------------------------------------


def converse_request(body: dict[str, Any]) -> dict[str, Any]:
    """The Converse body for a validated OpenAI chat body (raises 400 for what has no mapping).

    System and developer messages become `system`; tool messages become `toolResult`
    blocks of a user turn; consecutive turns of one role merge. `tool_choice: "none"`
    has no Converse equivalent: the tools are dropped, unless the conversation already
    holds tool blocks (Converse then requires `toolConfig`), in which case they stay and
    no `toolChoice` is sent.
    """
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request("unsupported_parameter", "bedrock supports only n=1", "n")
    conversation = _messages(body.get("messages"))
    out: dict[str, Any] = {"messages": conversation.turns}
    if conversation.system:
        out["system"] = conversation.system
    inference = _inference_config(body)
    if inference:
        out["inferenceConfig"] = inference
    top_k = body.get("top_k")
    if top_k is not None:
        out["additionalModelRequestFields"] = {"top_k": int(top_k)}
    tool_config = _tool_config(body.get("tools"), body.get("tool_choice"), conversation)
    if tool_config is not None:
        out["toolConfig"] = tool_config
    return out


@dataclass(slots=True)
class _Conversation:
    """A translated message list: system blocks, alternating turns, tool use in the history."""

    system: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    tool_names: list[str] = field(default_factory=list)  # tools the assistant called
    has_tool_blocks: bool = False


def _messages(messages: Any) -> _Conversation:
    out = _Conversation()
    turns = out.turns
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        where = f"messages[{index}]"
        role = message.get("role")
        if role in ("system", "developer"):
            out.system.extend({"text": text} for text in _texts(message.get("content"), where))
            continue
        if role == "user":
            turn_role, blocks = "user", _user_blocks(message.get("content"), where)
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message, where, out.tool_names)
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(message, where)]
            out.has_tool_blocks = True
        else:
            raise bad_request(
                "unsupported_parameter",
                f"{where}: role '{role}' is not supported by bedrock; use tools and tool messages",
                f"{where}.role",
            )
        if not blocks:
            continue
        append_turn(turns, turn_role, blocks)
    out.has_tool_blocks = out.has_tool_blocks or bool(out.tool_names)
    return out


def _texts(content: Any, where: str) -> list[str]:
    """Text of a string or an array of text (or refusal) parts; other parts are refused."""
    if isinstance(content, str):
        return [content] if content else []
    texts: list[str] = []
    for index, part in enumerate(content if isinstance(content, list) else ()):
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get(kind) if kind in ("text", "refusal") else None
        if not isinstance(value, str):
            raise bad_request(
                "unsupported_content",
                f"{where}.content[{index}]: only text parts are supported here",
                f"{where}.content[{index}]",
            )
        if value:
            texts.append(value)
    return texts


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content if isinstance(content, list) else ()):
        part_where = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), part_where))
        else:
            raise bad_request(
                "unsupported_content",
                f"{part_where}: content parts of type '{kind}' are not supported by bedrock",
                part_where,
            )
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or not url.startswith("data:"):
        raise bad_request(
            "unsupported_content",
            f"{where}: bedrock needs the image bytes; send a base64 data: URL "
            "(data:image/png;base64,...) instead of a link",
            f"{where}.image_url.url",
        )
    header, comma, data = url[5:].partition(",")
    mime, *params = header.split(";")
    image_format = _IMAGE_FORMATS.get(mime.strip().lower())
    if not comma or "base64" not in params or image_format is None:
        raise bad_request(
            "unsupported_content",
            f"{where}: images must be base64 data: URLs of type png, jpeg, gif or webp",
            f"{where}.image_url.url",
        )
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            "invalid_message", f"{where}: the image data is not valid base64", where
        ) from None
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _assistant_blocks(
    message: dict[str, Any], where: str, tool_names: list[str]
) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise bad_request(
            "unsupported_parameter",
            f"{where}: function_call is not supported by bedrock; use tool_calls",
            f"{where}.function_call",
        )
    content = message.get("content")
    blocks: list[dict[str, Any]] = [
        {"text": text} for text in (_texts(content, where) if content is not None else [])
    ]
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise bad_request("invalid_message", f"{where}.tool_calls must be an array", where)
    for index, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{index}]"
        call = call if isinstance(call, dict) else {}
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            raise bad_request(
                "invalid_message", f"{call_where} needs an id and a function name", call_where
            )
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": call_id,
                    "name": name,
                    "input": tool_arguments(function.get("arguments"), call_where),
                }
            }
        )
        tool_names.append(name)
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad_request(
            "invalid_message", f"{where}.tool_call_id is required", f"{where}.tool_call_id"
        )
    content = [{"text": text} for text in _texts(message.get("content"), where)]
    return {"toolResult": {"toolUseId": call_id, "content": content}}


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        config["maxTokens"] = int(max_tokens)
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise bad_request(
                "invalid_request", "stop must be a string or an array of strings", "stop"
            )
        if stop:
            config["stopSequences"] = stop
    return config


def _tool_config(tools: Any, choice: Any, history: _Conversation) -> dict[str, Any] | None:
    if tools is not None and not isinstance(tools, list):
        raise bad_request("invalid_request", "tools must be an array", "tools")
    specs = [_tool_spec(tool, index) for index, tool in enumerate(tools or ())]
    if choice == "none":
        if not history.has_tool_blocks:
            return None
        choice = None  # Converse needs toolConfig once tool blocks exist; it has no "none"
    if not specs and history.has_tool_blocks:
        # OpenAI accepts tool history without `tools`; Converse does not: declare them.
        names = dict.fromkeys(history.tool_names)
        specs = [
            {
                "toolSpec": {
                    "name": name,
                    "description": _HISTORY_TOOL_DESCRIPTION,
                    "inputSchema": {"json": {"type": "object"}},
                }
            }
            for name in names
        ]
    if not specs:
        if choice in (None, "auto"):
            return None
        raise bad_request("invalid_request", "tool_choice needs tools", "tool_choice")
    config: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str) or not name:
            raise bad_request(
                "invalid_request",
                "tool_choice must be 'none', 'auto', 'required' or a function by name",
                "tool_choice",
            )
        config["toolChoice"] = {"tool": {"name": name}}
    elif choice is not None:
        raise bad_request(
            "invalid_request",
            "tool_choice must be 'none', 'auto', 'required' or a function by name",
            "tool_choice",
        )
    return config


def _tool_spec(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(name, str):
        raise bad_request("invalid_request", f"{where} must be a function tool with a name", where)
    assert isinstance(function, dict)
    schema = function.get("parameters")
    if schema is None:
        schema = {"type": "object", "properties": {}}
    elif not isinstance(schema, dict):
        raise bad_request(
            "invalid_request",
            f"{where}.function.parameters must be a JSON schema object",
            f"{where}.function.parameters",
        )
    spec: dict[str, Any] = {"name": name, "inputSchema": {"json": schema}}
    description = function.get("description")
    if isinstance(description, str) and description:
        spec["description"] = description
    return {"toolSpec": spec}
