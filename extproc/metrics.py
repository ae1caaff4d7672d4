"""Prometheus metrics of the processor, in their own registry.

Label values come from config (model, provider) or are status codes, so the
label sets stay bounded; client input never becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from extproc.decisions.breaker import State, Transition
from extproc.decisions.overload import ShedReason
from extproc.telemetry.collectors import LoopCounter, LoopHistogram
from extproc.telemetry.record import RequestRecord

_STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The bucket boundaries the OpenTelemetry GenAI semantic conventions recommend.
ESTIMATE_RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
    163.84,
    327.68,
)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# The processor's own time per ext_proc message: tens of microseconds normally.
PROCESSING_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)
POLICY_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 1.0)
# Distinct values per tag kept as label values (gateway_tagged_requests_total).
MAX_TAG_VALUES = 50
GENAI_LABELS = [
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
]
# `gen_ai.provider.name` per provider type: the conventions' well-known values where they
# have one, the type's own name otherwise.
GENAI_PROVIDER_NAMES = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
    "bedrock": "aws.bedrock",
}
# Distinct response-model label values kept per request model (providers name versions, e.g.
# `gpt-4o-2024-08-06`); the rest are reported as "other", so a provider cannot grow the labels.
MAX_RESPONSE_MODELS = 8
OTHER = "other"
RELOAD_RESULTS = ("success", "rejected", "failed")
PHASES = ("request_headers", "request_body", "response_headers", "response_body")


class Metrics:
    """The processor's counters and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds: RSS is flat under
        # load, and growth that tracks traffic means leaking calls (docs/operations.md).
        ProcessCollector(registry=self.registry)
        # Metrics updated per request are `telemetry.collectors` ones: plain numbers per label
        # set, no locks (prometheus_client's cost ~4.6 µs per histogram observation).
        self.requests = LoopCounter(
            "gateway_requests_total",
            "Requests answered, by caller (tenant, key id), model, provider, HTTP status and "
            'error code ("" for a success).',
            ["tenant", "key_id", "model", "provider", "status", "code"],
            registry=self.registry,
        )
        self.latency = LoopHistogram(
            "gateway_request_duration_seconds",
            "Seconds from request headers to response headers, by model and provider.",
            ["model", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = LoopCounter(
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
        self.shed_requests = Counter(
            "gateway_shed_requests_total",
            "Requests answered 503 overloaded at once because this processor was at capacity, "
            "by reason: in_flight (processor.max_in_flight), loop_lag (processor.max_loop_lag_ms).",
            ["reason"],
            registry=self.registry,
        )
        for reason in ShedReason:
            self.shed_requests.labels(reason.value)  # exported from the start, at 0
        self.requests_in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests this processor admitted that are still in flight (bounded by "
            "processor.max_in_flight).",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "gateway_event_loop_lag_seconds",
            "How late the processor's event loop ran its last lag timer (every 100 ms).",
            registry=self.registry,
        )
        self.processor_failures = Counter(
            "gateway_processor_exceptions_total",
            "Unexpected exceptions inside the processor (answered with a 500).",
            registry=self.registry,
        )

        self.attempts = LoopCounter(
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

        self.processing = LoopHistogram(
            "gateway_processing_seconds",
            "The processor's own time per ext_proc message, by phase: what the gateway adds, "
            "apart from the provider's latency.",
            ["phase"],
            buckets=PROCESSING_BUCKETS,
            registry=self.registry,
        )
        self.processing_phase = {phase: self.processing.labels(phase) for phase in PHASES}
        self.tokens = LoopCounter(
            "gateway_tokens_total",
            "Tokens the providers reported, by caller, model, provider and type "
            "(input, output, cached: the part of input served from the provider's cache).",
            ["tenant", "key_id", "model", "provider", "token_type"],
            registry=self.registry,
        )
        self.cost = LoopCounter(
            "gateway_cost_total",
            "What the answers cost at the configured prices (governance.currency), by caller, "
            "model and provider.",
            ["tenant", "key_id", "model", "provider"],
            registry=self.registry,
        )
        self.rate_limited = LoopCounter(
            "gateway_rate_limited_total",
            "Requests refused with 429 by a limit or budget, by tenant, the limit's scope "
            "(tenant, key, model, tenant_model) and kind (requests, tokens, concurrency, spend).",
            ["tenant", "scope", "limit"],
            registry=self.registry,
        )
        self.usage_estimated = LoopCounter(
            "gateway_usage_estimated_total",
            "Requests charged their admission estimate because the provider never reported "
            "usage (a stream the client left, a provider without usage).",
            ["tenant", "model"],
            registry=self.registry,
        )
        self.prompt_estimate_ratio = LoopHistogram(
            "gateway_prompt_estimate_ratio",
            "Estimated prompt tokens at admission / prompt tokens the provider reported: the "
            "estimator's error on this traffic (1 is exact).",
            [],
            buckets=ESTIMATE_RATIO_BUCKETS,
            registry=self.registry,
        ).labels()
        # Registered only by a Redis backend (`limiter_uses_redis`): absent otherwise, so an
        # alert on 0 never fires for an in-memory gateway.
        self.limiter_redis_up = Gauge(
            "gateway_limiter_redis_up",
            "1 while the Redis of the limits answers, 0 while this processor uses local limits "
            "(or refuses, when fail-closed). Absent without a Redis backend.",
            registry=None,
        )
        self.limiter_redis_failures = Counter(
            "gateway_limiter_redis_failures_total",
            "Redis calls of the limiter that failed or timed out, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.limiter_local_decisions = Counter(
            "gateway_limiter_local_decisions_total",
            "Admissions decided by this processor's own limits because Redis was unreachable.",
            registry=self.registry,
        )
        self.policy_decisions = LoopCounter(
            "gateway_policy_decisions_total",
            "Admission decisions of each configured policy (its id): allow, deny, modify, or "
            "error (raised, overran its deadline or answered nonsense; see on_error).",
            ["policy", "decision"],
            registry=self.registry,
        )
        self.policy_errors = LoopCounter(
            "gateway_policy_errors_total",
            "Policy failures by policy id, stage (check, completed) and reason (raised, "
            "timeout, invalid).",
            ["policy", "stage", "reason"],
            registry=self.registry,
        )
        self.policy_duration = LoopHistogram(
            "gateway_policy_duration_seconds",
            "Seconds each policy's admission check took (the processor's wall clock).",
            ["policy"],
            buckets=POLICY_BUCKETS,
            registry=self.registry,
        )
        self.tagged_requests = LoopCounter(
            "gateway_tagged_requests_total",
            "Requests by policy tag, for the tag names listed in telemetry.metric_tags "
            f"(at most {MAX_TAG_VALUES} values per tag; the rest are 'other').",
            ["tag", "value"],
            registry=self.registry,
        )
        self.cache_requests = LoopCounter(
            "gateway_cache_requests_total",
            "Cacheable requests by model and result: hit, miss (went to the provider), "
            "coalesced (waited for an identical request in flight, then hit), bypass.",
            ["model", "result"],
            registry=self.registry,
        )
        self.cache_stores = LoopCounter(
            "gateway_cache_stores_total",
            "Answers offered to the cache by model and result: stored, too_large, "
            "not_stored (an error, an incomplete answer).",
            ["model", "result"],
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "gateway_cache_errors_total",
            "Cache store operations that failed (Redis unreachable or slow): the request "
            "went to the provider.",
            ["reason"],
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "gateway_cache_entries",
            "Answers held by this processor's in-memory cache (0 with a Redis cache).",
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "gateway_cache_bytes",
            "Bytes of keys and answers held by this processor's in-memory cache.",
            registry=self.registry,
        )
        self.response_streams = Gauge(
            "gateway_response_streams_active",
            "Streamed answers being relayed through the processor (translated streams, and "
            "pass-through ones when usage accounting reads them).",
            registry=self.registry,
        )
        # OpenTelemetry GenAI semantic conventions, under their Prometheus names.
        self.genai_tokens = LoopHistogram(
            "gen_ai_client_token_usage",
            "gen_ai.client.token.usage: tokens per request, by gen_ai.token.type.",
            [*GENAI_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.genai_duration = LoopHistogram(
            "gen_ai_server_request_duration_seconds",
            "gen_ai.server.request.duration: request received to the answer's end (to its "
            "headers when the processor does not read the body).",
            [*GENAI_LABELS, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.genai_ttft = LoopHistogram(
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token: request received to the first chunk of a "
            "successful stream.",
            GENAI_LABELS,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.genai_tpot = LoopHistogram(
            "gen_ai_server_time_per_output_token_seconds",
            "gen_ai.server.time_per_output_token: after the first chunk, seconds per further "
            "output token of a successful stream.",
            GENAI_LABELS,
            buckets=TPOT_BUCKETS,
            registry=self.registry,
        )
        self._response_models: dict[str, set[str]] = {}
        self._tag_values: dict[str, set[str]] = {}
        self.reloads = Counter(
            "gateway_config_reloads_total",
            "Config reloads by result: success; rejected (the new file is invalid or needs a "
            "restart; the old config keeps serving); failed (valid, but Envoy did not apply it "
            "in time; the old config keeps serving).",
            ["result"],
            registry=self.registry,
        )
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)  # every result exported from the start, at 0
        self.config_last_reload_success = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time the config in force was loaded (at start, or by the last good reload).",
            registry=self.registry,
        )
        self.config_last_reload_successful = Gauge(
            "gateway_config_last_reload_successful",
            "1 if the last reload (or the start) applied its config, 0 if refused or failed.",
            registry=self.registry,
        )

    def limiter_uses_redis(self) -> None:
        """Export `gateway_limiter_redis_up` (a Redis backend is configured), starting at 1."""
        if self.registry.get_sample_value("gateway_limiter_redis_up") is None:
            self.registry.register(self.limiter_redis_up)
        self.limiter_redis_up.set(1)

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

    def count_admission(self, in_flight: Callable[[], float], lag: Callable[[], float]) -> None:
        """Report admitted requests in flight and the loop lag by asking at scrape time."""
        self.requests_in_flight.set_function(in_flight)
        self.loop_lag.set_function(lag)

    def request_done(self, record: RequestRecord) -> None:
        """Count one finished request: status, latency, tokens and GenAI timings."""
        model = record.model
        provider = record.provider
        status = record.status
        code = record.code if status >= 400 else ""
        self.requests.labels(record.tenant, record.key_id, model, provider, str(status), code).inc()
        started = record.started
        if record.headers_at is not None:
            self.latency.labels(model, provider).observe(record.headers_at - started)
        if not record.operation or not provider:
            return  # not a model request, or no provider involved: no GenAI figures
        genai = (
            record.operation,
            GENAI_PROVIDER_NAMES.get(record.provider_type, record.provider_type),
            model,
            self._response_model(model, record.response_model),
        )
        if record.ended_at is not None:
            self.genai_duration.labels(*genai, code).observe(record.ended_at - started)
        usage = record.usage
        if usage is not None:
            caller = (record.tenant, record.key_id, model, provider)
            for token_type, count in (
                ("input", usage.prompt_tokens),
                ("output", usage.completion_tokens),
                ("cached", usage.cached_tokens),
            ):
                if count is None:
                    continue
                self.genai_tokens.labels(*genai, token_type).observe(count)
                self.tokens.labels(*caller, token_type).inc(count)
        if record.cost:
            self.cost.labels(record.tenant, record.key_id, model, provider).inc(record.cost)
        first = record.first_chunk_at
        if first is None or status >= 400 or not record.stream:
            return
        self.genai_ttft.labels(*genai).observe(first - started)
        if usage is not None and usage.completion_tokens > 1 and record.ended_at is not None:
            per_token = (record.ended_at - first) / (usage.completion_tokens - 1)
            self.genai_tpot.labels(*genai).observe(per_token)

    def _response_model(self, model: str, response_model: str | None) -> str:
        """The response-model label: the provider's name for it, bounded per request model."""
        if not response_model:
            return ""
        seen = self._response_models.setdefault(model, set())
        if response_model in seen:
            return response_model
        if len(seen) >= MAX_RESPONSE_MODELS or len(response_model) > 128:
            return OTHER
        seen.add(response_model)
        return response_model

    def tagged(self, tags: dict[str, str], names: frozenset[str]) -> None:
        """Count a request's tags whose names `telemetry.metric_tags` lists (bounded values)."""
        for name, value in tags.items():
            if name not in names:
                continue
            seen = self._tag_values.setdefault(name, set())
            if value not in seen:
                if len(seen) >= MAX_TAG_VALUES or len(value) > 64:
                    value = OTHER
                else:
                    seen.add(value)
            self.tagged_requests.labels(name, value).inc()

    def attempt(self, model: str, provider: str, outcome: str) -> None:
        """Count one attempt sent to a provider, by outcome."""
        self.attempts.labels(model, provider, outcome).inc()

    def error(self, code: str) -> None:
        """Count one error answered by the gateway, by code."""
        self.errors.labels(code).inc()
