"""The gateway: one loaded config turned into the lookup tables the hot path reads.

Built once at start-up: models by name, their targets (with ids, adapters, credentials and
breakers), the authenticator, limits, metrics. No pydantic per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.config.credentials import Credential
from extproc.config.loading import LoadedConfig
from extproc.config.schema import GatewayConfig, ModelConfig, ProviderConfig, ResilienceConfig
from extproc.config.topology import (
    breaker_key,
    inline_translation,
    model_route_ids,
    target_id,
    target_priority,
)
from extproc.decisions.auth import Authenticator
from extproc.decisions.breaker import Admission, Breaker, BreakerBoard, BreakerSettings
from extproc.decisions.openai_request import Endpoint
from extproc.decisions.provider_health import ProviderHealth
from extproc.errors import GatewayError
from extproc.metrics import Metrics
from extproc.providers import ProviderAdapter, adapter_for
from extproc.telemetry.reporter import Telemetry, start_tracing

_AVAILABLE = (Admission.ALLOW, Admission.PROBE)


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved model target: where it goes, how to talk to it, its breaker."""

    id: str  # the Envoy endpoint's gw.target metadata and health-check host
    route: ModelRoute
    provider: ProviderConfig
    upstream_model: str
    weight: int
    priority: int
    adapter_class: type[ProviderAdapter]
    credential: Credential | None
    breaker: Breaker
    health: ProviderHealth  # the provider's active health check (healthy when none)

    def admission(self, now: float) -> Admission:
        """May this target take traffic now? (Breaker and provider health, no slot taken.)"""
        if not self.health.healthy:
            return Admission.DENY_OPEN
        return self.breaker.peek(now)

    def adapter(self) -> ProviderAdapter:
        """A fresh per-request adapter for this target."""
        route = self.route
        return self.adapter_class(
            self.provider,
            self.credential,
            self.upstream_model,
            route.default_max_tokens,
            account_usage=route.account_usage,
        )


@dataclass(slots=True)
class ModelRoute:
    """A client-facing model, its Envoy route id and the targets that can serve it."""

    name: str
    route_id: str
    endpoint: Endpoint  # the one endpoint its kind serves (chat or embeddings)
    owned_by: str
    default_max_tokens: int
    targets: tuple[Target, ...] = ()
    # The 400 when a target's wire API cannot serve this model's endpoint (checked once).
    unsupported: GatewayError | None = None
    timeout_cap: float | None = None  # largest provider timeout cap, if all targets have one
    # Translated by the downstream filter (one target) rather than by each attempt.
    inline: bool = False
    # Read pass-through answers for their usage (`telemetry.usage_accounting`).
    account_usage: bool = False

    def availability(self, now: float) -> tuple[bool, float, bool]:
        """(any target may take traffic, shortest retry-after, all unavailable ones cooling)."""
        waits: list[float] = []
        cooling_only = True
        for target in self.targets:
            admission = target.admission(now)
            if admission in _AVAILABLE:
                return True, 0.0, False
            if admission is not Admission.DENY_COOLING:
                cooling_only = False
            waits.append(target.breaker.retry_after(now))
        return False, min(waits, default=0.0), cooling_only


def breaker_settings(resilience: ResilienceConfig) -> BreakerSettings:
    """Breaker settings from the config's resilience section."""
    return BreakerSettings(
        consecutive_failures=resilience.breaker_consecutive_failures,
        failure_rate=resilience.breaker_failure_rate,
        window_seconds=resilience.breaker_window_seconds,
        min_requests=resilience.breaker_min_requests,
        open_seconds=resilience.breaker_open_seconds,
        half_open_probes=resilience.breaker_half_open_probes,
    )


class Gateway:
    """Everything a request pipeline needs, prepared from one loaded config."""

    def __init__(
        self,
        loaded: LoadedConfig,
        metrics: Metrics | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        config: GatewayConfig = loaded.config
        self.config = config
        access_log = config.telemetry.access_log
        self.telemetry = telemetry or Telemetry(
            metrics,
            access_log.enabled,
            access_log.include_content,
            start_tracing(config.telemetry.tracing),
        )
        self.metrics = self.telemetry.metrics
        self.auth = Authenticator(config)
        self.max_body_bytes = config.limits.max_body_bytes
        self.max_json_depth = config.limits.max_json_depth
        self.default_timeout = config.limits.default_timeout_seconds
        self.per_try_timeout = config.resilience.per_try_timeout_seconds
        self.breakers = BreakerBoard(
            breaker_settings(config.resilience), on_transition=self.metrics.breaker_transition
        )
        providers = {p.name: p for p in config.providers}
        self.provider_health = {name: ProviderHealth(name) for name in providers}
        route_ids = model_route_ids(config)
        self.models: dict[str, ModelRoute] = {}
        self.targets: dict[str, Target] = {}
        for model in config.models:
            route = self._model_route(model, route_ids[model.name], providers, loaded.credentials)
            self.models[model.name] = route
            self.targets.update((t.id, t) for t in route.targets)
        self.metrics.breakers_known(t.breaker.target for t in self.targets.values())
        self.created = 0

    def _model_route(
        self,
        model: ModelConfig,
        route_id: str,
        providers: dict[str, ProviderConfig],
        credentials: dict[str, Credential],
    ) -> ModelRoute:
        route = ModelRoute(
            name=model.name,
            route_id=route_id,
            endpoint=Endpoint(model.kind),
            owned_by=model.owned_by,
            default_max_tokens=model.default_max_tokens,
            account_usage=self.config.telemetry.usage_accounting,
        )
        targets = []
        for index, spec in enumerate(model.targets):
            provider = providers[spec.provider]
            targets.append(
                Target(
                    id=target_id(route_id, index),
                    route=route,
                    provider=provider,
                    upstream_model=spec.model,
                    weight=spec.weight,
                    priority=target_priority(spec, index),
                    adapter_class=adapter_for(provider.type),
                    credential=credentials.get(spec.provider),
                    breaker=self.breakers.get(breaker_key(provider.name, spec.model)),
                    health=self.provider_health[provider.name],
                )
            )
        route.targets = tuple(targets)
        route.unsupported = next(
            (
                error
                for t in targets
                if (error := t.adapter_class.unsupported(route.endpoint, t.provider)) is not None
            ),
            None,
        )
        route.inline = inline_translation(len(targets))
        caps = [t.provider.timeout_seconds for t in targets]
        if all(cap is not None for cap in caps):
            route.timeout_cap = max(cap for cap in caps if cap is not None)
        return route
