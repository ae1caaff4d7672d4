"""The policy API: what a policy sees of a request, what it may decide, what it hears at the end.

A policy is a class with an `Options` pydantic model (checked when the config loads), a
`check(request)` that returns `Allow`, `Deny` or `Modify` (plain or `async def`), and optionally
a `completed(completion)` for audit or accounting. `docs/policies.md` is the guide. Nothing in
here imports the gateway: a policy package depends on this module only.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

CODE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
TAG_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_MESSAGE_CHARS = 1000
MAX_TAG_VALUE_CHARS = 256


class NoOptions(BaseModel):
    """The options of a policy that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """A validated request as a policy sees it at admission.

    `messages` and `params` are the request's own objects, shared with the gateway: read them,
    never change them in place; return `Modify` to change the request. `headers` holds only the
    request headers the policy declared in `Policy.headers` (lower-case names).
    """

    tenant: str
    key_id: str  # "" for the anonymous tenant
    model: str  # the client-facing model name (after earlier policies' rewrites)
    endpoint: str  # "chat" or "embeddings"
    provider: str  # the provider of the model's first target (failover may pick another)
    upstream_model: str  # that target's model name at its provider
    messages: list[dict[str, Any]]  # chat messages; [] for embeddings
    params: Mapping[str, Any]  # every other field of the body (temperature, max_tokens, ...)
    max_tokens: int | None  # max_completion_tokens, else max_tokens; None when unset
    stream: bool
    headers: Mapping[str, str]
    tags: Mapping[str, str]  # set by the policies that ran before this one
    request_id: str = ""  # Envoy's x-request-id (also in the access log)


@dataclass(frozen=True, slots=True)
class Allow:
    """Let the request go on unchanged."""


ALLOW = Allow()


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the request: the client gets an OpenAI-style error with this status and code."""

    message: str
    status: int = 403
    code: str = "policy_denied"

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"Deny.status must be 400-599, not {self.status}")
        if not CODE_PATTERN.match(self.code):
            raise ValueError(f"Deny.code must match {CODE_PATTERN.pattern}")


@dataclass(frozen=True, slots=True)
class Modify:
    """Change the request, then let it go on. Every field is optional; unset ones change nothing.

    - `max_tokens`: a cap; the request's own limit becomes the smaller of the two (set if unset).
    - `model`: another configured model the tenant may use, serving the same endpoint.
    - `messages`: the new message list, replacing the request's.
    - `system_prompt`: text put before the request's first system message (one is added first
      when there is none).
    - `set_headers`: headers sent to the provider (not credentials, not Envoy's `x-envoy-*`).
    - `tags`: name → value, carried to later policies, the access log and tagged metrics.
    """

    max_tokens: int | None = None
    model: str | None = None
    messages: list[dict[str, Any]] | None = None
    system_prompt: str | None = None
    set_headers: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


Decision = Allow | Deny | Modify


@dataclass(frozen=True, slots=True)
class Completion:
    """How a request ended, for `Policy.completed` (after the client got its answer).

    `answer` is the text of a buffered chat answer's first choice, only for policies whose
    `wants_answer` is true (the gateway reads the answer for them); None otherwise and for streams.
    """

    tenant: str
    key_id: str
    model: str
    provider: str  # "" when no provider answered (refused, or a cache hit)
    status: int  # what the client got (499: it left first)
    code: str  # the gateway's error code, "" for a success
    stream: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    cost: float
    cache_hit: bool
    duration_seconds: float
    tags: Mapping[str, str]
    answer: str | None = None
    request_id: str = ""


class Policy:
    """Base class of policies (optional: any class with these members works).

    Read once when the config loads (`headers` and `wants_answer` from the built instance, so
    they may depend on the options):
    - `Options`: the pydantic model of the policy's `options` (forbid unknown keys).
    - `headers`: the request headers `check` may read (lower-case names).
    - `wants_answer`: read buffered answers so `completed` gets their text (costs a body read).
    - `inline`: a plain (not async) `check` runs on the event loop — only for checks that take
      microseconds and never block; otherwise it runs in a worker thread under its deadline.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    inline: ClassVar[bool] = False
    headers: frozenset[str] = frozenset()
    wants_answer: bool = False

    def __init__(self, options: Any) -> None:
        self.options = options

    def check(self, request: PolicyRequest) -> Decision | Awaitable[Decision]:
        """Decide on a request at admission (may be `async def`)."""
        return ALLOW

    def completed(self, completion: Completion) -> Awaitable[None] | None:
        """Hear how a request ended (may be `async def`); errors are logged and counted."""
        return None
