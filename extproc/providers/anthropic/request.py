"""OpenAI chat request → Anthropic Messages API request (`POST {base_path}/messages`).

Feature decisions (OpenAI request field → Messages API):
- system / developer messages, wherever they appear → top-level `system` (joined by a blank
  line); consecutive same-role turns are merged; `tool` messages → `tool_result` blocks in a
  user turn; assistant `tool_calls` → `tool_use` blocks.
- max_completion_tokens / max_tokens / the model's default_max_tokens → `max_tokens`;
  stop → `stop_sequences`; temperature (0 to 1 only), top_p, top_k; user → metadata.user_id;
  tools / tool_choice / parallel_tool_calls=false → tools / tool_choice /
  disable_parallel_tool_use; image_url (https or base64 data URL) → image blocks; base64 PDF
  `file` parts → document blocks.
- Refused with 400 `unsupported_parameter` (they would change the answer silently): n > 1,
  logprobs / top_logprobs, response_format other than text, audio output, input_audio parts,
  other file parts, non-zero frequency/presence penalties, logit_bias, reasoning_effort,
  web_search_options, legacy functions / function_call / `function` messages, non-function
  tools, temperature above 1.
- Dropped (hints without an Anthropic equivalent): seed, service_tier, store, metadata,
  prediction, a tool's `strict`.
The OpenAI shape of every field was checked by validation; only what Anthropic cannot do is
refused here.
"""

from __future__ import annotations

from typing import Any, Final

from extproc.config.schema import ProviderConfig
from extproc.decisions.openai_request import ToolChoice, ToolChoiceMode, ValidatedRequest
from extproc.errors import bad_request
from extproc.providers.helpers import append_turn, unsupported
from extproc.providers.tool_ids import plain_call_id

_IMAGE_MEDIA_PREFIX: Final = "image/"
_TOOL_CHOICES: Final = {
    ToolChoiceMode.AUTO: "auto",
    ToolChoiceMode.REQUIRED: "any",
    ToolChoiceMode.NONE: "none",
}


class _Translation:
    """One request's translation: the provider (for its errors) and the validated request."""

    __slots__ = ("provider", "request")

    def __init__(self, provider: ProviderConfig, request: ValidatedRequest) -> None:
        self.provider = provider
        self.request = request


def translate_request(
    request: ValidatedRequest,
    provider: ProviderConfig,
    upstream_model: str,
    default_max_tokens: int,
) -> dict[str, Any]:
    """The Messages API body for a validated OpenAI chat completion request."""
    body = request.body
    _check_supported(body, provider)
    system, messages = _translate_messages(_Translation(provider, request))
    out: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": request.max_tokens or default_max_tokens,
    }
    if system:
        out["system"] = system
    out["messages"] = messages
    if request.stop:
        out["stop_sequences"] = list(request.stop)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("top_k") is not None:
        out["top_k"] = int(body["top_k"])
    if request.tools:
        out["tools"] = _translate_tools(request, provider)
        choice = _translate_tool_choice(request.tool_choice)
        if body.get("parallel_tool_calls") is False:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice is not None:
            out["tool_choice"] = choice
    user = body.get("user")
    if user:
        out["metadata"] = {"user_id": user}
    if request.stream:
        out["stream"] = True
    return out


def _check_supported(body: dict[str, Any], provider: ProviderConfig) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported(provider, "n other than 1", "n")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise unsupported(provider, "logprobs", "logprobs")
    response_format = body.get("response_format")
    if response_format is not None and response_format["type"] != "text":
        raise unsupported(provider, "response_format other than text", "response_format")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise unsupported(provider, "audio output", "modalities")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name):
            raise unsupported(provider, name, name)
    if body.get("logit_bias"):
        raise unsupported(provider, "logit_bias", "logit_bias")
    if body.get("reasoning_effort") is not None:
        raise unsupported(provider, "reasoning_effort", "reasoning_effort")
    if body.get("web_search_options") is not None:
        raise unsupported(provider, "web_search_options", "web_search_options")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise unsupported(provider, f"legacy function calling ('{name}'); use tools", name)
    temperature = body.get("temperature")
    if temperature is not None and temperature > 1:
        raise unsupported(provider, "temperature above 1 (its range is 0 to 1)", "temperature")


def _translate_messages(t: _Translation) -> tuple[str, list[dict[str, Any]]]:
    """(system text, Messages API turns) for validated OpenAI messages."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(t.request.messages):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.append(_system_text(message["content"], where))
            continue
        if role == "user":
            blocks = _user_blocks(t, message["content"], where)
        elif role == "assistant":
            blocks = _assistant_blocks(t, message, index, where)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        else:
            raise unsupported(
                t.provider, "legacy function calling ('function' messages); use tools", where
            )
        if not blocks:
            raise bad_request("invalid_message", f"{where} has no content", where)
        append_turn(turns, role, blocks)
    if not turns:
        raise bad_request(
            "invalid_message",
            f"provider '{t.provider.name}' (type 'anthropic') needs a user or assistant message "
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
        if part["type"] != "text":
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
        kind = part["type"]
        text = part.get("text") if kind == "text" else part.get("refusal")
        if kind not in ("text", "refusal") or not isinstance(text, str):
            raise bad_request(
                "invalid_message", f"{where}[{index}]: {allowed} may contain only text", where
            )
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(t: _Translation, content: Any, where: str) -> list[dict[str, Any]]:
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
            blocks.append(_document_block(t, part.get("file"), part_where))
        else:
            raise unsupported(t.provider, f"'{kind}' content parts", part_where)
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


def _document_block(t: _Translation, file: Any, where: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    parsed = _data_url(data) if isinstance(data, str) else None
    if parsed is None or parsed[0] != "application/pdf":
        raise unsupported(t.provider, "file parts other than base64 PDF file_data", where)
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


def _assistant_blocks(
    t: _Translation, message: dict[str, Any], index: int, where: str
) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise unsupported(
            t.provider, "legacy function calling ('function_call'); use tool_calls", where
        )
    blocks = _text_parts(message.get("content"), f"{where}.content", "assistant messages")
    for call in t.request.tool_calls.get(index, ()):
        blocks.append(
            {
                "type": "tool_use",
                "id": plain_call_id(call.id),
                "name": call.name,
                "input": call.arguments,
            }
        )
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    content = message["content"]
    result: Any = content
    if not isinstance(content, str):
        result = _text_parts(content, f"{where}.content", "tool messages")
    return {
        "type": "tool_result",
        "tool_use_id": plain_call_id(message["tool_call_id"]),
        "content": result,
    }


def _translate_tools(request: ValidatedRequest, provider: ProviderConfig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, tool in enumerate(request.tools):
        if not tool.is_function:
            raise unsupported(provider, f"tools of type '{tool.type}'", f"tools[{index}]")
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description:
            entry["description"] = tool.description
        entry["input_schema"] = (
            tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
        )
        out.append(entry)
    return out


def _translate_tool_choice(choice: ToolChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice.mode is ToolChoiceMode.FUNCTION:
        return {"type": "tool", "name": choice.name}
    return {"type": _TOOL_CHOICES[choice.mode]}
