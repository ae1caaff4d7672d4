"""`max_tokens`: a ceiling on how many tokens a chat answer may have.

Caps the request's own limit (or sets one when the client gave none), or refuses requests that
ask for more. Embeddings have no answer to cap and pass through.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from extproc.policies.api import ALLOW, Decision, Deny, Modify, Policy, PolicyRequest


class MaxTokensOptions(BaseModel):
    """Options of `max_tokens`: the cap, and whether a larger request is capped or refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cap: Annotated[int, Field(ge=1, le=10_000_000)]
    on_exceed: Literal["cap", "deny"] = "cap"


class MaxTokensPolicy(Policy):
    """Cap `max_tokens` of chat requests; with `on_exceed: deny`, refuse a larger one instead."""

    Options = MaxTokensOptions
    inline: ClassVar[bool] = True

    def __init__(self, options: MaxTokensOptions) -> None:
        super().__init__(options)
        self._cap = options.cap
        self._deny = options.on_exceed == "deny"
        self._capped = Modify(max_tokens=options.cap)
        self._refused = Deny(
            message=f"max_tokens must be at most {options.cap}",
            status=400,
            code="max_tokens_exceeded",
        )

    def check(self, request: PolicyRequest) -> Decision:
        """Allow, cap, or refuse the request's `max_tokens`."""
        if request.endpoint == "embeddings":
            return ALLOW
        if request.max_tokens is None:
            return self._capped
        if request.max_tokens > self._cap:
            return self._refused if self._deny else self._capped
        return ALLOW
