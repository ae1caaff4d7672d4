"""OpenAI request → Gemini request: chat → `generateContent` / `streamGenerateContent?alt=sse`,
embeddings → `embedContent` / `batchEmbedContents`.

The OpenAI shape of every field was checked by validation; only what Gemini cannot do is
refused here (400 `unsupported_parameter`): logprobs / top_logprobs, logit_bias, audio output,
predicted outputs, legacy `functions`, web_search_options, output modalities other than text,
non-function tools, n > 1 with stream, input_audio other than wav/mp3, file parts other than
base64 data URLs, non-text parts in system and assistant messages, token-array embedding inputs.
Mapped: system/developer → systemInstruction; assistant → model turns (tool calls → functionCall
with their thought signature); tool results → functionResponse; sampling, stop, seed, n,
max tokens → generationConfig; json_object / json_schema → responseMimeType /
responseJsonSchema; tools / tool_choice → functionDeclarations / toolConfig.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from extproc.config.schema import ProviderConfig
from extproc.decisions.openai_request import ToolCall, ToolChoice, ToolChoiceMode, ValidatedRequest
from extproc.decisions.validation import decode_arguments
from extproc.errors import bad_request
from extproc.providers.google.response import EmbeddingsCall
from extproc.providers.helpers import append_turn, unsupported
from extproc.providers.tool_ids import split_call_id

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[^;,]*)*);base64,(.*)", re.DOTALL)


_IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "heic": "image/heic",
    "heif": "image/heif",
}


_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}


_TOOL_MODES = {
    ToolChoiceMode.AUTO: "AUTO",
    ToolChoiceMode.NONE: "NONE",
    ToolChoiceMode.REQUIRED: "ANY",
}


# Request fields with no Gemini equivalent that would change the answer's shape or meaning
# if silently dropped (a falsy value asks for nothing and passes).
_UNSUPPORTED_FIELDS = {
    "logprobs": "logprobs",
    "top_logprobs": "top_logprobs",
    "logit_bias": "logit_bias",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "functions": "legacy `functions` (use `tools`)",
    "web_search_options": "web_search_options",
}


def model_path(upstream_model: str) -> str:
    """The `models/{model}` path segment (a leading `models/` in the name is accepted)."""
    return "models/" + quote(upstream_model.removeprefix("models/"), safe="")


def chat_request(request: ValidatedRequest, provider: ProviderConfig) -> dict[str, Any]:
    """Translate a validated OpenAI chat request into a Gemini GenerateContentRequest."""
    body = request.body
    for name, feature in _UNSUPPORTED_FIELDS.items():
        if body.get(name):
            raise unsupported(provider, feature, name)
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported(provider, "output modalities other than text", "modalities")

    system, contents = _contents(request, provider)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(request, provider)
    if config:
        out["generationConfig"] = config
    if request.tools:
        out["tools"] = [{"functionDeclarations": _function_declarations(request, provider)}]
        if request.tool_choice is not None:
            out["toolConfig"] = _tool_config(request.tool_choice)
    return out


def _contents(
    request: ValidatedRequest, provider: ProviderConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents): roles user/model, same-role turns merged."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id → function name, for tool results

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        append_turn(contents, role, parts, "parts")

    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), where, provider))
        elif role == "user":
            add("user", _user_parts(message["content"], where, provider))
        elif role == "assistant":
            calls = request.tool_calls.get(index, ())
            add("model", _assistant_parts(message, calls, where, call_names, provider))
        elif role == "tool":
            add("user", [_tool_result(message, where, call_names)])
        else:  # legacy "function" role: the result of a `function_call`
            name = message.get("name")
            if not isinstance(name, str) or not name:
                raise bad_request("invalid_message", f"{where}.name is required", where)
            add("user", [_function_response(name, message.get("content"), where)])
    if not contents:
        # Gemini needs at least one turn: a system-only conversation becomes the user turn.
        contents, system = [{"role": "user", "parts": system}], []
    return system, contents


def _text_parts(content: Any, where: str, provider: ProviderConfig) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        if part.get("type") in ("text", "refusal"):
            text = part.get("text", part.get("refusal"))
            if isinstance(text, str) and text:
                parts.append({"text": text})
        else:
            raise unsupported(
                provider, f"{part.get('type')} parts in this message", f"{where}.content[{index}]"
            )
    return parts


def _user_parts(content: Any, where: str, provider: ProviderConfig) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        kind = part.get("type")
        if kind == "text":
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image_part(part["image_url"]["url"], part_where))
        elif kind == "input_audio":
            parts.append(_audio_part(part.get("input_audio"), part_where, provider))
        elif kind == "file":
            parts.append(_file_part(part.get("file"), part_where, provider))
        else:
            raise unsupported(provider, f"{kind} parts in user messages", part_where)
    return parts


def _image_part(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        return {"inlineData": _data_url(url, where)}
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad_request(
            "invalid_message", f"{where}.image_url.url must be an http(s) or data: URL", where
        )
    extension = parts.path.rsplit(".", 1)[-1].lower() if "." in parts.path else ""
    mime = _IMAGE_TYPES.get(extension, "image/jpeg")
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _data_url(url: str, where: str) -> dict[str, str]:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise bad_request(
            "invalid_message", f"{where} must be a base64 data URL (data:TYPE;base64,...)", where
        )
    return {"mimeType": match.group(1).lower(), "data": match.group(3)}


def _audio_part(audio: Any, where: str, provider: ProviderConfig) -> dict[str, Any]:
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise bad_request("invalid_message", f"{where}.input_audio.data is required", where)
    mime = _AUDIO_TYPES.get(str(audio.get("format")))
    if mime is None:
        raise unsupported(provider, f"input_audio format {audio.get('format')!r}", where)
    return {"inlineData": {"mimeType": mime, "data": audio["data"]}}


def _file_part(file: Any, where: str, provider: ProviderConfig) -> dict[str, Any]:
    if not isinstance(file, dict):
        raise bad_request("invalid_message", f"{where}.file must be an object", where)
    data = file.get("file_data")
    if not isinstance(data, str) or not data.startswith("data:"):
        # file_id refers to OpenAI's file store; raw base64 carries no media type.
        raise unsupported(provider, "file parts other than base64 data URLs", where)
    return {"inlineData": _data_url(data, where)}


def _assistant_parts(
    message: dict[str, Any],
    calls: tuple[ToolCall, ...],
    where: str,
    call_names: dict[str, str],
    provider: ProviderConfig,
) -> list[dict[str, Any]]:
    parts = _text_parts(message.get("content"), where, provider)
    for call in calls:
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
        call_names[call.id] = call.name
        signature = split_call_id(call.id)[1]
        if signature is not None:
            part["thoughtSignature"] = signature  # Gemini 3 wants it back
        parts.append(part)
    legacy = message.get("function_call")
    if legacy:
        where = f"{where}.function_call"
        name = legacy.get("name") if isinstance(legacy, dict) else None
        if not isinstance(name, str) or not name:
            raise bad_request("invalid_message", f"{where}.name is required", where)
        args = decode_arguments(legacy.get("arguments"), f"{where}.arguments")
        parts.append({"functionCall": {"name": name, "args": args}})
    return parts


def _tool_result(message: dict[str, Any], where: str, call_names: dict[str, str]) -> dict[str, Any]:
    # Validation checked that the id names a tool call of an earlier assistant message.
    return _function_response(call_names[message["tool_call_id"]], message["content"], where)


def _function_response(name: str, content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, list):
        content = "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    if not isinstance(content, str):
        raise bad_request("invalid_message", f"{where}.content must be text", where)
    response: Any = None
    if content.lstrip().startswith("{"):
        try:
            response = orjson.loads(content)
        except orjson.JSONDecodeError:
            response = None
    if not isinstance(response, dict):
        response = {"content": content}
    return {"functionResponse": {"name": name, "response": response}}


def _generation_config(request: ValidatedRequest, provider: ProviderConfig) -> dict[str, Any]:
    body = request.body
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(source) is not None:
            config[target] = body[source]
    if body.get("top_k") is not None:
        config["topK"] = int(body["top_k"])
    if body.get("seed") is not None:
        config["seed"] = int(body["seed"])
    if request.stop:
        config["stopSequences"] = list(request.stop)
    n = body.get("n")
    if n is not None and n > 1:
        if request.stream:
            raise unsupported(provider, "n > 1 with stream", "n")
        config["candidateCount"] = int(n)
    config.update(_response_format(body.get("response_format")))
    return config


def _response_format(value: dict[str, Any] | None) -> dict[str, Any]:
    """json_object → JSON mime type; json_schema → JSON mime type + `responseJsonSchema`
    (validation allows only text, json_object and json_schema).

    `responseJsonSchema` takes JSON Schema as OpenAI clients write it, unlike the
    OpenAPI-subset `responseSchema`, which rejects e.g. `additionalProperties`.
    """
    if value is None or value["type"] == "text":
        return {}
    out: dict[str, Any] = {"responseMimeType": "application/json"}
    spec = value.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if value["type"] == "json_schema" and isinstance(schema, dict):
        out["responseJsonSchema"] = schema
    return out


def _function_declarations(
    request: ValidatedRequest, provider: ProviderConfig
) -> list[dict[str, Any]]:
    """OpenAI function tools → Gemini functionDeclarations.

    Parameters go in `parametersJsonSchema` (full JSON Schema, as OpenAI clients write it:
    `additionalProperties`, `$ref`, empty objects) rather than the OpenAPI-subset `parameters`.
    """
    declarations: list[dict[str, Any]] = []
    for index, tool in enumerate(request.tools):
        if not tool.is_function:
            raise unsupported(provider, f"tools of type {tool.type!r}", f"tools[{index}]")
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            declaration["description"] = tool.description
        if tool.parameters is not None:
            declaration["parametersJsonSchema"] = tool.parameters
        declarations.append(declaration)
    return declarations


def _tool_config(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode is ToolChoiceMode.FUNCTION:
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice.name]}}
    return {"functionCallingConfig": {"mode": _TOOL_MODES[choice.mode]}}


# -- embeddings requests ---------------------------------------------------------------------


def embeddings_request(
    request: ValidatedRequest, upstream_model: str, provider: ProviderConfig
) -> EmbeddingsCall:
    """Translate a validated OpenAI embeddings request (text inputs only)."""
    body = request.body
    value = body["input"]
    texts = [value] if isinstance(value, str) else value
    if not all(isinstance(text, str) for text in texts):
        raise unsupported(provider, "token-array embedding inputs", "input")
    dimensions = body.get("dimensions")
    encode = body.get("encoding_format") == "base64"

    def item(text: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            entry["outputDimensionality"] = int(dimensions)
        return entry

    if len(texts) == 1:
        return EmbeddingsCall("embedContent", item(texts[0]), 1, encode)
    model = model_path(upstream_model)
    requests = [{"model": model, **item(text)} for text in texts]
    return EmbeddingsCall("batchEmbedContents", {"requests": requests}, len(texts), encode)
