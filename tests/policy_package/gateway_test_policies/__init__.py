"""Policies of a third-party package, written only against `extproc.policies.api`.

`WordFilter` (async) refuses requests mentioning a word and appends every completion to an
audit file; `Misbehave` raises, overruns its deadline or answers nonsense, as told.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from extproc.policies.api import ALLOW, Completion, Decision, Deny, Modify, Policy, PolicyRequest


class WordFilterOptions(BaseModel):
    """Options of `WordFilter`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    word: str = Field(min_length=2)
    audit_file: Path | None = None
    tag: str = "filtered"


class WordFilter(Policy):
    """Deny requests whose messages mention `word`; tag the others; audit every completion."""

    Options = WordFilterOptions

    def __init__(self, options: WordFilterOptions) -> None:
        super().__init__(options)
        self.word = options.word.lower()
        self.audit = options.audit_file
        self.wants_answer = options.audit_file is not None

    async def check(self, request: PolicyRequest) -> Decision:
        """Deny a mention of the word, else tag the request."""
        await asyncio.sleep(0)  # a real policy would await a service here
        for message in request.messages:
            content = message.get("content")
            if isinstance(content, str) and self.word in content.lower():
                return Deny("this request mentions a filtered word", 403, "word_filtered")
        return Modify(tags={self.options.tag: "yes"})

    async def completed(self, completion: Completion) -> None:
        """Append the completion to the audit file, one JSON line."""
        if self.audit is None:
            return
        line = {
            "tenant": completion.tenant,
            "model": completion.model,
            "status": completion.status,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "cache_hit": completion.cache_hit,
            "answer": completion.answer,
            "tags": dict(completion.tags),
        }
        with self.audit.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")


class MisbehaveOptions(BaseModel):
    """Options of `Misbehave`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["raise", "sleep", "nonsense", "bad_header"]
    seconds: float = 1.0


class Misbehave(Policy):
    """A policy that fails the way `mode` says (a plain check runs in a worker thread)."""

    Options = MisbehaveOptions

    def check(self, request: PolicyRequest) -> Decision:
        """Fail as configured."""
        mode = self.options.mode
        if mode == "raise":
            raise RuntimeError("this policy always fails")
        if mode == "sleep":
            time.sleep(self.options.seconds)
            return ALLOW
        if mode == "nonsense":
            return "yes"  # type: ignore[return-value]
        if mode == "bad_header":
            return Modify(set_headers={"authorization": "Bearer stolen"})
        raise AssertionError(mode)


class SlowAsyncOptions(BaseModel):
    """Options of `SlowAsync`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seconds: float = 1.0


class SlowAsync(Policy):
    """An async policy that takes `seconds` to allow a request."""

    Options = SlowAsyncOptions

    async def check(self, request: PolicyRequest) -> Decision:
        """Allow, after a while."""
        await asyncio.sleep(self.options.seconds)
        return ALLOW
