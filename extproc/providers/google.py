"""Google Gemini API (Generative Language API, `x-goog-api-key`; not Vertex AI).

Owns the OpenAI → Gemini request translation (chat → `generateContent` /
`streamGenerateContent?alt=sse`, embeddings → `embedContent` / `batchEmbedContents`) and the
buffered answer and error translation back. Streams are translated in `google_stream.py`.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from extproc.config.credentials import Credential
from extproc.config.schema import ProviderConfig
from extproc.errors import GatewayError, bad_request
from extproc.providers.base import (
    JSON_CONTENT_TYPE,
    Endpoint,
    RequestContext,
    TranslatingAdapter,
    UpstreamRequest,
    api_key,
    append_turn,
    serialize,
    split_call_id,
    tool_arguments,
)
from extproc.providers.errors import malformed_response, parse_json_error
from extproc.providers.google_stream import (
    PROVIDER_TYPE,
    GeminiStreamTranslator,
    MalformedGeminiError,
    error_payload,
    gemini_error,
    openai_finish_reason,
    payload_error,
    prompt_blocked,
    read_candidate,
    read_usage,
)
from extproc.providers.openai_format import chat_completion, embeddings_list, tool_call

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
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
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


def unsupported(provider: str, feature: str, param: str | None = None) -> GatewayError:
    """The 400 for a request feature the Gemini API cannot honour."""
    return GatewayError(
        400,
        "unsupported_parameter",
        f"provider '{provider}' (type '{PROVIDER_TYPE}') does not support {feature}",
        param,
    )


def model_path(upstream_model: str) -> str:
    """The `models/{model}` path segment (a leading `models/` in the name is accepted)."""
    return "models/" + quote(upstream_model.removeprefix("models/"), safe="")


# -- chat requests ---------------------------------------------------------------------------


def chat_request(body: dict[str, Any], stream: bool, provider: str) -> dict[str, Any]:
    """Translate a validated OpenAI chat body into a Gemini GenerateContentRequest."""
    for name, feature in _UNSUPPORTED_FIELDS.items():
        if body.get(name):
            raise unsupported(provider, feature, name)
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported(provider, "output modalities other than text", "modalities")

    system, contents = _contents(body["messages"], provider)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(body, stream, provider)
    if config:
        out["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        out["tools"] = [{"functionDeclarations": _function_declarations(tools, provider)}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config is not None:
            out["toolConfig"] = tool_config
    return out


def _contents(
    messages: list[dict[str, Any]], provider: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents): roles user/model, same-role turns merged."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id → function name, for tool results

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        append_turn(contents, role, parts, "parts")

    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), where, provider))
        elif role == "user":
            add("user", _user_parts(message["content"], where, provider))
        elif role == "assistant":
            add("model", _assistant_parts(message, where, call_names, provider))
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


def _text_parts(content: Any, where: str, provider: str) -> list[dict[str, Any]]:
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


def _user_parts(content: Any, where: str, provider: str) -> list[dict[str, Any]]:
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


def _audio_part(audio: Any, where: str, provider: str) -> dict[str, Any]:
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise bad_request("invalid_message", f"{where}.input_audio.data is required", where)
    mime = _AUDIO_TYPES.get(str(audio.get("format")))
    if mime is None:
        raise unsupported(provider, f"input_audio format {audio.get('format')!r}", where)
    return {"inlineData": {"mimeType": mime, "data": audio["data"]}}


def _file_part(file: Any, where: str, provider: str) -> dict[str, Any]:
    if not isinstance(file, dict):
        raise bad_request("invalid_message", f"{where}.file must be an object", where)
    data = file.get("file_data")
    if not isinstance(data, str) or not data.startswith("data:"):
        # file_id refers to OpenAI's file store; raw base64 carries no media type.
        raise unsupported(provider, "file parts other than base64 data URLs", where)
    return {"inlineData": _data_url(data, where)}


def _assistant_parts(
    message: dict[str, Any], where: str, call_names: dict[str, str], provider: str
) -> list[dict[str, Any]]:
    parts = _text_parts(message.get("content"), where, provider)
    calls = message.get("tool_calls") or []
    legacy = message.get("function_call")
    if legacy:
        calls = [*calls, {"id": None, "type": "function", "function": legacy}]
    for index, call in enumerate(calls):
        call_where = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(
                "invalid_message", f"{call_where}.function.name is required", call_where
            )
        name = function["name"]
        args = tool_arguments(function.get("arguments"), call_where)
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        call_id = call.get("id")
        if isinstance(call_id, str):
            call_names[call_id] = name
            signature = split_call_id(call_id)[1]
            if signature is not None:
                part["thoughtSignature"] = signature  # Gemini 3 wants it back
        parts.append(part)
    return parts


def _tool_result(message: dict[str, Any], where: str, call_names: dict[str, str]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise bad_request(
            "invalid_message",
            f"{where}.tool_call_id does not match a tool call of an earlier assistant message",
            f"{where}.tool_call_id",
        )
    return _function_response(name, message.get("content"), where)


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


def _generation_config(body: dict[str, Any], stream: bool, provider: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = int(max_tokens)
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
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise bad_request("invalid_request", "seed must be an integer", "seed")
        config["seed"] = seed
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
    n = body.get("n")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise bad_request("invalid_request", "n must be an integer of at least 1", "n")
        if n > 1 and stream:
            raise unsupported(provider, "n > 1 with stream", "n")
        if n > 1:
            config["candidateCount"] = n
    config.update(_response_format(body.get("response_format"), provider))
    return config


def _response_format(value: Any, provider: str) -> dict[str, Any]:
    """json_object → JSON mime type; json_schema → JSON mime type + `responseJsonSchema`.

    `responseJsonSchema` takes JSON Schema as OpenAI clients write it, unlike the
    OpenAPI-subset `responseSchema`, which rejects e.g. `additionalProperties`.
    """
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            out["responseJsonSchema"] = schema
        return out
    raise unsupported(provider, f"response_format type {kind!r}", "response_format")


def _function_declarations(tools: Any, provider: str) -> list[dict[str, Any]]:
    """OpenAI function tools → Gemini functionDeclarations.

    Parameters go in `parametersJsonSchema` (full JSON Schema, as OpenAI clients write it:
    `additionalProperties`, `$ref`, empty objects) rather than the OpenAPI-subset `parameters`.
    """
    if not isinstance(tools, list):
        raise bad_request("invalid_request", "tools must be an array", "tools")
    declarations: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise unsupported(provider, f"tools of type {kind!r}", where)
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request("invalid_request", f"{where}.function.name is required", where)
        declaration: dict[str, Any] = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        if isinstance(function.get("parameters"), dict):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return declarations


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        mode = _TOOL_MODES.get(choice)
        if mode is None:
            raise bad_request("invalid_request", f"unknown tool_choice {choice!r}", "tool_choice")
        return {"functionCallingConfig": {"mode": mode}}
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(
            "invalid_request", "tool_choice must be a mode or name a function", "tool_choice"
        )
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [function["name"]]}}


# -- embeddings requests ---------------------------------------------------------------------


@dataclass(slots=True)
class EmbeddingsCall:
    """A translated embeddings request: the method, its body and how to answer."""

    method: str  # "embedContent" or "batchEmbedContents"
    body: dict[str, Any]
    count: int  # how many vectors the answer must hold
    base64: bool  # encode the vectors as base64 float32 (the openai SDK's default)


def embeddings_request(body: dict[str, Any], upstream_model: str, provider: str) -> EmbeddingsCall:
    """Translate a validated OpenAI embeddings body (text inputs only)."""
    value = body["input"]
    texts = [value] if isinstance(value, str) else value
    if not all(isinstance(text, str) for text in texts):
        raise unsupported(provider, "token-array embedding inputs", "input")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise bad_request("invalid_input", "dimensions must be a positive integer", "dimensions")
    encode = body.get("encoding_format") == "base64"

    def item(text: str) -> dict[str, Any]:
        request: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            request["outputDimensionality"] = dimensions
        return request

    if len(texts) == 1:
        return EmbeddingsCall("embedContent", item(texts[0]), 1, encode)
    model = model_path(upstream_model)
    requests = [{"model": model, **item(text)} for text in texts]
    return EmbeddingsCall("batchEmbedContents", {"requests": requests}, len(texts), encode)


def _vector(value: Any) -> list[float]:
    values = value.get("values") if isinstance(value, dict) else None
    if not isinstance(values, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in values
    ):
        raise MalformedGeminiError("an embedding without numeric values")
    return values


def _base64_float32(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: what OpenAI's `encoding_format=base64` returns."""
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except (struct.error, OverflowError):
        raise MalformedGeminiError("embedding values outside the float32 range") from None
    return base64.b64encode(packed).decode("ascii")


# -- the adapter -----------------------------------------------------------------------------


class GoogleGeminiAdapter(TranslatingAdapter):
    """Adapter for the Gemini API: `base_url` is e.g. `https://…googleapis.com/v1beta`."""

    def __init__(self, provider: ProviderConfig, credential: Credential | None) -> None:
        super().__init__(provider, credential)
        self._embeddings: EmbeddingsCall | None = None
        self._stream: GeminiStreamTranslator | None = None
        self._pending = b""

    def request(
        self, context: RequestContext, body: dict[str, Any], body_changed: bool
    ) -> UpstreamRequest:
        """Build the Gemini call: translated body, `models/{m}:method` path, API key header."""
        self.context = context
        provider = self.provider.name
        if context.endpoint is Endpoint.CHAT:
            translated = chat_request(body, context.stream, provider)
            method = ":streamGenerateContent?alt=sse" if context.stream else ":generateContent"
            if context.stream:
                self._stream = GeminiStreamTranslator(
                    context.client_model, context.include_usage, provider, self.usage
                )
        else:
            self._embeddings = embeddings_request(body, context.upstream_model, provider)
            translated = self._embeddings.body
            method = ":" + self._embeddings.method
        path = f"{self.provider.base_path}/{model_path(context.upstream_model)}{method}"
        return UpstreamRequest(
            path=path,
            set_headers={**self.credential_headers(), "content-type": JSON_CONTENT_TYPE},
            # The answer is translated, so it must arrive uncompressed.
            remove_headers=["authorization", "accept-encoding"],
            body=serialize(translated),
        )

    def credential_headers(self) -> dict[str, str]:
        """Gemini's `x-goog-api-key` header."""
        return {"x-goog-api-key": api_key(self.credential)} if self.credential is not None else {}

    @property
    def streaming(self) -> bool:
        """True when this request asked the provider for a stream."""
        return self._stream is not None

    def response_body(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """Translate a stream chunk, or the whole (buffered) answer into OpenAI JSON."""
        if self._stream is not None:
            return self._stream.feed(chunk, end_of_stream)
        if not end_of_stream:  # buffered answers normally arrive whole; be safe anyway
            self._pending += chunk
            return b""
        body, self._pending = self._pending + chunk, b""
        provider = self.provider.name
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            what = "an empty body" if not body.strip() else "a body that is not JSON"
            raise malformed_response(provider, what) from None
        error = error_payload(data)
        if error is not None:
            raise payload_error(error, provider)
        if not isinstance(data, dict):
            raise malformed_response(provider, "a body that is not a JSON object")
        try:
            if self._embeddings is not None:
                out = self._embeddings_answer(data, self._embeddings)
            else:
                out = self._chat_answer(data)
        except MalformedGeminiError as exc:
            raise malformed_response(provider, str(exc)) from None
        return serialize(out)

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map a Google error body (`{"error": {code, message, status, details}}`)."""
        message, error = parse_json_error(body)
        return gemini_error(status, headers, message, error, self.provider.name)

    def _model(self) -> str:
        assert self.context is not None, "request() runs before any response"
        return self.context.client_model

    def _chat_answer(self, data: dict[str, Any]) -> dict[str, Any]:
        read_usage(data, self.usage)
        candidates = data.get("candidates")
        if candidates is not None and not isinstance(candidates, list):
            raise MalformedGeminiError("candidates that are not a list")
        if not candidates:
            if prompt_blocked(data):
                return chat_completion(self._model(), "", "content_filter", self.usage)
            raise MalformedGeminiError("a response without candidates")
        choices: list[dict[str, Any]] = []
        completion: dict[str, Any] = {}
        for index, raw in enumerate(candidates):
            candidate = read_candidate(raw)
            calls = [
                tool_call(call_id, name, orjson.dumps(args).decode())
                for call_id, name, args in candidate.calls
            ]
            content = candidate.text if candidate.text or not calls else None
            reason = openai_finish_reason(candidate.finish_reason, bool(calls))
            completion = chat_completion(self._model(), content, reason, self.usage, calls or None)
            # chat_completion builds one choice; n > 1 answers gather them here.
            choices.append({**completion["choices"][0], "index": index})
        completion["choices"] = choices
        return completion

    def _embeddings_answer(self, data: dict[str, Any], call: EmbeddingsCall) -> dict[str, Any]:
        if call.method == "embedContent":
            vectors = [_vector(data.get("embedding"))]
        else:
            embeddings = data.get("embeddings")
            if not isinstance(embeddings, list):
                raise MalformedGeminiError("a batch answer without embeddings")
            vectors = [_vector(item) for item in embeddings]
        if len(vectors) != call.count:
            raise MalformedGeminiError(f"{len(vectors)} embeddings for {call.count} inputs")
        read_usage(data, self.usage)
        out = embeddings_list(self._model(), vectors, self.usage)
        if call.base64:
            for item in out["data"]:
                item["embedding"] = _base64_float32(item["embedding"])
        return out
