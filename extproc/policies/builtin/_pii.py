"""Finding email addresses, payment card numbers and phone numbers in text, for `prompt_guard`.

Each finder returns the (start, end) spans of what it found, sorted and not overlapping. All of
them run in time linear in the text, whatever the text: they run on the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import AnyStr

Spans = list[tuple[int, int]]

_DIGITS = "0123456789"

# --- email -------------------------------------------------------------------------------------
# Searched from the '@' (a literal, which the regex engine finds fast): a search that began with
# the local part would restart at every character of a long run that has no '@' after it, which
# is quadratic. A label cannot hold '.' or '@', so each repetition ends at one known character.
_EMAIL_DOMAIN = re.compile(r"@(?:[A-Za-z0-9-]{1,63}\.){1,126}[A-Za-z]{2,63}(?![A-Za-z0-9-])")
_EMAIL_LOCAL_MAX = 64  # RFC 5321; a longer run before the '@' is cut to its last 64 characters
# Read backwards from the '@'; dots only between other characters, as in an unquoted local part.
_EMAIL_LOCAL_REVERSED = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*")

# --- digits ------------------------------------------------------------------------------------
# Card and phone patterns run on the text's UTF-8 bytes with every ASCII digit turned into b"0":
# a pattern that starts with a literal is found by a fast scan, where one that starts with a class
# ([0-9]) costs the engine a class test per character, over ten times slower. Matches are ASCII,
# so their byte offsets are character boundaries (`DigitView.chars` maps them back).
_DIGITS_AS_ZERO = bytes.maketrans(_DIGITS.encode(), b"0" * 10)

# A run of at least 13 digits with single spaces or dashes between them; possessive, so nothing
# backtracks, and a start inside a run fails at once.
_CARD_RUN = re.compile(rb"0(?<!00)(?<!0[ -]0)(?:[ -]?0){12,}+")
_CARD_MIN, _CARD_MAX = 13, 19
# A run that is not one card may hold one among other numbers ("4111 1111 1111 1111 12/28").
# Every card grouping starts with four digits (4-4-4-4, 4-6-5) or is one block of 13-19, and has
# no group shorter than three: that keeps the candidates few, and '1 1 1 …' has none. These run
# on a run's digit view too.
_CARD_START = re.compile(rb"0(?<!00)(?:000|0{12,18})(?!0)")
_CARD_NEXT_GROUP = re.compile(rb"[ -](0{3,16})(?!0)")
# Candidates inside such runs that turn out not to be cards, per request: far more than a prompt
# a person wrote has; few enough that a crafted megabyte of digit groups costs milliseconds.
# Past it, runs are still checked whole, but not searched inside.
CARD_SEARCH_BUDGET = 512
# Findings per request. Each costs microseconds of Python; a body of nothing but addresses or
# card numbers would hold the event loop for seconds. A prompt with more is refused.
MAX_FINDINGS = 10_000
_LUHN_PLAIN = {digit: int(digit) for digit in _DIGITS}
_LUHN_DOUBLED = {digit: sum(divmod(2 * int(digit), 10)) for digit in _DIGITS}

# Phones, each form found from a literal. International: '+', a country code, an optional
# "(area)", then digits with single separators; 8 to 16 digits in all (E.164 has at most 15, a
# trunk "(0)" adds one), counted after the match. North American: (415) 555-0100, and
# 415-555-0100 or 415.555.0100 (one separator throughout), maybe after a country code
# (1-800-555-0100). The lookarounds refuse a match inside a longer number, so dates, versions,
# IP addresses and card numbers, whose shapes differ, are not phones. Every quantifier is
# bounded, so the work per candidate is too.
_PHONE_MIN, _PHONE_MAX = 8, 16
_PHONE_FORMS = (
    (
        b"+",
        re.compile(rb"\+(?<![0A-Za-z+]\+)0{1,3}(?:[ .-]?\(0{1,4}\))?(?:[ .-]?0){6,13}(?![ .-]?0)"),
    ),
    (b"(", re.compile(rb"\((?<![0A-Za-z+]\()000\) ?000[ .-]0000(?![ .-]?0)")),
    (
        b"0",
        re.compile(
            rb"0(?<![0A-Za-z+]0)(?<!0[.-]0)(?:-000-000-|\.000\.000\.|00-000-|00\.000\.)0000(?![.-]?0)"
        ),
    ),
)


class Budget:
    """What is left of a request's allowances: searches inside digit runs, and findings."""

    __slots__ = ("findings", "searches")

    def __init__(self, searches: int = CARD_SEARCH_BUDGET, findings: int = MAX_FINDINGS) -> None:
        self.searches = searches
        self.findings = findings  # below zero: too many, the finders have stopped


class DigitView:
    """A text's bytes with its digits as b"0", for the card and phone patterns."""

    __slots__ = ("_ascii", "digits", "shape")

    def __init__(self, text: str) -> None:
        # "surrogatepass": a lone surrogate (valid in a JSON string) must not raise.
        raw = text.encode("utf-8", "surrogatepass")
        self._ascii = len(raw) == len(text)
        self.shape = raw.translate(_DIGITS_AS_ZERO)
        self.digits = self.shape.count(b"0")  # too few for a card or a phone: nothing to search

    def chars(self, spans: Spans) -> Spans:
        """Byte spans (sorted, ASCII inside) as character spans of the text."""
        if self._ascii:
            return spans
        out: Spans = []
        byte = char = 0
        for start, end in spans:
            char += len(self.shape[byte:start].decode("utf-8", "surrogatepass"))
            out.append((char, char + end - start))
            char += end - start
            byte = end
        return out


def has_digit(text: str) -> bool:
    """Whether `text` has an ASCII digit (ten fast scans beat one regex class scan)."""
    return any(digit in text for digit in _DIGITS)


def emails(text: str, budget: Budget) -> Spans:
    """The email addresses in `text`."""
    spans: Spans = []
    if "@" not in text:
        return spans
    for match in _EMAIL_DOMAIN.finditer(text):
        at = match.start()
        window = text[max(0, at - _EMAIL_LOCAL_MAX) : at][::-1]
        local = _EMAIL_LOCAL_REVERSED.match(window)
        if local is None:
            continue
        start = at - local.end()
        if spans and start < spans[-1][1]:  # "a@b.com.c@d.com": "b.com.c" is not "c"'s
            start = spans[-1][1]
            while text[start] == ".":
                start += 1
        if start < at:
            spans.append((start, match.end()))
            budget.findings -= 1
            if budget.findings < 0:
                break
    return spans


def luhn_ok(digits: str) -> bool:
    """Whether ASCII `digits` pass the Luhn check, which every payment card number passes."""
    plain = sum(map(_LUHN_PLAIN.__getitem__, digits[-1::-2]))
    doubled = sum(map(_LUHN_DOUBLED.__getitem__, digits[-2::-2]))
    return (plain + doubled) % 10 == 0


def cards(text: str, view: DigitView, budget: Budget) -> Spans:
    """The payment card numbers (13-19 digits that pass Luhn) in `text`."""
    spans: Spans = []
    if view.digits < _CARD_MIN:
        return spans
    shape = view.shape
    runs = [match.span() for match in _CARD_RUN.finditer(shape)]
    for (byte, _), (start, end) in zip(runs, view.chars(runs), strict=True):
        if budget.findings < 0:
            break
        run = text[start:end]
        digits = run.replace(" ", "").replace("-", "")
        if len(digits) <= _CARD_MAX and not _in_decimal(text, start, end) and luhn_ok(digits):
            spans.append((start, end))
            budget.findings -= 1
        elif len(digits) != len(run) and budget.searches > 0:
            # Inside a run every character is ASCII: its byte and character offsets agree.
            run_shape = shape[byte : byte + len(run)]
            spans.extend(_cards_in_run(run, run_shape, start, budget))
    return spans


def _in_decimal(text: str, start: int, end: int) -> bool:
    """Whether the digits at [start, end) are the fraction or integer part of a decimal number."""
    before = start >= 2 and text[start - 1] in ".," and text[start - 2] in _DIGITS
    after = end + 1 < len(text) and text[end] in ".," and text[end + 1] in _DIGITS
    return before or after


def _cards_in_run(run: str, shape: bytes, offset: int, budget: Budget) -> Spans:
    """Card numbers made of whole groups of a run that is not one card as a whole."""
    spans: Spans = []
    resume = 0
    for first in _CARD_START.finditer(shape):
        start, position = first.span()
        if start < resume:
            continue
        digits = run[start:position]
        found = 0
        while True:
            if len(digits) >= _CARD_MIN and luhn_ok(digits):
                found = position  # keep going: the longest valid span wins
            group = _CARD_NEXT_GROUP.match(shape, position)
            if group is None or len(digits) + group.end() - group.start(1) > _CARD_MAX:
                break
            digits += run[group.start(1) : group.end()]
            position = group.end()
        if found:
            spans.append((offset + start, offset + found))
            resume = found
            budget.findings -= 1
            if budget.findings < 0:
                break
            continue
        budget.searches -= 1
        if budget.searches <= 0:
            break
    return spans


def phones(view: DigitView, budget: Budget) -> Spans:
    """The phone numbers in the text of `view` (character spans)."""
    found: Spans = []
    if view.digits < _PHONE_MIN:
        return found
    for literal, form in _PHONE_FORMS:
        if literal in view.shape:
            found.extend(_first(form.finditer(view.shape), budget))
    found.sort(key=lambda span: (span[0], -span[1]))
    spans: Spans = []
    shape = view.shape
    for start, end in found:  # "+1 (415) 555-0100" is also "(415) 555-0100": keep the first
        if (not spans or start >= spans[-1][1]) and (
            _PHONE_MIN <= shape.count(b"0", start, end) <= _PHONE_MAX
        ):
            spans.append((start, end))
    return view.chars(spans)


def matches(regex: re.Pattern[str], text: str, budget: Budget) -> Spans:
    """The non-empty matches of an operator's `regex` in `text`."""
    # A regex may match the empty string somewhere (`\b`): there is nothing to redact there.
    return _first((m for m in regex.finditer(text) if m.end() > m.start()), budget)


def _first(found: Iterator[re.Match[AnyStr]], budget: Budget) -> Spans:
    """The spans of `found` until the budget of findings is spent (then one more, to tell)."""
    spans: Spans = []
    for match in found:
        spans.append(match.span())
        budget.findings -= 1
        if budget.findings < 0:
            break
    return spans
