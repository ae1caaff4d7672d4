"""Which limits and budgets apply to a request, from the config (pure, no I/O).

Scopes: the tenant, the key (within its tenant), the model (across tenants) and the tenant on
the model. Each limit is a `Rule` with a storage key that names its scope; a request is admitted
only if every rule that applies to it has room for what it asks (`Check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from extproc.config.schema import Budget, GatewayConfig, RateLimits

WINDOW_MS = 60_000  # requests and tokens per minute: a sliding 60-second window


class Kind(StrEnum):
    """What a rule counts."""

    REQUESTS = "requests"  # per minute, sliding window
    TOKENS = "tokens"  # input + output per minute, sliding window, reserved then settled
    CONCURRENCY = "concurrency"  # requests in flight (a lease each, released at the end)
    SPEND = "spend"  # per calendar day or month (UTC), currency or tokens


class Scope(StrEnum):
    """Whose limit a rule is."""

    TENANT = "tenant"
    KEY = "key"
    MODEL = "model"
    TENANT_MODEL = "tenant_model"


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit: its storage key (without the store's prefix), what it counts and how much."""

    key: str
    scope: Scope
    kind: Kind
    limit: float
    who: str  # for messages: "tenant 'acme'", "key 'ci' of tenant 'acme'", ...
    # Budgets only: "day" or "month", and whether they count currency or tokens.
    period: str = ""
    unit: str = ""

    @property
    def code(self) -> str:
        """The kind as the Redis scripts know it: r, t, c, bd (daily budget), bm (monthly)."""
        return _CODES[self.kind] + self.period[:1]

    @property
    def counts_tokens(self) -> bool:
        """True when the rule counts tokens (a token limit, a token budget): settled to usage."""
        return self.kind is Kind.TOKENS or (self.kind is Kind.SPEND and self.unit == "tokens")


_CODES = {Kind.REQUESTS: "r", Kind.TOKENS: "t", Kind.CONCURRENCY: "c", Kind.SPEND: "b"}


@dataclass(frozen=True, slots=True)
class Check:
    """A rule and what this request asks of it."""

    rule: Rule
    amount: float


def _rate_rules(base: str, scope: Scope, who: str, limits: RateLimits) -> list[Rule]:
    rules = []
    for suffix, kind, limit in (
        ("rpm", Kind.REQUESTS, limits.requests_per_minute),
        ("tpm", Kind.TOKENS, limits.tokens_per_minute),
        ("conc", Kind.CONCURRENCY, limits.concurrent_requests),
    ):
        if limit is not None:
            rules.append(Rule(f"{base}:{suffix}", scope, kind, limit, who))
    return rules


def _budget_rules(base: str, scope: Scope, who: str, budgets: list[Budget]) -> list[Rule]:
    return [
        Rule(
            f"{base}:spend:{b.unit}:{b.period}",
            scope,
            Kind.SPEND,
            b.limit,
            who,
            b.period,
            b.unit,
        )
        for b in budgets
    ]


def tenant_base(tenant: str) -> str:
    """Storage key base of a tenant (usage totals and its rules)."""
    return f"t:{tenant}"


def key_base(tenant: str, key_id: str) -> str:
    """Storage key base of one key of a tenant."""
    return f"k:{tenant}:{key_id}"


class RuleBook:
    """Every rule of a config, looked up per (tenant, key id, model); no rule: an empty tuple."""

    __slots__ = ("_by_key", "_by_model", "_by_tenant", "_by_tenant_model", "_cache")

    def __init__(self, config: GatewayConfig) -> None:
        self._by_tenant: dict[str, list[Rule]] = {}
        self._by_key: dict[tuple[str, str], list[Rule]] = {}
        self._by_model: dict[str, list[Rule]] = {}
        self._by_tenant_model: dict[tuple[str, str], list[Rule]] = {}
        for tenant in config.tenants:
            base = tenant_base(tenant.name)
            who = f"tenant '{tenant.name}'"
            rules = _rate_rules(base, Scope.TENANT, who, tenant.limits)
            rules += _budget_rules(base, Scope.TENANT, who, tenant.budgets)
            if rules:
                self._by_tenant[tenant.name] = rules
            for model, limits in tenant.model_limits.items():
                scoped = _rate_rules(
                    f"tm:{tenant.name}:{model}",
                    Scope.TENANT_MODEL,
                    f"tenant '{tenant.name}' on model '{model[:256]}'",
                    limits,
                )
                if scoped:
                    self._by_tenant_model[(tenant.name, model)] = scoped
            for key in tenant.all_keys():
                key_id = key.key_id
                kbase = key_base(tenant.name, key_id)
                who = f"key '{key_id}' of tenant '{tenant.name}'"
                rules = _rate_rules(kbase, Scope.KEY, who, key.limits)
                rules += _budget_rules(kbase, Scope.KEY, who, key.budgets)
                if rules:
                    self._by_key[(tenant.name, key_id)] = rules
        for model_config in config.models:
            name = model_config.name
            rules = _rate_rules(
                f"m:{name}", Scope.MODEL, f"model '{name[:256]}'", model_config.limits
            )
            if rules:
                self._by_model[model_config.name] = rules
        self._cache: dict[tuple[str, str, str], tuple[Rule, ...]] = {}

    @property
    def needs_usage(self) -> bool:
        """True when a rule counts tokens or spend (settled to the answers' usage)."""
        groups = (self._by_tenant, self._by_key, self._by_model, self._by_tenant_model)
        return any(
            rule.kind in (Kind.TOKENS, Kind.SPEND)
            for group in groups
            for rules in group.values()
            for rule in rules
        )

    def for_request(self, tenant: str, key_id: str, model: str) -> tuple[Rule, ...]:
        """The rules that apply to a request of `tenant` through `key_id` on `model`."""
        lookup = (tenant, key_id, model)
        found = self._cache.get(lookup)
        if found is None:
            found = (
                *self._by_tenant.get(tenant, ()),
                *self._by_key.get((tenant, key_id), ()),
                *self._by_model.get(model, ()),
                *self._by_tenant_model.get((tenant, model), ()),
            )
            # Bounded by the config's tenants x keys x models, so the cache cannot grow past it.
            self._cache[lookup] = found
        return found

    def tenant_rules(self, tenant: str) -> list[Rule]:
        """The tenant's rules, and its rules on each model (for `/usage`)."""
        rules = list(self._by_tenant.get(tenant, ()))
        for (name, _), scoped in self._by_tenant_model.items():
            if name == tenant:
                rules += scoped
        return rules

    def key_rules(self, tenant: str, key_id: str) -> list[Rule]:
        """One key's own rules (for `/usage`)."""
        return list(self._by_key.get((tenant, key_id), ()))
