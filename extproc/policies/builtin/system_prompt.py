"""`system_prompt`: the operator's system prompt, put before the client's on every chat request.

Optionally refuses requests that bring their own `system` or `developer` messages, so the
operator's prompt is the only one. Embeddings have no prompt and pass through.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from extproc.policies.api import ALLOW, Decision, Deny, Modify, Policy, PolicyRequest

_CLIENT_SYSTEM_ROLES = frozenset({"system", "developer"})


class SystemPromptOptions(BaseModel):
    """Options of `system_prompt`: the text, and whether clients may send system messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: Annotated[str, Field(min_length=1, max_length=100_000)]
    forbid_client_system: bool = False

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text must not be blank")
        return value


class SystemPromptPolicy(Policy):
    """Add the configured system prompt; with `forbid_client_system`, refuse the client's own."""

    Options = SystemPromptOptions
    inline: ClassVar[bool] = True

    def __init__(self, options: SystemPromptOptions) -> None:
        super().__init__(options)
        self._forbid = options.forbid_client_system
        self._add = Modify(system_prompt=options.text)
        self._refused = Deny(
            message="system and developer messages are not allowed on this gateway",
            status=400,
            code="system_prompt_not_allowed",
        )

    def check(self, request: PolicyRequest) -> Decision:
        """Add the system prompt to a chat request, or refuse one with its own."""
        if request.endpoint == "embeddings":
            return ALLOW
        if self._forbid and any(
            message.get("role") in _CLIENT_SYSTEM_ROLES for message in request.messages
        ):
            return self._refused
        return self._add
