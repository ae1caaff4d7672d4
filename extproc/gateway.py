"""The gateway: one loaded config turned into the lookup tables the hot path reads.

Built at start-up and again on each reload: models by name, their targets (with ids, adapters,
credentials and breakers), the authenticator, limits, metrics. No pydantic per request. A
gateway never changes once built; a reload builds a new one (`LiveGateways` holds the one in
force and the older ones still finishing their requests).
"""

from __future__ import annotations

from dataclasses import dataclass

from extproc.config.credentials import Credential
from extproc.config.loading import LoadedConfig
from extproc.config.schema import (
    GatewayConfig,
    ModelConfig,
    ProviderConfig,
    ResilienceConfig,
    policy_lists,
)
from extproc.config.topology import (
    breaker_key,
    inline_translation,
    model_lead,
    model_route_ids,
    target_id,
    target_priority,
)
from extproc.decisions.auth import Authenticator
from extproc.decisions.breaker import Admission, Breaker, BreakerBoard, BreakerSettings
from extproc.decisions.openai_request import Endpoint
from extproc.decisions.provider_health import ProviderHealth
from extproc.errors import GatewayError
from extproc.governance.governor import GovernanceState, Governor
from extproc.metrics import Metrics
from extproc.pipeline.cached import CacheState
from extproc.policies.chain import BoundPolicy, PolicyChain, chain_for
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
    # Several targets: the one whose first attempt the downstream filter translates.
    lead: Target | None = None
    # Read pass-through answers for their usage (`telemetry.usage_accounting`).
    account_usage: bool = False
    # Deterministic answers are served again from the response cache.
    cache: bool = False

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
    """Everything a request pipeline needs, prepared from one loaded config.

    `previous` (the gateway a reload replaces) hands over what outlives a config: the breakers
    of targets that still exist (same provider and upstream model), the health of providers
    that are still checked, and the telemetry (one metrics registry and the open request
    records, shared by every gateway of the processor).
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        metrics: Metrics | None = None,
        previous: Gateway | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        config: GatewayConfig = loaded.config
        self.loaded = loaded
        self.config = config
        access_log = config.telemetry.access_log
        if telemetry is None and previous is not None:
            telemetry = previous.telemetry  # one per processor: records outlive a swap
        self.telemetry: Telemetry = telemetry or Telemetry(
            metrics,
            access_log.enabled,
            access_log.include_content,
            start_tracing(config.telemetry.tracing),
        )
        self.metrics: Metrics = self.telemetry.metrics
        # ext_proc streams open on this gateway (the servicer counts them): a reload keeps the
        # old gateway's routes and clusters in Envoy until this reaches 0.
        self.in_flight = 0
        self.auth = Authenticator(config)
        # Limits, budgets and usage: the stores outlive a config (one per processor).
        self.governance: GovernanceState = (
            previous.governance if previous is not None else GovernanceState(loaded, self.metrics)
        )
        # The response cache: its store outlives a config (one per processor), and exists
        # only once a config turned the cache on for some model.
        self.cache: CacheState | None = previous.cache if previous is not None else None
        if self.cache is None and _caches(config):
            self.cache = CacheState(loaded, self.metrics)
        self.cache_wait = config.cache.wait_seconds
        self.max_body_bytes = config.limits.max_body_bytes
        # Envoy's buffer: the largest response body the processor may ask it to buffer.
        self.buffer_bytes = config.limits.buffer_bytes
        self.max_json_depth = config.limits.max_json_depth
        self.default_timeout = config.limits.default_timeout_seconds
        self.per_try_timeout = config.resilience.per_try_timeout_seconds
        self.max_in_flight = config.processor.max_in_flight
        lag_ms = config.processor.max_loop_lag_ms
        self.max_loop_lag = None if lag_ms is None else lag_ms / 1000
        self.breakers: BreakerBoard = BreakerBoard(
            breaker_settings(config.resilience),
            on_transition=self.metrics.breaker_transition,
            previous=previous.breakers if previous else None,
        )
        providers = {p.name: p for p in config.providers}
        self.provider_health = {
            p.name: _carried_health(p, previous) or ProviderHealth(p.name) for p in config.providers
        }
        route_ids = model_route_ids(config)
        self.governor = Governor(loaded, self.governance, self.metrics, route_ids)
        # Answers are read for their usage when accounting is on, and whenever limits, budgets
        # or prices need it.
        self.account_usage = (
            config.telemetry.usage_accounting
            or self.governor.rules.needs_usage
            or bool(self.governor.prices)
        )
        self.models: dict[str, ModelRoute] = {}
        self.targets: dict[str, Target] = {}
        for model in config.models:
            route = self._model_route(model, route_ids[model.name], providers, loaded.credentials)
            self.models[model.name] = route
            self.targets.update((t.id, t) for t in route.targets)
        # Policies: each configured use built once (here, so a policy that fails to start fails
        # the load), chained per (tenant, model) on first use.
        self.telemetry.metric_tags = frozenset(config.telemetry.metric_tags)
        self._policies: dict[int, BoundPolicy] = {}
        for _, policies in policy_lists(config):
            for policy in policies:
                self._policies[id(policy)] = BoundPolicy.of(policy)
        self._tenant_policies = {t.name: t.policies for t in config.tenants}
        self._model_policies = {m.name: m.policies for m in config.models}
        self._chains: dict[tuple[str, str], PolicyChain | None] = {}
        # Every breaker is taken over by now; keeping the link would keep every older gateway
        # alive through a chain of boards.
        self.breakers.forget_previous()
        self.metrics.breakers_known(t.breaker.target for t in self.targets.values())
        self.created = 0

    def policy_chain(self, tenant: str, model: str) -> PolicyChain | None:
        """The policies of `tenant`'s requests to `model` (None: there are none)."""
        key = (tenant, model)
        try:
            return self._chains[key]
        except KeyError:
            configs = [
                *self.config.policies,
                *self._tenant_policies.get(tenant, ()),
                *self._model_policies.get(model, ()),
            ]
            chain = self._chains[key] = chain_for(configs, self.metrics, self._policies)
            return chain

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
            account_usage=self.account_usage,
            cache=self.config.cache.enabled if model.cache is None else model.cache,
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
        lead = model_lead(self.config, model)
        route.lead = targets[lead] if lead is not None else None
        caps = [t.provider.timeout_seconds for t in targets]
        if all(cap is not None for cap in caps):
            route.timeout_cap = max(cap for cap in caps if cap is not None)
        return route


def _caches(config: GatewayConfig) -> bool:
    """Whether some model's answers are cached."""
    return any(config.cache.enabled if m.cache is None else m.cache for m in config.models)


def _carried_health(provider: ProviderConfig, previous: Gateway | None) -> ProviderHealth | None:
    """The previous gateway's health of `provider` when it is still checked (else start over)."""
    if previous is None or provider.health_check is None:
        return None
    return previous.provider_health.get(provider.name)


class LiveGateways:
    """The gateway in force and the older ones a reload replaced that still have streams open.

    New streams use `current`; a stream keeps the gateway it started with. An upstream attempt
    names its target by id, which only the gateway that routed its request may know, so
    `target` looks in every live gateway, newest first, and last in `pending`: the gateway a
    reload is about to put in force, whose new clusters Envoy health-checks while they warm.
    """

    __slots__ = ("current", "pending", "retiring")

    def __init__(self, gateway: Gateway) -> None:
        self.current = gateway
        self.retiring: list[Gateway] = []  # newest first
        self.pending: Gateway | None = None

    def all(self) -> list[Gateway]:
        """Every live gateway, the current one first, then the older ones newest first."""
        return [self.current, *self.retiring]

    def target(self, target_id: str) -> tuple[Gateway, Target] | None:
        """The target with this id and the gateway it belongs to (the newest that knows it)."""
        for gateway in (self.current, *self.retiring, *((self.pending,) if self.pending else ())):
            found = gateway.targets.get(target_id)
            if found is not None:
                return gateway, found
        return None

    def swap(self, gateway: Gateway) -> Gateway:
        """Put `gateway` in force; the one it replaces retires (returned)."""
        old = self.current
        self.current = gateway
        self.retiring.insert(0, old)
        return old

    def retire(self, gateway: Gateway) -> None:
        """Forget a retiring gateway (its streams have ended, or its grace is over)."""
        if gateway in self.retiring:
            self.retiring.remove(gateway)
