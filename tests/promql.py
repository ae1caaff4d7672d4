"""The metric names a PromQL expression reads, found by a small PromQL tokenizer.

Enough of the language for alert rules and dashboards: strings, numbers and durations, label
matchers (`{...}`, where `__name__="x"` names a metric too), ranges and subqueries (`[...]`),
function calls, aggregations with `by`/`without`, vector matching (`on`, `ignoring`,
`group_left`, `group_right` and their label lists), `offset`, `@`, `bool`, comments, and Grafana
variables (`$__rate_interval`, `${name}`). A bare identifier left over is a metric name; an
identifier before `(` is a function. Anything it does not recognise is an error, not a guess, and
so is a selector with no metric name (`{job="x"}` reads every metric).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
BINARY_KEYWORDS = frozenset({"and", "or", "unless", "atan2"})
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
OTHER_KEYWORDS = frozenset({"offset", "bool"})
NUMBER_WORDS = frozenset({"inf", "nan"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])\d*)*)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=@,(){}\[\]])
    """,
    re.VERBOSE,
)
_CLOSING = {"(": ")", "{": "}", "[": "]"}


class PromQLError(ValueError):
    """The expression has something the tokenizer does not know, or unbalanced brackets."""


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind (a group name of `_TOKEN`) and text."""

    kind: str
    text: str


def tokens(expr: str) -> list[Token]:
    """The tokens of `expr`, without spaces and comments."""
    out = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(f"unexpected {expr[pos]!r} at {pos} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            out.append(Token(kind, match.group()))
        pos = match.end()
    return out


def _skip_group(toks: list[Token], start: int) -> int:
    """Index just after the bracket group opening at `start` (nested groups included)."""
    stack = [_CLOSING[toks[start].text]]
    i = start + 1
    while i < len(toks):
        text = toks[i].text if toks[i].kind == "op" else ""
        if text in _CLOSING:
            stack.append(_CLOSING[text])
        elif text in (")", "}", "]"):
            if text != stack.pop():
                raise PromQLError(f"unbalanced {text!r}")
            if not stack:
                return i + 1
        i += 1
    raise PromQLError(f"unclosed {toks[start].text!r}")


@dataclass(frozen=True, slots=True)
class Selector:
    """A vector selector: the metric it reads and its label matchers."""

    metric: str
    matchers: str  # the matchers' tokens joined without spaces: 'job=~"$job",le="10"'


def _name_in_matchers(toks: list[Token]) -> str | None:
    """`__name__="x"` inside a `{...}` group names metric `x`."""
    for i in range(len(toks) - 2):
        if (toks[i].kind, toks[i].text) == ("ident", "__name__") and toks[i + 1].text == "=":
            value = toks[i + 2]
            if value.kind != "string":
                raise PromQLError(f"__name__ compared to {value.text!r}")
            return value.text[1:-1]
    return None


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of `expr`, in order."""
    toks = tokens(expr)
    found: list[Selector] = []
    depth = 0  # of parentheses, to refuse unbalanced ones
    i = 0
    while i < len(toks):
        tok = toks[i]
        nxt = toks[i + 1].text if i + 1 < len(toks) and toks[i + 1].kind == "op" else None
        following = toks[i + 1].text.lower() if i + 1 < len(toks) else None
        if tok.kind == "op" and tok.text in ("{", "["):
            end = _skip_group(toks, i)
            if tok.text == "{":  # a selector without a metric name before it
                inside = toks[i + 1 : end - 1]
                name = _name_in_matchers(inside)
                if name is None:
                    raise PromQLError(f"a selector without a metric name in {expr!r}")
                found.append(Selector(name, "".join(t.text for t in inside)))
            i = end
            continue
        if tok.kind == "op" and tok.text in ("(", ")"):
            depth += 1 if tok.text == "(" else -1
            if depth < 0:
                raise PromQLError(f"unbalanced ')' in {expr!r}")
        elif tok.kind == "op" and tok.text in ("}", "]"):
            raise PromQLError(f"unbalanced {tok.text!r} in {expr!r}")
        if tok.kind == "ident":
            word = tok.text.lower()
            if word in LABEL_LIST_KEYWORDS:
                # `by (a, b)`; `group_left` may also stand without a list.
                i = _skip_group(toks, i + 1) if nxt == "(" else i + 1
                continue
            is_keyword = word in BINARY_KEYWORDS | OTHER_KEYWORDS | NUMBER_WORDS
            is_call = nxt == "("
            is_aggregation = word in AGGREGATIONS and following in ("by", "without")
            if not (is_keyword or is_call or is_aggregation):
                matchers = ""
                i += 1
                if nxt == "{":
                    end = _skip_group(toks, i)
                    matchers = "".join(t.text for t in toks[i + 1 : end - 1])
                    i = end
                found.append(Selector(tok.text, matchers))
                continue
        i += 1
    if depth:
        raise PromQLError(f"unclosed '(' in {expr!r}")
    return found


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` reads."""
    return {selector.metric for selector in selectors(expr)}
