"""Unit and state-machine tests of the per-target circuit breaker (time passed in, no sleeps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from extproc.decisions.breaker import (
    ADMITTED,
    BUSY_PROBES_RETRY_SECONDS,
    Admission,
    Breaker,
    BreakerBoard,
    BreakerSettings,
    State,
    Transition,
)

VALID_MOVES = {
    (State.CLOSED, State.OPEN),
    (State.OPEN, State.HALF_OPEN),
    (State.HALF_OPEN, State.OPEN),
    (State.HALF_OPEN, State.CLOSED),
}


@dataclass
class Recorder:
    transitions: list[Transition] = field(default_factory=list)

    def __call__(self, transition: Transition) -> None:
        self.transitions.append(transition)

    @property
    def moves(self) -> list[tuple[State, State]]:
        return [(t.old, t.new) for t in self.transitions]


def make(**overrides: float) -> tuple[Breaker, Recorder]:
    recorder = Recorder()
    return Breaker("openai/gpt-4o", BreakerSettings(**overrides), recorder), recorder  # type: ignore[arg-type]


def fail(breaker: Breaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        assert breaker.admit(now) is Admission.ALLOW
        breaker.record_failure(now, probe=False, reason="upstream_5xx")


def opened(now: float = 0.0, **overrides: Any) -> tuple[Breaker, Recorder]:
    """A breaker opened at `now` by consecutive failures."""
    breaker, recorder = make(**overrides)
    fail(breaker, now, breaker.settings.consecutive_failures)
    assert breaker.state is State.OPEN
    return breaker, recorder


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"consecutive_failures": 0},
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"window_seconds": 0.0},
        {"window_seconds": float("inf")},
        {"min_requests": 0},
        {"open_seconds": -1.0},
        {"open_seconds": float("nan")},
        {"half_open_probes": 0},
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid breaker settings"):
        BreakerSettings(**overrides)


# -- closed → open --------------------------------------------------------------------------------


def test_closed_allows_and_successes_reset_the_consecutive_count() -> None:
    breaker, recorder = make(consecutive_failures=3, min_requests=100)
    for step in range(10):
        fail(breaker, float(step), 2)
        assert breaker.admit(float(step)) is Admission.ALLOW
        breaker.record_success(float(step), probe=False)
    assert breaker.state is State.CLOSED
    assert recorder.transitions == []


def test_consecutive_failures_open_it() -> None:
    breaker, recorder = make(consecutive_failures=3)
    fail(breaker, 1.0, 2)
    assert breaker.state is State.CLOSED
    fail(breaker, 2.0)
    assert breaker.state is State.OPEN
    assert recorder.transitions == [
        Transition(
            "openai/gpt-4o",
            State.CLOSED,
            State.OPEN,
            2.0,
            "3 consecutive failures, last: upstream_5xx",
        )
    ]
    assert breaker.admit(2.0) is Admission.DENY_OPEN
    assert breaker.snapshot(2.0)["opened_at"] == 2.0


def test_failure_rate_opens_it_once_min_requests_are_in_the_window() -> None:
    breaker, recorder = make(consecutive_failures=100, failure_rate=0.5, min_requests=10)
    for i in range(9):  # alternate: 5 successes, 4 failures, never 2 failures in a row
        breaker.admit(float(i))
        if i % 2:
            breaker.record_failure(float(i), probe=False, reason="timeout")
        else:
            breaker.record_success(float(i), probe=False)
    assert breaker.state is State.CLOSED  # 9 results < min_requests
    fail(breaker, 9.0)  # 10 results, 5 failed: 50 %
    assert breaker.state is State.OPEN
    assert recorder.transitions[0].reason == "5 of 10 failed in 30s, last: upstream_5xx"


def test_failure_rate_below_the_threshold_keeps_it_closed() -> None:
    breaker, _ = make(consecutive_failures=100, failure_rate=0.5, min_requests=10)
    for i in range(100):
        breaker.admit(float(i) / 10)
        if i % 3 == 0:
            breaker.record_failure(float(i) / 10, probe=False, reason="timeout")
        else:
            breaker.record_success(float(i) / 10, probe=False)
    assert breaker.state is State.CLOSED


def test_failure_rate_uses_the_share_not_a_rounded_product() -> None:
    breaker, _ = make(consecutive_failures=100, failure_rate=0.28, min_requests=25)
    for _ in range(18):
        breaker.record_success(0.0, probe=False)
    fail(breaker, 0.0, 7)  # 7 / 25 == 0.28, although 0.28 * 25 > 7 in floating point
    assert breaker.state is State.OPEN


def test_old_results_slide_out_of_the_window() -> None:
    breaker, _ = make(
        consecutive_failures=100, failure_rate=0.5, min_requests=10, window_seconds=30.0
    )
    fail(breaker, 0.0, 9)
    assert breaker.snapshot(0.0)["window_failures"] == 9
    assert breaker.snapshot(29.5)["window_failures"] == 9
    assert breaker.snapshot(31.0)["window_failures"] == 0
    for _ in range(9):
        breaker.record_success(31.0, probe=False)
    fail(breaker, 31.0)  # 1 of 10 failed now: the 9 old failures no longer count
    assert breaker.state is State.CLOSED
    snapshot = breaker.snapshot(31.0)
    assert (snapshot["window_successes"], snapshot["window_failures"]) == (9, 1)


def test_long_windows_keep_bounded_buckets_and_still_slide() -> None:
    breaker, _ = make(consecutive_failures=100, window_seconds=3600.0)
    fail(breaker, 0.0, 3)
    assert breaker.snapshot(3000.0)["window_failures"] == 3
    assert breaker.snapshot(3700.0)["window_failures"] == 0


def test_a_slightly_stale_now_is_counted_and_a_too_old_one_dropped() -> None:
    breaker, _ = make(consecutive_failures=100, window_seconds=10.0)
    breaker.record_success(100.0, probe=False)
    breaker.record_failure(99.2, probe=False, reason="reset")  # captured before an await
    breaker.record_failure(50.0, probe=False, reason="reset")  # older than the window
    snapshot = breaker.snapshot(100.0)
    assert (snapshot["window_successes"], snapshot["window_failures"]) == (1, 1)


# -- open → half-open → closed / open -----------------------------------------------------------


def test_open_denies_until_open_seconds_then_half_opens_once() -> None:
    breaker, recorder = opened(10.0, open_seconds=30.0)
    assert breaker.admit(39.9) is Admission.DENY_OPEN
    assert breaker.peek(39.9) is Admission.DENY_OPEN
    assert breaker.state is State.OPEN
    assert breaker.peek(40.0) is Admission.PROBE  # peek moves it but takes no slot
    assert breaker.state is State.HALF_OPEN
    assert breaker.admit(40.0) is Admission.PROBE
    assert breaker.probes_in_flight == 1
    assert recorder.moves == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]
    assert recorder.transitions[1].at == 40.0


def test_probe_success_closes_it_and_resets_counters() -> None:
    breaker, recorder = opened(0.0, open_seconds=5.0)
    assert breaker.admit(5.0) is Admission.PROBE
    breaker.record_success(6.0, probe=True)
    assert breaker.state is State.CLOSED
    assert recorder.moves[-1] == (State.HALF_OPEN, State.CLOSED)
    assert recorder.transitions[-1].reason == "probe succeeded"
    assert breaker.snapshot(6.0) == {
        "state": "closed",
        "consecutive_failures": 0,
        "window_successes": 0,
        "window_failures": 0,
        "opened_at": None,
        "cooling_until": None,
        "probes_in_flight": 0,
        "retry_after": 0.0,
    }
    fail(breaker, 6.0, 4)  # the counters start from zero again
    assert breaker.state is State.CLOSED


def test_probe_failure_reopens_it_for_another_open_seconds() -> None:
    breaker, recorder = opened(0.0, open_seconds=5.0)
    assert breaker.admit(5.0) is Admission.PROBE
    breaker.record_failure(7.0, probe=True, reason="timeout")
    assert breaker.state is State.OPEN
    assert recorder.transitions[-1] == Transition(
        "openai/gpt-4o", State.HALF_OPEN, State.OPEN, 7.0, "probe failed: timeout"
    )
    assert breaker.retry_after(7.0) == 5.0
    assert breaker.admit(11.9) is Admission.DENY_OPEN
    assert breaker.admit(12.0) is Admission.PROBE
    assert breaker.probes_in_flight == 1


def test_half_open_lets_exactly_the_probe_limit_through() -> None:
    breaker, _ = opened(0.0, open_seconds=1.0, half_open_probes=2)
    answers = [breaker.admit(1.0) for _ in range(5)]
    assert answers == [Admission.PROBE, Admission.PROBE] + [Admission.DENY_OPEN] * 3
    assert breaker.probes_in_flight == 2
    assert breaker.peek(1.0) is Admission.DENY_OPEN


def test_a_released_probe_frees_its_slot() -> None:
    breaker, recorder = opened(0.0, open_seconds=1.0)
    assert breaker.admit(1.0) is Admission.PROBE
    assert breaker.admit(1.0) is Admission.DENY_OPEN
    breaker.release_probe()  # e.g. the client cancelled before the provider answered
    assert breaker.probes_in_flight == 0
    assert breaker.state is State.HALF_OPEN
    assert breaker.admit(1.5) is Admission.PROBE
    breaker.release_probe()
    breaker.release_probe()  # no probe in flight: a no-op, never negative
    assert breaker.probes_in_flight == 0
    assert len(recorder.transitions) == 2


def test_stragglers_do_not_close_or_reopen_it() -> None:
    breaker, recorder = make(consecutive_failures=3, open_seconds=10.0)
    for _ in range(10):
        assert breaker.admit(0.0) is Admission.ALLOW
    for _ in range(3):
        breaker.record_failure(1.0, probe=False, reason="reset")
    assert breaker.state is State.OPEN
    breaker.record_failure(2.0, probe=False, reason="reset")  # stragglers while open
    breaker.record_success(2.0, probe=False)
    assert breaker.retry_after(2.0) == 9.0  # the opening was not pushed back
    assert breaker.admit(11.0) is Admission.PROBE
    breaker.record_success(12.0, probe=False)  # stragglers while half-open
    breaker.record_failure(12.0, probe=False, reason="reset")
    breaker.record_success(12.0, probe=False)
    assert breaker.state is State.HALF_OPEN
    assert breaker.probes_in_flight == 1
    assert recorder.moves == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_late_probe_results_only_free_their_slot() -> None:
    breaker, recorder = opened(0.0, open_seconds=1.0, half_open_probes=2)
    assert breaker.admit(1.0) is Admission.PROBE
    assert breaker.admit(1.0) is Admission.PROBE
    breaker.record_success(2.0, probe=True)
    assert breaker.state is State.CLOSED
    breaker.record_failure(3.0, probe=True, reason="timeout")  # the other probe, after the close
    assert breaker.state is State.CLOSED
    assert breaker.probes_in_flight == 0
    assert breaker.snapshot(3.0)["consecutive_failures"] == 0
    assert recorder.moves[-1] == (State.HALF_OPEN, State.CLOSED)


def test_a_probe_success_after_another_probe_failed_keeps_it_open() -> None:
    breaker, recorder = opened(0.0, open_seconds=1.0, half_open_probes=2)
    breaker.admit(1.0)
    breaker.admit(1.0)
    breaker.record_failure(2.0, probe=True, reason="reset")
    breaker.record_success(2.5, probe=True)
    assert breaker.state is State.OPEN
    assert breaker.probes_in_flight == 0
    assert recorder.moves.count((State.HALF_OPEN, State.OPEN)) == 1


def test_probes_still_in_flight_count_against_the_next_half_open() -> None:
    breaker, _ = opened(0.0, open_seconds=1.0, half_open_probes=2)
    assert breaker.admit(1.0) is Admission.PROBE  # slow probe A
    assert breaker.admit(1.0) is Admission.PROBE
    breaker.record_failure(1.5, probe=True, reason="reset")  # reopens; A still running
    assert breaker.admit(2.5) is Admission.PROBE
    assert breaker.admit(2.5) is Admission.DENY_OPEN  # A holds the second slot
    assert breaker.retry_after(2.5) == BUSY_PROBES_RETRY_SECONDS
    breaker.release_probe()
    assert breaker.admit(2.5) is Admission.PROBE


def test_admitted_at_marks_results_from_an_earlier_state_as_stale() -> None:
    breaker, recorder = make(consecutive_failures=2, open_seconds=1.0, half_open_probes=2)
    for _ in range(3):  # slow requests, still running when the breaker opens and closes
        assert breaker.admit(0.0) is Admission.ALLOW
    fail(breaker, 0.5, 2)
    assert breaker.admit(1.5) is Admission.PROBE  # slow probe from this half-open
    assert breaker.admit(1.5) is Admission.PROBE
    breaker.record_success(2.0, probe=True, admitted_at=1.5)
    assert breaker.state is State.CLOSED
    for _ in range(3):  # their timeouts arrive after the close
        breaker.record_failure(120.0, probe=False, reason="timeout", admitted_at=0.0)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot(120.0)["consecutive_failures"] == 0
    fail(breaker, 121.0)  # a fresh failure counts (admitted_at omitted)
    breaker.record_failure(121.0, probe=False, reason="timeout", admitted_at=121.0)
    assert breaker.state is State.OPEN
    # A probe admitted in an earlier half-open cannot close a later one.
    assert breaker.admit(122.0) is Admission.PROBE
    assert breaker.admit(122.0) is Admission.DENY_OPEN  # the 1.5 probe still holds a slot
    breaker.record_success(123.0, probe=True, admitted_at=1.5)
    assert breaker.state is State.HALF_OPEN
    breaker.record_success(123.0, probe=True, admitted_at=122.0)
    assert breaker.state is State.CLOSED
    assert len(recorder.transitions) == 6


# -- concurrency ----------------------------------------------------------------------------------


def test_fifty_interleaved_requests_open_it_exactly_once() -> None:
    breaker, recorder = make(consecutive_failures=5, open_seconds=30.0)
    answers = [breaker.admit(0.0) for _ in range(50)]
    assert answers == [Admission.ALLOW] * 50
    for i in range(50):  # all fail, in interleaved order, across a few seconds
        breaker.record_failure(i / 10, probe=False, reason="connect_failure", admitted_at=0.0)
        assert breaker.admit(i / 10) in ({Admission.ALLOW} if i < 4 else {Admission.DENY_OPEN})
    assert recorder.moves == [(State.CLOSED, State.OPEN)]
    assert breaker.retry_after(4.9) == pytest.approx(30.4 - 4.9)


def test_fifty_admits_in_half_open_make_one_probe() -> None:
    breaker, recorder = opened(0.0, open_seconds=1.0)
    answers = [breaker.admit(1.0 + i / 100) for i in range(50)]
    assert answers.count(Admission.PROBE) == 1
    assert recorder.moves == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_a_callback_that_reenters_sees_the_new_state() -> None:
    seen: list[tuple[State, Admission]] = []
    breaker: Breaker

    def on_transition(transition: Transition) -> None:
        seen.append((breaker.state, breaker.peek(transition.at)))

    breaker = Breaker("t", BreakerSettings(consecutive_failures=1, open_seconds=1.0), on_transition)
    breaker.record_failure(0.0, probe=False, reason="reset")
    breaker.admit(1.0)
    assert seen == [(State.OPEN, Admission.DENY_OPEN), (State.HALF_OPEN, Admission.PROBE)]
    assert breaker.probes_in_flight == 1


# -- 429 cool-down and retry_after --------------------------------------------------------------


def test_cool_down_denies_without_counting_a_failure() -> None:
    breaker, recorder = make(consecutive_failures=1)
    breaker.cool_down(10.0, 5.0)
    assert breaker.admit(10.0) is Admission.DENY_COOLING
    assert breaker.peek(14.9) is Admission.DENY_COOLING
    assert breaker.retry_after(12.0) == 3.0
    snapshot = breaker.snapshot(12.0)
    assert snapshot["cooling_until"] == 15.0
    assert snapshot["consecutive_failures"] == 0
    assert snapshot["state"] == "closed"
    assert breaker.admit(15.0) is Admission.ALLOW
    assert breaker.snapshot(15.0)["cooling_until"] is None
    assert recorder.transitions == []


def test_cool_down_never_shortens_and_ignores_nonsense() -> None:
    breaker, _ = make()
    breaker.cool_down(0.0, 60.0)
    breaker.cool_down(1.0, 2.0)
    for bad in (0.0, -5.0, float("nan"), float("inf")):
        breaker.cool_down(1.0, bad)
    assert breaker.retry_after(1.0) == 59.0


def test_cooling_wins_over_half_open_and_takes_no_probe_slot() -> None:
    breaker, _ = opened(0.0, open_seconds=10.0)
    breaker.cool_down(5.0, 20.0)
    assert breaker.admit(5.0) is Admission.DENY_COOLING
    assert breaker.retry_after(5.0) == 20.0  # cool-down outlasts the open time
    assert breaker.admit(12.0) is Admission.DENY_COOLING
    assert breaker.state is State.HALF_OPEN
    assert breaker.probes_in_flight == 0
    assert breaker.admit(25.0) is Admission.PROBE


def test_retry_after_is_the_larger_of_open_time_and_cool_down() -> None:
    breaker, _ = opened(0.0, open_seconds=30.0)
    breaker.cool_down(0.0, 10.0)
    assert breaker.retry_after(0.0) == 30.0
    assert breaker.retry_after(29.0) == 1.0
    assert breaker.retry_after(30.0) == 0.0
    assert breaker.admit(30.0) is Admission.PROBE
    assert breaker.retry_after(30.0) == BUSY_PROBES_RETRY_SECONDS
    breaker.record_success(31.0, probe=True)
    assert breaker.retry_after(31.0) == 0.0


# -- board ----------------------------------------------------------------------------------------


def test_board_creates_each_breaker_once_and_shares_the_callback() -> None:
    recorder = Recorder()
    board = BreakerBoard(BreakerSettings(consecutive_failures=1), recorder)
    first = board.get("openai/gpt-4o")
    assert board.get("openai/gpt-4o") is first
    first.record_failure(1.0, probe=False, reason="reset")
    board.get("anthropic/claude").cool_down(1.0, 3.0)
    snapshot = board.snapshot(2.0)
    assert list(snapshot) == ["anthropic/claude", "openai/gpt-4o"]
    assert snapshot["openai/gpt-4o"]["state"] == "open"
    assert snapshot["anthropic/claude"]["retry_after"] == 2.0
    assert [t.target for t in recorder.transitions] == ["openai/gpt-4o"]


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=30))
def test_peek_agrees_with_admit(times: list[float]) -> None:
    breaker, _ = opened(0.0, open_seconds=10.0, half_open_probes=2)
    for now in sorted(times):
        peeked = breaker.peek(now)
        assert breaker.admit(now) is peeked
        assert (breaker.retry_after(now) == 0.0) == (breaker.peek(now) in ADMITTED)


# -- state machine ------------------------------------------------------------------------------


OUTCOMES = st.sampled_from(["success", "failure", "failure", "no_result"])


@dataclass(eq=False)  # identity: two requests admitted at the same time are still two
class Request:
    admitted_at: float
    probe: bool


class BreakerMachine(RuleBasedStateMachine):
    """Random admits, results, releases, cool-downs and clock steps against one breaker."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.recorder = Recorder()
        self.breaker = Breaker("t", BreakerSettings(), self.recorder)
        self.in_flight: list[Request] = []
        self.observed = State.CLOSED
        self.changes = 0
        self.use_admitted_at = False

    @initialize(
        breaker_settings=st.builds(
            BreakerSettings,
            consecutive_failures=st.integers(1, 6),
            failure_rate=st.floats(0.1, 1.0),
            window_seconds=st.floats(0.5, 90.0),
            min_requests=st.integers(1, 12),
            open_seconds=st.floats(0.0, 20.0),
            half_open_probes=st.integers(1, 3),
        ),
        use_admitted_at=st.booleans(),
    )
    def setup(self, breaker_settings: BreakerSettings, use_admitted_at: bool) -> None:
        self.breaker = Breaker("t", breaker_settings, self.recorder)
        self.use_admitted_at = use_admitted_at

    def _observe(self) -> None:
        # Every operation causes at most one transition, and each is reported exactly once.
        if self.breaker.state is not self.observed:
            self.changes += 1
            self.observed = self.breaker.state
        assert len(self.recorder.transitions) == self.changes

    def _admitted_at(self, request: Request) -> float | None:
        return request.admitted_at if self.use_admitted_at else None

    @rule(step=st.floats(0.0, 40.0))
    def advance(self, step: float) -> None:
        self.now += step

    @rule(count=st.integers(1, 5))
    def admit(self, count: int) -> None:
        for _ in range(count):
            state_before = self.breaker.state
            retry_after = self.breaker.retry_after(self.now)
            peeked = self.breaker.peek(self.now)
            self._observe()
            answer = self.breaker.admit(self.now)
            self._observe()
            assert answer is peeked
            assert (retry_after == 0.0) == (answer in ADMITTED)
            last_open = next(
                (t for t in reversed(self.recorder.transitions) if t.new is State.OPEN), None
            )
            if (
                state_before is State.OPEN
                and last_open is not None
                and self.now < last_open.at + self.breaker.settings.open_seconds
            ):
                assert answer in {Admission.DENY_OPEN, Admission.DENY_COOLING}
            if answer is Admission.ALLOW:
                assert self.breaker.state is State.CLOSED
            if answer is Admission.PROBE:
                assert self.breaker.state is State.HALF_OPEN
            if answer in ADMITTED:
                self.in_flight.append(Request(self.now, answer is Admission.PROBE))

    def _finish(self, request: Request, outcome: str) -> None:
        self.in_flight.remove(request)
        admitted_at = self._admitted_at(request)
        if outcome == "success":
            self.breaker.record_success(self.now, request.probe, admitted_at=admitted_at)
        elif outcome == "failure":
            self.breaker.record_failure(
                self.now, request.probe, "upstream_5xx", admitted_at=admitted_at
            )
        elif request.probe:
            self.breaker.release_probe()
        self._observe()

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), outcome=OUTCOMES)
    def finish(self, data: st.DataObject, outcome: str) -> None:
        self._finish(data.draw(st.sampled_from(self.in_flight)), outcome)

    @precondition(lambda self: any(request.probe for request in self.in_flight))
    @rule(data=st.data(), outcome=OUTCOMES)
    def finish_probe(self, data: st.DataObject, outcome: str) -> None:
        probes = [request for request in self.in_flight if request.probe]
        self._finish(data.draw(st.sampled_from(probes)), outcome)

    @rule(seconds=st.floats(0.0, 10.0))
    def cool_down(self, seconds: float) -> None:
        before = self.breaker.snapshot(self.now)["consecutive_failures"]
        self.breaker.cool_down(self.now, seconds)
        self._observe()
        assert self.breaker.snapshot(self.now)["consecutive_failures"] == before
        if self.now + seconds > self.now:
            assert self.breaker.peek(self.now) is Admission.DENY_COOLING
            self._observe()

    @invariant()
    def probes_are_accounted_exactly(self) -> None:
        probes = sum(request.probe for request in self.in_flight)
        assert self.breaker.probes_in_flight == probes
        assert probes <= self.breaker.settings.half_open_probes

    @invariant()
    def transitions_alternate_validly(self) -> None:
        previous = State.CLOSED
        for transition in self.recorder.transitions:
            assert transition.target == "t"
            assert transition.old is previous
            assert (transition.old, transition.new) in VALID_MOVES
            previous = transition.new
        assert previous is self.breaker.state
        assert len(self.recorder.transitions) == self.changes

    @invariant()
    def snapshot_is_consistent(self) -> None:
        snapshot = self.breaker.snapshot(self.now)
        assert snapshot["state"] == self.breaker.state.value
        assert (snapshot["opened_at"] is None) == (self.breaker.state is State.CLOSED)
        assert isinstance(snapshot["retry_after"], float)
        assert snapshot["retry_after"] >= 0.0


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
test_breaker_state_machine = BreakerMachine.TestCase


def test_reset_closes_and_forgets() -> None:
    transitions: list[Transition] = []
    breaker = Breaker("t", BreakerSettings(consecutive_failures=2), transitions.append)
    breaker.record_failure(0.0, False, "x")
    breaker.record_failure(0.1, False, "x")
    breaker.cool_down(0.2, 30)
    assert breaker.state is State.OPEN
    assert breaker.reset(0.3) is True
    assert breaker.state is State.CLOSED
    assert breaker.peek(0.3) is Admission.ALLOW
    assert breaker.retry_after(0.3) == 0
    assert [t.new for t in transitions] == [State.OPEN, State.CLOSED]
    assert breaker.reset(0.4) is False
    board = BreakerBoard(BreakerSettings(consecutive_failures=1))
    board.get("a").record_failure(0.0, False, "x")
    board.get("b")
    assert board.reset(1.0) == 1
