"""OpenAI chat request → Bedrock Converse request body (messages, system, tools, images,
inference settings).

System and developer messages become `system`; tool messages become `toolResult` blocks of a
user turn; consecutive turns of one role merge. `tool_choice: "none"` has no Converse
equivalent: the tools are dropped, unless the conversation already holds tool blocks (Converse
then requires `toolConfig`), in which case they stay and no `toolChoice` is sent. The OpenAI
shape of every field was checked by validation; only what Converse cannot do is refused here
(400 `unsupported_parameter`): n other than 1, user parts other than text and base64 images
(png, jpeg, gif, webp: Converse needs the bytes, not a link), non-text parts elsewhere, legacy
`function_call` and `function` messages, non-function tools.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Final

from extproc.config.schema import ProviderConfig
from extproc.decisions.openai_request import ToolChoiceMode, ValidatedRequest
from extproc.errors import bad_request
from extproc.providers.helpers import append_turn, unsupported
from extproc.providers.tool_ids import plain_call_id

_IMAGE_FORMATS: Final[dict[str, str]] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_HISTORY_TOOL_DESCRIPTION: Final = "Tool used earlier in this conversation."
_TOOL_CHOICES: Final[dict[ToolChoiceMode, dict[str, Any]]] = {
    ToolChoiceMode.AUTO: {"auto": {}},
    ToolChoiceMode.REQUIRED: {"any": {}},
}


def converse_request(request: ValidatedRequest, provider: ProviderConfig) -> dict[str, Any]:
    """The Converse body for a validated OpenAI chat request (400 for what has no mapping)."""
    body = request.body
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported(provider, "n other than 1", "n")
    conversation = _messages(request, provider)
    out: dict[str, Any] = {"messages": conversation.turns}
    if conversation.system:
        out["system"] = conversation.system
    inference = _inference_config(request)
    if inference:
        out["inferenceConfig"] = inference
    top_k = body.get("top_k")
    if top_k is not None:
        out["additionalModelRequestFields"] = {"top_k": int(top_k)}
    tool_config = _tool_config(request, provider, conversation)
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


def _messages(request: ValidatedRequest, provider: ProviderConfig) -> _Conversation:
    out = _Conversation()
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            texts = _texts(message["content"], where, provider)
            out.system.extend({"text": text} for text in texts)
            continue
        if role == "user":
            turn_role, blocks = "user", _user_blocks(message["content"], where, provider)
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(request, index, out, provider)
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(message, where, provider)]
            out.has_tool_blocks = True
        else:
            raise unsupported(
                provider, f"role '{role}' messages; use tools and tool messages", f"{where}.role"
            )
        if blocks:
            append_turn(out.turns, turn_role, blocks)
    out.has_tool_blocks = out.has_tool_blocks or bool(out.tool_names)
    return out


def _texts(content: Any, where: str, provider: ProviderConfig) -> list[str]:
    """Text of a string or an array of text (or refusal) parts; other parts are refused."""
    if isinstance(content, str):
        return [content] if content else []
    texts: list[str] = []
    for index, part in enumerate(content or ()):
        kind = part["type"]
        value = part.get(kind) if kind in ("text", "refusal") else None
        if not isinstance(value, str):
            raise unsupported(
                provider, f"'{kind}' content parts in this message", f"{where}.content[{index}]"
            )
        if value:
            texts.append(value)
    return texts


def _user_blocks(content: Any, where: str, provider: ProviderConfig) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        kind = part["type"]
        if kind == "text":
            blocks.append({"text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part["image_url"]["url"], part_where, provider))
        else:
            raise unsupported(provider, f"'{kind}' content parts", part_where)
    return blocks


def _image_block(url: str, where: str, provider: ProviderConfig) -> dict[str, Any]:
    if not url.startswith("data:"):
        raise unsupported(
            provider,
            "image links: it needs the image bytes, so send a base64 data: URL "
            "(data:image/png;base64,...)",
            f"{where}.image_url.url",
        )
    header, comma, data = url[5:].partition(",")
    mime, *params = header.split(";")
    image_format = _IMAGE_FORMATS.get(mime.strip().lower())
    if not comma or "base64" not in params or image_format is None:
        raise unsupported(
            provider,
            "images other than base64 data: URLs of type png, jpeg, gif or webp",
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
    request: ValidatedRequest, index: int, conversation: _Conversation, provider: ProviderConfig
) -> list[dict[str, Any]]:
    message = request.messages[index]
    where = f"messages[{index}]"
    if message.get("function_call") is not None:
        raise unsupported(
            provider,
            "legacy function calling ('function_call'); use tool_calls",
            f"{where}.function_call",
        )
    content = message.get("content")
    blocks: list[dict[str, Any]] = [
        {"text": text} for text in (_texts(content, where, provider) if content else [])
    ]
    for call in request.tool_calls.get(index, ()):
        blocks.append(
            {
                "toolUse": {
                    "toolUseId": plain_call_id(call.id),
                    "name": call.name,
                    "input": call.arguments,
                }
            }
        )
        conversation.tool_names.append(call.name)
    return blocks


def _tool_result(message: dict[str, Any], where: str, provider: ProviderConfig) -> dict[str, Any]:
    content = [{"text": text} for text in _texts(message["content"], where, provider)]
    return {"toolResult": {"toolUseId": plain_call_id(message["tool_call_id"]), "content": content}}


def _inference_config(request: ValidatedRequest) -> dict[str, Any]:
    body = request.body
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxTokens"] = request.max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    if request.stop:
        config["stopSequences"] = list(request.stop)
    return config


def _tool_config(
    request: ValidatedRequest, provider: ProviderConfig, history: _Conversation
) -> dict[str, Any] | None:
    specs = [_tool_spec(request, index, provider) for index in range(len(request.tools))]
    choice = request.tool_choice
    if choice is not None and choice.mode is ToolChoiceMode.NONE:
        if not history.has_tool_blocks:
            return None
        choice = None  # Converse needs toolConfig once tool blocks exist; it has no "none"
    if not specs and history.has_tool_blocks:
        # OpenAI accepts tool history without `tools`; Converse does not: declare them.
        specs = [
            {
                "toolSpec": {
                    "name": name,
                    "description": _HISTORY_TOOL_DESCRIPTION,
                    "inputSchema": {"json": {"type": "object"}},
                }
            }
            for name in dict.fromkeys(history.tool_names)
        ]
    if not specs:
        return None  # validation allows tool_choice only with tools
    config: dict[str, Any] = {"tools": specs}
    if choice is not None and choice.mode is ToolChoiceMode.FUNCTION:
        config["toolChoice"] = {"tool": {"name": choice.name}}
    elif choice is not None:
        config["toolChoice"] = _TOOL_CHOICES[choice.mode]
    return config


def _tool_spec(request: ValidatedRequest, index: int, provider: ProviderConfig) -> dict[str, Any]:
    tool = request.tools[index]
    if not tool.is_function:
        raise unsupported(provider, f"tools of type '{tool.type}'", f"tools[{index}]")
    schema = (
        tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    )
    spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": schema}}
    if tool.description:
        spec["description"] = tool.description
    return {"toolSpec": spec}
