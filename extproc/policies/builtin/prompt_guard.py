"""`prompt_guard`: redacts email addresses, card numbers, phone numbers and custom patterns in the
text of chat messages, or refuses the request.

The finding is `_pii`'s; this module owns the options, which finding wins an overlap, and the
copies of the messages it changes (the request's own objects are never changed). A refusal
names the kind found, never the text.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from extproc.policies.api import ALLOW, Decision, Deny, Modify, Policy, PolicyRequest
from extproc.policies.builtin import _pii
from extproc.policies.builtin._common import compile_regex

Action = Literal["off", "redact", "block"]
BUILTIN_KINDS = ("email", "card", "phone")  # also the order they win overlaps in


class CustomPattern(BaseModel):
    """An operator's pattern: its name (the kind in replacements and refusals), regex, action."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    regex: Annotated[re.Pattern[str], BeforeValidator(compile_regex)]
    action: Literal["redact", "block"] = "redact"

    @field_validator("regex")
    @classmethod
    def _not_empty(cls, value: re.Pattern[str]) -> re.Pattern[str]:
        if value.fullmatch("") is not None:
            raise ValueError("the regex matches the empty string")
        return value


class PromptGuardOptions(BaseModel):
    """Options of `prompt_guard`: an action per built-in kind, custom patterns, the replacement."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: Action = "redact"
    card: Action = "redact"
    phone: Action = "off"
    patterns: list[CustomPattern] = []
    replacement: Annotated[str, Field(max_length=200)] = "[{kind} redacted]"

    @field_validator("replacement")
    @classmethod
    def _only_kind(cls, value: str) -> str:
        try:
            fields = list(string.Formatter().parse(value))
        except ValueError as error:
            raise ValueError(f"replacement is not a valid template: {error}") from None
        for _, name, spec, conversion in fields:
            if name is not None and (name != "kind" or spec or conversion):
                raise ValueError("replacement may contain only the placeholder {kind}")
        return value

    @model_validator(mode="after")
    def _something_to_find(self) -> PromptGuardOptions:
        names = [pattern.name for pattern in self.patterns]
        for name in names:
            if name in BUILTIN_KINDS:
                raise ValueError(f"patterns: {name!r} is a built-in kind; use the `{name}` option")
            if names.count(name) > 1:
                raise ValueError(f"patterns: {name!r} is listed twice")
        if not self.patterns and all(getattr(self, kind) == "off" for kind in BUILTIN_KINDS):
            raise ValueError("every kind is off and there are no patterns: nothing to look for")
        return self


class _Text:
    """One text being scanned, with what the finders share about it (computed once, if at all)."""

    __slots__ = ("_view", "budget", "digits", "text")

    def __init__(self, text: str, budget: _pii.Budget) -> None:
        self.text = text
        self.budget = budget
        self.digits = _pii.has_digit(text)
        self._view: _pii.DigitView | None = None

    @property
    def view(self) -> _pii.DigitView:
        """The digit view of the text (built on first use)."""
        if self._view is None:
            self._view = _pii.DigitView(self.text)
        return self._view


_Finder = Callable[[_Text], _pii.Spans]


def _emails(scan: _Text) -> _pii.Spans:
    return _pii.emails(scan.text, scan.budget)


def _cards(scan: _Text) -> _pii.Spans:
    return _pii.cards(scan.text, scan.view, scan.budget) if scan.digits else []


def _phones(scan: _Text) -> _pii.Spans:
    return _pii.phones(scan.view, scan.budget) if scan.digits else []


def _custom(regex: re.Pattern[str]) -> _Finder:
    def find(scan: _Text) -> _pii.Spans:
        return _pii.matches(regex, scan.text, scan.budget)

    return find


class _Detector:
    """One kind: how to find it, and what becomes of it (a replacement, or a refusal)."""

    __slots__ = ("block", "find", "refusal", "replacement")

    def __init__(self, kind: str, find: _Finder, action: Action, template: str) -> None:
        self.find = find
        self.block = action == "block"
        # None for "off": cards are still found so that a card number is never a phone number.
        self.replacement = None if action == "off" else template.format(kind=kind)
        self.refusal = Deny(
            message=f"the prompt contains {kind} (blocked by policy)",
            status=400,
            code="prompt_blocked",
        )


def _add_unless_overlapping(kept: list[tuple[int, int, int]], spans: _pii.Spans, rank: int) -> None:
    """Merge into `kept` (sorted spans with a detector's rank) the `spans` that overlap none of it.

    Linear in both lists: quadratic overlap tests would be a way to stall the event loop.
    """
    if not spans:
        return
    merged: list[tuple[int, int, int]] = []
    index = 0
    for start, end in spans:
        while index < len(kept) and kept[index][1] <= start:
            merged.append(kept[index])
            index += 1
        if index < len(kept) and kept[index][0] < end:
            continue  # an earlier detector found this text first, and wins
        merged.append((start, end, rank))
    merged.extend(kept[index:])
    kept[:] = merged


class PromptGuard(Policy):
    """Redact, or refuse requests with, emails, card numbers, phones and custom patterns."""

    Options = PromptGuardOptions
    inline: ClassVar[bool] = True

    def __init__(self, options: PromptGuardOptions) -> None:
        super().__init__(options)
        template = options.replacement
        detectors: list[_Detector] = []
        if options.email != "off":
            detectors.append(_Detector("email", _emails, options.email, template))
        if options.card != "off" or options.phone != "off":
            detectors.append(_Detector("card", _cards, options.card, template))
        if options.phone != "off":
            detectors.append(_Detector("phone", _phones, options.phone, template))
        for pattern in options.patterns:
            detectors.append(
                _Detector(pattern.name, _custom(pattern.regex), pattern.action, template)
            )
        self._detectors = tuple(detectors)
        self._too_many = Deny(
            message=f"the prompt contains more than {_pii.MAX_FINDINGS} items to redact "
            "(blocked by policy)",
            status=400,
            code="prompt_blocked",
        )

    def check(self, request: PolicyRequest) -> Decision:
        """Refuse on a blocked kind; else redact what was found, in copies of the messages."""
        messages = request.messages
        changed: list[dict[str, Any]] | None = None
        budget = _pii.Budget()
        for index, message in enumerate(messages):
            new = self._message(message, budget)
            if new is None:
                continue
            if isinstance(new, Deny):
                return new
            if changed is None:
                changed = list(messages)
            changed[index] = new
        if changed is None:
            return ALLOW
        return Modify(messages=changed, tags={"prompt_guard": "redacted"})

    def _message(
        self, message: dict[str, Any], budget: _pii.Budget
    ) -> dict[str, Any] | Deny | None:
        """A redacted copy of `message`, a refusal, or None when nothing in it changes."""
        content = message.get("content")
        if isinstance(content, str):
            text = self._text(content, budget)
            if text is None or isinstance(text, Deny):
                return text
            return {**message, "content": text}
        if not isinstance(content, list):
            return None
        parts: list[Any] | None = None
        for index, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                continue  # images, audio, files: not text, left as they are
            value = part.get("text")
            if not isinstance(value, str):
                continue
            text = self._text(value, budget)
            if text is None:
                continue
            if isinstance(text, Deny):
                return text
            if parts is None:
                parts = list(content)
            parts[index] = {**part, "text": text}
        return None if parts is None else {**message, "content": parts}

    def _text(self, text: str, budget: _pii.Budget) -> str | Deny | None:
        """`text` redacted, the refusal of a blocked kind in it, or None when nothing is found."""
        scan = _Text(text, budget)
        kept: list[tuple[int, int, int]] = []
        detectors = self._detectors
        for rank, detector in enumerate(detectors):
            _add_unless_overlapping(kept, detector.find(scan), rank)
            if budget.findings < 0:
                return self._too_many
        for _, _, rank in kept:
            if detectors[rank].block:
                return detectors[rank].refusal
        pieces = []
        position = 0
        for start, end, rank in kept:
            replacement = detectors[rank].replacement
            if replacement is not None:
                pieces.append(text[position:start])
                pieces.append(replacement)
                position = end
        if not pieces:
            return None
        pieces.append(text[position:])
        return "".join(pieces)
