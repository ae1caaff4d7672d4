"""`models`: which client-facing model names a request may name, and renames between them.

Deny patterns win over allow patterns; a rename applies only to a model that passed both.
Patterns are fnmatch-style and case-sensitive, compiled once when the policy is built.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from extproc.policies.api import ALLOW, Decision, Deny, Modify, Policy, PolicyRequest

_Pattern = Annotated[str, Field(min_length=1, max_length=256)]
_WILDCARDS = frozenset("*?[")


class ModelListOptions(BaseModel):
    """Options of `models`: allow and deny patterns, and exact renames."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[_Pattern] | None = None
    deny: list[_Pattern] = []
    rewrite: dict[_Pattern, _Pattern] = {}

    @model_validator(mode="after")
    def _something_to_do(self) -> ModelListOptions:
        if self.allow is not None and not self.allow:
            raise ValueError("allow must list at least one pattern (omit it to allow every model)")
        if not (self.allow or self.deny or self.rewrite):
            raise ValueError("give at least one of allow, deny or rewrite")
        for source, target in self.rewrite.items():
            if source == target:
                raise ValueError(f"rewrite: {source!r} is rewritten to itself")
        return self


class _Matcher:
    """A set of fnmatch patterns: exact names in a set, the rest in one compiled regex."""

    def __init__(self, patterns: list[str]) -> None:
        self._exact = frozenset(p for p in patterns if _WILDCARDS.isdisjoint(p))
        globs = [fnmatch.translate(p) for p in patterns if not _WILDCARDS.isdisjoint(p)]
        self._globs = re.compile("|".join(globs)) if globs else None

    def __call__(self, model: str) -> bool:
        if model in self._exact:
            return True
        return self._globs is not None and self._globs.match(model) is not None


class ModelListPolicy(Policy):
    """Refuse models matching `deny` or, when `allow` is set, not matching it; then `rewrite`."""

    Options = ModelListOptions
    inline: ClassVar[bool] = True

    def __init__(self, options: ModelListOptions) -> None:
        super().__init__(options)
        self._denied = _Matcher(options.deny)
        self._allowed = None if options.allow is None else _Matcher(options.allow)
        self._rewrites = {
            source: Modify(model=target) for source, target in options.rewrite.items()
        }

    def check(self, request: PolicyRequest) -> Decision:
        """Refuse, rename or allow the request's model."""
        model = request.model
        if self._denied(model) or (self._allowed is not None and not self._allowed(model)):
            return Deny(
                message=f"the model {model!r} is not allowed",
                status=403,
                code="model_not_allowed",
            )
        return self._rewrites.get(model, ALLOW)
