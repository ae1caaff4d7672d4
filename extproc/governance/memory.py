"""The in-memory store: one processor's windows, leases, budgets and usage totals.

The default backend (one replica), and the fallback a Redis backend uses while Redis is
unreachable. Same algorithm as the Redis scripts (`store.py`); everything is bounded by the
config's rules, and each window by its limit.
"""

from __future__ import annotations

import math
import time
from collections import deque

from extproc.governance.rules import WINDOW_MS, Check, Kind, Rule
from extproc.governance.store import Decision, RuleState, Settlement, period_of


class SlidingLog:
    """A rule's sliding window: entries (time, request id) oldest first, and their amounts."""

    __slots__ = ("amounts", "entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, str]] = deque()
        self.amounts: dict[str, float] = {}
        self.total = 0.0

    def trim(self, now: int) -> None:
        """Drop entries older than the window."""
        entries = self.entries
        while entries and entries[0][0] <= now - WINDOW_MS:
            _, rid = entries.popleft()
            self.total -= self.amounts.pop(rid, 0.0)
        if not entries:
            self.total = 0.0  # no float dust

    def wait_for(self, amount: float, limit: float, now: int) -> int:
        """Milliseconds until `amount` fits (a whole window if it never can)."""
        if amount > limit:
            return WINDOW_MS
        freed = 0.0
        for at, rid in self.entries:
            freed += self.amounts.get(rid, 0.0)
            if self.total - freed + amount <= limit:
                return max(1, at + WINDOW_MS - now)
        return WINDOW_MS

    def reset_ms(self, now: int) -> int:
        """Milliseconds until the window is empty again."""
        return max(0, self.entries[-1][0] + WINDOW_MS - now) if self.entries else 0


class MemoryStore:
    """Limits, budgets and usage totals kept in this process."""

    __slots__ = ("_leases", "_logs", "_spent", "_usage")

    def __init__(self) -> None:
        self._logs: dict[str, SlidingLog] = {}
        self._leases: dict[str, dict[str, int]] = {}  # rule key -> request id -> expiry
        self._spent: dict[str, tuple[str, float]] = {}  # rule key -> (period id, spent)
        self._usage: dict[str, dict[str, float]] = {}

    def admit(
        self, checks: tuple[Check, ...], rid: str, lease_ms: int, now: int | None = None
    ) -> Decision:
        """Admit a request if every check has room, taking what it asks of each; else nothing."""
        now = _now_ms() if now is None else now
        states: list[RuleState] = []
        periods: list[str] = []
        denied, retry = -1, 0
        for index, check in enumerate(checks):
            rule = check.rule
            used, fits, wait, reset, period = self._look(rule, check.amount, now)
            periods.append(period)
            states.append(RuleState(rule.limit, rule.limit - used, reset))
            if not fits and denied < 0:
                denied, retry = index, wait
        if denied >= 0:
            return Decision(False, states, periods, denied, retry)
        for check, state, period in zip(checks, states, periods, strict=True):
            self._take(check, rid, now, lease_ms, period)
            state.remaining -= 1 if check.rule.kind is Kind.CONCURRENCY else check.amount
            if check.rule.kind in (Kind.REQUESTS, Kind.TOKENS):
                state.reset_ms = WINDOW_MS
        return Decision(True, states, periods)

    def _look(
        self, rule: Rule, amount: float, now: int, peek: bool = False
    ) -> tuple[float, bool, int, int, str]:
        """A rule now: its use, whether `amount` fits, ms until it would, ms until the rule is
        whole again, and the budget's period id ("" for other kinds)."""
        if rule.kind is Kind.CONCURRENCY:
            leases = self._leases.setdefault(rule.key, {})
            if peek or len(leases) + 1 > rule.limit:  # full: first drop leases that lapsed
                for lease, expiry in list(leases.items()):
                    if expiry <= now:
                        del leases[lease]
            used = float(len(leases))
            return used, used + 1 <= rule.limit, 1000, 0, ""
        if rule.kind is Kind.SPEND:
            period, end = period_of(now, rule.period)
            used = self._spent_in(rule.key, period)
            return used, used + amount <= rule.limit, end - now, end - now, period
        log = self._logs.get(rule.key)
        if log is None:
            log = self._logs[rule.key] = SlidingLog()
        log.trim(now)
        fits = log.total + amount <= rule.limit
        wait = 0 if fits else log.wait_for(amount, rule.limit, now)
        return log.total, fits, wait, log.reset_ms(now), ""

    def _spent_in(self, key: str, period: str) -> float:
        current = self._spent.get(key)
        return current[1] if current is not None and current[0] == period else 0.0

    def _take(self, check: Check, rid: str, now: int, lease_ms: int, period: str) -> None:
        rule = check.rule
        if rule.kind is Kind.CONCURRENCY:
            self._leases[rule.key][rid] = now + lease_ms
        elif rule.kind is Kind.SPEND:
            self._spent[rule.key] = (period, self._spent_in(rule.key, period) + check.amount)
        else:
            log = self._logs[rule.key]
            log.entries.append((now, rid))
            log.amounts[rid] = check.amount
            log.total += check.amount

    def settle(self, settlement: Settlement) -> None:
        """Charge what the request used instead of what it reserved; add its usage totals."""
        rid = settlement.rid
        for check, amount, period in zip(
            settlement.checks, settlement.amounts, settlement.periods, strict=True
        ):
            rule = check.rule
            if rule.kind is Kind.CONCURRENCY:
                self._leases.get(rule.key, {}).pop(rid, None)
            elif rule.kind is Kind.SPEND:
                if rule.key in self._spent and self._spent[rule.key][0] == period:
                    spent = self._spent_in(rule.key, period) + amount - check.amount
                    self._spent[rule.key] = (period, spent)
            elif rule.kind is Kind.TOKENS:
                log = self._logs.get(rule.key)
                if log is not None and rid in log.amounts:  # still in the window
                    log.total += amount - log.amounts[rid]
                    log.amounts[rid] = amount
        for key, name, increment in settlement.usage:
            totals = self._usage.setdefault(key, {})
            totals[name] = totals.get(name, 0.0) + increment

    def usage(self, key: str) -> dict[str, float]:
        """The usage totals kept under `key` (a tenant's or a key's)."""
        return dict(self._usage.get(key, {}))

    def state(self, check: Check, now: int | None = None) -> RuleState:
        """A rule's current state, without taking anything (for `/usage`)."""
        now = _now_ms() if now is None else now
        used, _, _, reset, _ = self._look(check.rule, 0.0, now, peek=True)
        return RuleState(check.rule.limit, check.rule.limit - used, reset)


def _now_ms() -> int:
    return math.floor(time.time() * 1000)
