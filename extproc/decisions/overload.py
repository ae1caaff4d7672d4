"""The processor's own admission control: how many requests it takes at once, and when its
event loop is too far behind to take more.

Pure bookkeeping, no I/O: the servicer asks `enter` at a request's first message and calls
`leave` when an admitted request's stream ends; a timer (`extproc.server.loop_lag`) feeds the
loop lag. A refused request took nothing, so it must not `leave`.
"""

from __future__ import annotations

from enum import Enum


class ShedReason(Enum):
    """Why a request was shed (the `reason` label of `gateway_shed_requests_total`)."""

    IN_FLIGHT = "in_flight"  # `processor.max_in_flight` requests are being processed
    LOOP_LAG = "loop_lag"  # the event loop runs later than `processor.max_loop_lag_ms`


class LoadShedder:
    """Requests in flight through this processor, and its event loop's latest lag."""

    __slots__ = ("in_flight", "lag")

    def __init__(self) -> None:
        self.in_flight = 0
        self.lag = 0.0  # seconds the last timer of the lag watch fired late

    def enter(self, max_in_flight: int, max_lag: float | None) -> ShedReason | None:
        """Take a slot for a new request (None), or say why it is shed (nothing taken)."""
        if self.in_flight >= max_in_flight:
            return ShedReason.IN_FLIGHT
        if max_lag is not None and self.lag > max_lag:
            return ShedReason.LOOP_LAG
        self.in_flight += 1
        return None

    def leave(self) -> None:
        """An admitted request's stream ended: its slot is free."""
        self.in_flight -= 1

    def lagged(self, lag: float) -> None:
        """The lag watch measured `lag` seconds of delay."""
        self.lag = max(0.0, lag)
