"""The validated OpenAI request: the one view of a request that everything after validation reads.

`validation.validate` builds it once per request (and once per upstream attempt); the pipeline,
the attempt and the provider adapters read its fields instead of re-deriving them from the body.
Plain frozen values, no behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple


class Endpoint(StrEnum):
    """The OpenAI endpoints that reach a provider."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"


class ToolChoiceMode(StrEnum):
    """OpenAI's `tool_choice`: a mode, or one named function."""

    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    FUNCTION = "function"


@dataclass(frozen=True, slots=True)
class Tool:
    """One entry of `tools`. Function tools carry a checked name; other types only their type."""

    type: str
    name: str = ""
    description: str | None = None
    parameters: dict[str, Any] | None = None

    @property
    def is_function(self) -> bool:
        """True for `{"type": "function", ...}` tools, the only kind every provider knows."""
        return self.type == "function"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A checked `tool_choice`; `name` is set for `ToolChoiceMode.FUNCTION`."""

    mode: ToolChoiceMode
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call of an assistant message in the history, arguments decoded."""

    id: str
    name: str
    arguments: dict[str, Any]


NO_TOOL_CALLS: Mapping[int, tuple[ToolCall, ...]] = MappingProxyType({})


class ValidatedRequest(NamedTuple):
    """A request that passed every rule, with the fields the gateway acts on already checked.

    `body` is the parsed JSON in OpenAI's shape (the `timeout` field removed); adapters may
    rewrite it for their provider. `body_changed` says it no longer equals the bytes received.
    An immutable tuple: built on every request, it costs a quarter of a frozen dataclass.
    """

    endpoint: Endpoint
    model: str
    body: dict[str, Any]
    body_changed: bool = False
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    timeout: float | None = None  # the body's `timeout` field, seconds
    max_tokens: int | None = None  # max_completion_tokens, else max_tokens
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    # The decoded function calls of each assistant message, by the message's index.
    tool_calls: Mapping[int, tuple[ToolCall, ...]] = NO_TOOL_CALLS

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages (checked objects with a valid role); empty for embeddings."""
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []
