"""What the stores (in memory, Redis) decide and keep: shared types and calendar periods.

Both stores implement the same algorithm (docs/architecture.md, "Rate limits and budgets"):

- requests and tokens per minute: a sliding-window log. Each admitted request is an entry
  (time, amount) in the rule's window; a request is admitted only if the amounts of the
  entries of the last 60 s plus its own fit the limit, so no 60-second window ever holds more
  than the limit at admission. Settling changes the entry's amount to what was used.
- concurrency: a lease per request in flight, with an expiry (a crashed processor's leases
  lapse), released at settlement.
- spend: a counter per calendar period (UTC day or month), reserved then settled.

All checks of a request are made first and applied only if all pass: a refused request takes
nothing from any rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from extproc.governance.rules import Check

DAY_MS = 86_400_000


@dataclass(slots=True)
class RuleState:
    """A rule's state as admission saw it: its limit, what is left, ms until it is whole."""

    limit: float
    remaining: float
    reset_ms: int


@dataclass(slots=True)
class Decision:
    """The answer of a store to an admission.

    `denied` is the index of the first check without room (-1: admitted); `retry_after_ms`
    when it will have room (never, for an amount above the limit: a full window). `periods`
    holds each spend check's period id, which settlement needs.
    """

    allowed: bool
    states: list[RuleState]
    periods: list[str]
    denied: int = -1
    retry_after_ms: int = 0
    local: bool = False  # decided by this processor because the shared store failed


@dataclass(slots=True)
class Settlement:
    """What one finished request charges: each check's final amount, and its usage totals."""

    rid: str
    checks: Sequence[Check]
    amounts: Sequence[float]  # per check (requests: ignored; concurrency: released)
    periods: Sequence[str]
    # (totals key, field, increment): requests, tokens and cost per tenant and key.
    usage: list[tuple[str, str, float]] = field(default_factory=list)


def period_of(now_ms: int, period: str) -> tuple[str, int]:
    """The id of the calendar period (UTC) holding `now_ms` and when it ends (ms)."""
    day = now_ms // DAY_MS
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    if period == "day":
        return date.isoformat(), (day + 1) * DAY_MS
    year, month = (date.year + 1, 1) if date.month == 12 else (date.year, date.month + 1)
    end = dt.date(year, month, 1) - dt.date(1970, 1, 1)
    return f"{date.year:04d}-{date.month:02d}", end.days * DAY_MS
