"""Prometheus metrics of the processor, in their own registry.

Label values come from config (model, provider) or are status codes, so the
label sets stay bounded; client input never becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from extproc.decisions.breaker import State, Transition

_STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The processor's counters and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds: RSS is flat under
        # load, and growth that tracks traffic means leaking calls (docs/operations.md).
        ProcessCollector(registry=self.registry)
        # Labelled children by label values: `labels()` costs a lock and a lookup per call,
        # too much on the hot path. Label values are bounded (see the module docstring).
        self._children: dict[tuple[Any, ...], Any] = {}
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered, by model, provider and HTTP status.",
            ["model", "provider", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Seconds from request headers to response headers, by model and provider.",
            ["model", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "gateway_errors_total",
            "Errors answered by the gateway itself, by error code.",
            ["code"],
            registry=self.registry,
        )
        self.streams_active = Gauge(
            "gateway_extproc_streams_active",
            "ext_proc streams (one per HTTP request) currently open.",
            registry=self.registry,
        )
        self.streams_cancelled = Counter(
            "gateway_extproc_streams_cancelled_total",
            "ext_proc streams Envoy cancelled before the processor finished them (client gone, "
            "timeouts); normal requests end without one.",
            registry=self.registry,
        )
        self.processor_failures = Counter(
            "gateway_processor_exceptions_total",
            "Unexpected exceptions inside the processor (answered with a 500).",
            registry=self.registry,
        )

        self.attempts = Counter(
            "gateway_upstream_attempts_total",
            "Attempts sent to providers (one request may make several), by target and outcome.",
            ["model", "provider", "outcome"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "gateway_breaker_state",
            "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
            ["target"],
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions_total",
            "Circuit breaker state changes per target, by new state.",
            ["target", "state"],
            registry=self.registry,
        )

        self.provider_healthy = Gauge(
            "gateway_provider_healthy",
            "Active health check result per provider with health_check configured (1 healthy).",
            ["provider"],
            registry=self.registry,
        )

    def breakers_known(self, targets: Iterable[str]) -> None:
        """Export every configured breaker (closed until a transition says otherwise).

        Without it a breaker's series appears only at its first transition, and "every breaker
        is open" could not be told from "the only breaker that ever changed is open".
        """
        for target in targets:
            self.breaker_state.labels(target)  # new children start at 0; known ones keep theirs

    def breaker_transition(self, transition: Transition) -> None:
        """Record a breaker state change (called by the breaker board)."""
        self.breaker_state.labels(transition.target).set(_STATE_VALUES[transition.new])
        self.breaker_transitions.labels(transition.target, transition.new.value).inc()

    def count_streams(self, active: Callable[[], float]) -> None:
        """Report open ext_proc streams by asking `active` at scrape time."""
        self.streams_active.set_function(active)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, model: str, provider: str, status: int, seconds: float | None) -> None:
        """Count one answered request and, when known, its latency."""
        self._child(self.requests, model, provider, str(status)).inc()
        if seconds is not None:
            self._child(self.latency, model, provider).observe(seconds)

    def attempt(self, model: str, provider: str, outcome: str) -> None:
        """Count one attempt sent to a provider, by outcome."""
        self._child(self.attempts, model, provider, outcome).inc()

    def error(self, code: str) -> None:
        """Count one error answered by the gateway, by code."""
        self._child(self.errors, code).inc()
