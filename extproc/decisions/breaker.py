"""Per-target circuit breakers (closed → open → half-open) and the provider-429 cool-down.

Pure and synchronous: callers pass `now` (monotonic seconds) and report how each admitted request
ended. No I/O, clocks or locks — one event loop owns a board.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

# A half-open breaker whose probe slots are all taken has no known reopening time: the probes'
# outcome decides. `retry_after` reports this small positive guess (the Retry-After granularity).
BUSY_PROBES_RETRY_SECONDS = 1.0
# The sliding window keeps at most this many buckets, whatever its length.
_MAX_BUCKETS = 60
_NO_BUCKET = -sys.maxsize


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens and how it recovers; checked once, when built."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window_seconds: float = 30.0
    min_requests: int = 20
    open_seconds: float = 30.0
    half_open_probes: int = 1

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.consecutive_failures < 1:
            problems.append("consecutive_failures must be at least 1")
        if not 0.0 < self.failure_rate <= 1.0:
            problems.append("failure_rate must be in (0, 1]")
        if not (math.isfinite(self.window_seconds) and self.window_seconds > 0):
            problems.append("window_seconds must be a positive number")
        if self.min_requests < 1:
            problems.append("min_requests must be at least 1")
        if not (math.isfinite(self.open_seconds) and self.open_seconds >= 0):
            problems.append("open_seconds must be a non-negative number")
        if self.half_open_probes < 1:
            problems.append("half_open_probes must be at least 1")
        if problems:
            raise ValueError("invalid breaker settings: " + "; ".join(problems))


class State(StrEnum):
    """A breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(StrEnum):
    """The answer to "may a request go to this target now?"."""

    ALLOW = "allow"
    PROBE = "probe"
    DENY_OPEN = "deny_open"
    DENY_COOLING = "deny_cooling"


ADMITTED = frozenset({Admission.ALLOW, Admission.PROBE})


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one breaker, reported once through `on_transition`."""

    target: str
    old: State
    new: State
    at: float
    reason: str


class _Window:
    """Successes and failures of the last `seconds`, in a fixed ring of time buckets.

    A result stays counted for between `seconds - width` and `seconds` (width = seconds / buckets,
    one second for windows up to a minute). Results older than the window's memory are dropped.
    """

    __slots__ = ("_failed", "_ids", "_newest", "_ok", "_size", "_width")

    def __init__(self, seconds: float) -> None:
        self._size = min(_MAX_BUCKETS, max(1, math.ceil(seconds)))
        self._width = seconds / self._size
        self._ids = [_NO_BUCKET] * self._size  # absolute bucket number held by each slot
        self._ok = [0] * self._size
        self._failed = [0] * self._size
        self._newest = _NO_BUCKET

    def add(self, now: float, failed: bool) -> None:
        """Count one result at `now` (a slightly stale `now` from an interleaved caller is fine)."""
        bucket = math.floor(now / self._width)
        if bucket <= self._newest - self._size:
            return
        slot = bucket % self._size
        if self._ids[slot] != bucket:
            self._ids[slot] = bucket
            self._ok[slot] = 0
            self._failed[slot] = 0
        if failed:
            self._failed[slot] += 1
        else:
            self._ok[slot] += 1
        self._newest = max(self._newest, bucket)

    def counts(self, now: float) -> tuple[int, int]:
        """(successes, failures) inside the window ending at `now`."""
        newest = max(math.floor(now / self._width), self._newest)
        oldest = newest - self._size
        ok = failed = 0
        for slot, bucket in enumerate(self._ids):
            if oldest < bucket <= newest:
                ok += self._ok[slot]
                failed += self._failed[slot]
        return ok, failed

    def clear(self) -> None:
        """Forget every result."""
        self._ids = [_NO_BUCKET] * self._size
        self._ok = [0] * self._size
        self._failed = [0] * self._size
        self._newest = _NO_BUCKET


class Breaker:
    """The breaker of one target (provider + upstream model).

    Contract for callers: every `admit` answered ALLOW or PROBE ends in exactly one
    `record_success` / `record_failure` (with `probe` = whether it was PROBE), or, for a probe that
    ended with no result (cancelled, reset before an answer, answered 429), one `release_probe`.
    Pass `admitted_at` (the `now` given to `admit`) so results of requests admitted before the
    current state began are recognised as stale; without it only the `probe` flag tells.
    """

    __slots__ = (
        "_consecutive",
        "_cooling_until",
        "_on_transition",
        "_opened_at",
        "_probes",
        "_since",
        "_state",
        "_window",
        "settings",
        "target",
    )

    def __init__(
        self,
        target: str,
        settings: BreakerSettings,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.target = target
        self.settings = settings
        self._on_transition = on_transition
        self._state = State.CLOSED
        self._since = -math.inf  # when the current state began
        self._opened_at: float | None = None
        self._consecutive = 0
        self._window = _Window(settings.window_seconds)
        self._probes = 0
        self._cooling_until = -math.inf

    @property
    def state(self) -> State:
        """The stored state: OPEN becomes HALF_OPEN only when `admit`/`peek` sees it is due."""
        return self._state

    @property
    def probes_in_flight(self) -> int:
        """Probes admitted and not yet ended (by a result or `release_probe`)."""
        return self._probes

    def admit(self, now: float) -> Admission:
        """Decide whether a request may go to this target; PROBE takes a probe slot."""
        verdict = self.peek(now)
        if verdict is Admission.PROBE:
            self._probes += 1
        return verdict

    def peek(self, now: float) -> Admission:
        """The answer `admit` would give, without taking a probe slot.

        Like `admit`, it moves a due OPEN breaker to HALF_OPEN. A 429 cool-down wins over the
        breaker state: a cooling target is DENY_COOLING even when it is also open.
        """
        if self._state is State.OPEN and now >= self._reopens_at():
            self._move(State.HALF_OPEN, now, "open_seconds elapsed")
        if now < self._cooling_until:
            return Admission.DENY_COOLING
        if self._state is State.CLOSED:
            return Admission.ALLOW
        if self._state is State.HALF_OPEN and self._probes < self.settings.half_open_probes:
            return Admission.PROBE
        return Admission.DENY_OPEN

    def record_success(self, now: float, probe: bool, *, admitted_at: float | None = None) -> None:
        """Report a good answer. A current probe's success closes a half-open breaker."""
        if probe:
            self._end_probe()
        if not self._counts(probe, admitted_at):
            return
        if self._state is State.HALF_OPEN:
            self._consecutive = 0
            self._window.clear()
            self._opened_at = None
            self._move(State.CLOSED, now, "probe succeeded")
        else:
            self._consecutive = 0
            self._window.add(now, failed=False)

    def record_failure(
        self, now: float, probe: bool, reason: str, *, admitted_at: float | None = None
    ) -> None:
        """Report a 5xx, reset, connect failure or timeout (`reason` names which)."""
        if probe:
            self._end_probe()
        if not self._counts(probe, admitted_at):
            return
        if self._state is State.HALF_OPEN:
            self._open(now, f"probe failed: {reason}")
            return
        self._consecutive += 1
        self._window.add(now, failed=True)
        settings = self.settings
        if self._consecutive >= settings.consecutive_failures:
            self._open(now, f"{self._consecutive} consecutive failures, last: {reason}")
            return
        ok, failed = self._window.counts(now)
        total = ok + failed
        if total >= settings.min_requests and failed / total >= settings.failure_rate:
            self._open(
                now,
                f"{failed} of {total} failed in {settings.window_seconds:g}s, last: {reason}",
            )

    def release_probe(self) -> None:
        """Free the slot of a probe that ended with no result; a no-op when none is in flight."""
        self._end_probe()

    def cool_down(self, now: float, seconds: float) -> None:
        """Deny this target until `now + seconds` (a provider 429); not a failure, never shortens.

        A non-positive or non-finite `seconds` is ignored: callers parse and cap Retry-After.
        """
        if math.isfinite(seconds) and seconds > 0:
            self._cooling_until = max(self._cooling_until, now + seconds)

    def retry_after(self, now: float) -> float:
        """Seconds until this target may be tried again; 0 exactly when `peek` would admit."""
        wait = max(0.0, self._cooling_until - now)
        if self._state is State.OPEN:
            wait = max(wait, self._reopens_at() - now)
        if (
            wait == 0.0
            and self._state is not State.CLOSED
            and self._probes >= self.settings.half_open_probes
        ):
            wait = BUSY_PROBES_RETRY_SECONDS
        return wait

    def snapshot(self, now: float) -> dict[str, object]:
        """A JSON-ready view for the admin endpoint; reads only (a due OPEN still shows OPEN)."""
        ok, failed = self._window.counts(now)
        return {
            "state": self._state.value,
            "consecutive_failures": self._consecutive,
            "window_successes": ok,
            "window_failures": failed,
            "opened_at": self._opened_at,
            "cooling_until": self._cooling_until if self._cooling_until > now else None,
            "probes_in_flight": self._probes,
            "retry_after": self.retry_after(now),
        }

    def _counts(self, probe: bool, admitted_at: float | None) -> bool:
        # A result moves the breaker only if it was admitted in the current state: non-probes while
        # closed, probes while half-open. Anything else is a straggler from an earlier state.
        if self._state is State.OPEN or probe != (self._state is State.HALF_OPEN):
            return False
        return admitted_at is None or admitted_at >= self._since

    def _reopens_at(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self.settings.open_seconds

    def reset(self, now: float) -> bool:
        """Operator override: close the breaker and forget its history. True if it changed."""
        changed = (
            self._state is not State.CLOSED
            or self._consecutive > 0
            or self._cooling_until > now
            or self._probes > 0
        )
        self._consecutive = 0
        self._opened_at = None
        self._window.clear()
        self._cooling_until = -math.inf
        self._probes = 0
        if self._state is not State.CLOSED:
            self._move(State.CLOSED, now, "reset by operator")
        return changed

    def reconfigure(self, settings: BreakerSettings) -> None:
        """Apply new settings (a config reload), keeping the state; a window of another length
        starts empty."""
        if settings == self.settings:
            return
        if settings.window_seconds != self.settings.window_seconds:
            self._window = _Window(settings.window_seconds)
        self.settings = settings

    def _end_probe(self) -> None:
        if self._probes > 0:
            self._probes -= 1

    def _open(self, now: float, reason: str) -> None:
        self._opened_at = now
        self._move(State.OPEN, now, reason)

    def _move(self, new: State, now: float, reason: str) -> None:
        # State first, callback last: a callback that re-enters the breaker sees the new state.
        old = self._state
        self._state = new
        self._since = now
        if self._on_transition is not None:
            self._on_transition(Transition(self.target, old, new, now, reason))


class BreakerBoard:
    """The breakers of all targets, created on first use; targets come from config, not clients.

    A board built on reload takes over the `previous` board's breaker of each target it is asked
    for (state and history kept, new settings applied): both boards then share that breaker, so
    requests still finishing on the old config count where the new one looks.
    """

    __slots__ = ("_breakers", "_on_transition", "_previous", "settings")

    def __init__(
        self,
        settings: BreakerSettings,
        on_transition: Callable[[Transition], None] | None = None,
        previous: BreakerBoard | None = None,
    ) -> None:
        self.settings = settings
        self._on_transition = on_transition
        self._previous = previous
        self._breakers: dict[str, Breaker] = {}

    def get(self, target: str) -> Breaker:
        """The breaker of `target`: the previous board's if it had one, else created closed."""
        breaker = self._breakers.get(target)
        if breaker is None:
            carried = self._previous._breakers.get(target) if self._previous else None
            if carried is not None:
                carried.reconfigure(self.settings)
                breaker = carried
            else:
                breaker = Breaker(target, self.settings, self._on_transition)
            self._breakers[target] = breaker
        return breaker

    def targets(self) -> frozenset[str]:
        """The targets this board holds a breaker for."""
        return frozenset(self._breakers)

    def forget_previous(self) -> None:
        """Drop the link to the previous board (once every target was asked for)."""
        self._previous = None

    def reset(self, now: float) -> int:
        """Close every breaker (operator override); returns how many changed."""
        return sum(breaker.reset(now) for breaker in self._breakers.values())

    def snapshot(self, now: float) -> dict[str, dict[str, object]]:
        """Every breaker's snapshot, by target."""
        return {target: self._breakers[target].snapshot(now) for target in sorted(self._breakers)}
