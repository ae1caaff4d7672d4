"""A request's governance: admission against its limits and budgets, then settlement.

At admission the processor reserves what the request may use: its prompt estimate plus its
`max_tokens` (or the model's reserve) for token limits and token budgets, that many tokens at
the model's dearest target price for spend budgets, one request, one concurrency lease. A request
that does not fit gets 429 before any provider call. When the request's record closes (the
answer ended, whatever the way), the reservation is settled: to the usage the provider reported,
or, when a request reached a provider and ended without a final report (a stream the client
left), to the reservation itself ("an estimate that stood", counted).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from extproc.config.loading import LoadedConfig
from extproc.config.schema import GatewayConfig, Price
from extproc.config.topology import target_id
from extproc.errors import GatewayError
from extproc.governance.estimate import PromptEstimator
from extproc.governance.memory import MemoryStore
from extproc.governance.rules import Check, Kind, Rule, RuleBook, key_base, tenant_base
from extproc.governance.store import Decision, RuleState, Settlement
from extproc.metrics import Metrics

if TYPE_CHECKING:
    from extproc.governance.redis_store import RedisStore
    from extproc.telemetry.record import RequestRecord


# A concurrency lease outlives its request's timeout by this much, then lapses by itself (a
# processor that died holding it).
LEASE_MARGIN_MS = 60_000


class GovernanceState:
    """What outlives a config: the stores (memory, Redis) and settlements in flight."""

    def __init__(self, loaded: LoadedConfig, metrics: Metrics) -> None:
        governance = loaded.config.governance
        self.metrics = metrics
        self.memory = MemoryStore()
        self.redis: RedisStore | None = None
        if governance.backend == "redis":
            url = loaded.redis_url or governance.redis.url
            if url is None:
                raise ValueError("governance.backend is redis but no Redis URL is known")
            # Imported only for a Redis backend: the redis package loads OpenTelemetry.
            from extproc.governance.redis_store import RedisStore

            self.redis = RedisStore(
                governance.redis,
                url,
                self.memory,
                governance.on_redis_failure == "deny",
                self._redis_state,
            )
            metrics.limiter_uses_redis()
        self._settling: set[asyncio.Task[None]] = set()

    def _redis_state(self, up: bool, what: str) -> None:
        self.metrics.limiter_redis_up.set(1 if up else 0)
        if not up:
            self.metrics.limiter_redis_failures.labels(what).inc()

    def settle(self, settlement: Settlement) -> None:
        """Apply a settlement: at once in memory, in a task on Redis."""
        if self.redis is None:
            self.memory.settle(settlement)
            return
        task = asyncio.get_running_loop().create_task(self.redis.settle(settlement))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def drain(self) -> None:
        """Wait for the settlements in flight (the processor is stopping), then close Redis."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        if self.redis is not None:
            await self.redis.close()


class Reservation:
    """What one admitted request holds until its record closes."""

    __slots__ = (
        "checks",
        "decision",
        "governor",
        "output",
        "prompt",
        "rid",
        "settled",
    )

    def __init__(
        self,
        governor: Governor,
        rid: str,
        checks: tuple[Check, ...],
        prompt: int,
        output: int,
        decision: Decision | None,
    ) -> None:
        self.governor = governor
        self.rid = rid
        self.checks = checks
        self.prompt = prompt
        self.output = output
        self.decision = decision
        self.settled = False

    @property
    def redis(self) -> bool:
        """Settled where it was decided: in Redis, unless this processor admitted it locally
        (Redis was down). With no rule to check, only usage totals: Redis too, when shared."""
        decision = self.decision
        return self.governor.redis_backed and (decision is None or not decision.local)

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the tightest request and token limits."""
        if self.decision is None:
            return {}
        return rate_limit_headers(self.checks, self.decision.states)

    def settle(self, record: RequestRecord) -> None:
        """Charge what the request used (once), and add it to the usage totals."""
        if self.settled:
            return
        self.settled = True
        self.governor.settle(self, record)


class Governor:
    """The governance of one config: its rules, prices and estimator, on the shared stores."""

    def __init__(
        self,
        loaded: LoadedConfig,
        state: GovernanceState,
        metrics: Metrics,
        route_ids: dict[str, str],
    ) -> None:
        config: GatewayConfig = loaded.config
        self.state = state
        self.metrics = metrics
        self.rules = RuleBook(config)
        # The backend is restart-only: the shared state has a Redis store exactly when it is on.
        self.redis_backed = state.redis is not None
        governance = config.governance
        self.estimator = PromptEstimator(
            governance.chars_per_token, governance.non_ascii_chars_per_token
        )
        # Per target id (`record.target`): its price; per model: the dearest of its targets'.
        self.prices: dict[str, Price] = {}
        self.dearest: dict[str, Price] = {}
        self.reserve_output: dict[str, int] = {}
        for model in config.models:
            self.reserve_output[model.name] = (
                0
                if model.kind == "embeddings"
                else model.reserve_output_tokens
                if model.reserve_output_tokens is not None
                else model.default_max_tokens
            )
            for index, target in enumerate(model.targets):
                if target.price is not None:
                    self.prices[target_id(route_ids[model.name], index)] = target.price
            prices = [t.price for t in model.targets if t.price is not None]
            if prices:
                self.dearest[model.name] = Price(
                    input_per_million=max(p.input_per_million for p in prices),
                    output_per_million=max(p.output_per_million for p in prices),
                )
        self.currency = governance.currency

    # -- admission --------------------------------------------------------------------------

    def admit(
        self,
        tenant: str,
        key_id: str,
        model: str,
        body: dict[str, object],
        raw_size: int,
        max_tokens: int | None,
        timeout: float,
    ) -> Reservation | Awaitable[Reservation]:
        """Reserve what the request may use on every rule that applies (429 if one has no
        room). Returns the reservation, or an awaitable of it when the rules live in Redis."""
        rules = self.rules.for_request(tenant, key_id, model)
        output = max_tokens if max_tokens is not None else self.reserve_output.get(model, 0)
        if not rules:  # nothing to check: only the usage totals, at settlement
            return Reservation(self, "", (), 0, output, None)
        rid = os.urandom(8).hex()
        prompt = self.estimator.prompt(body, raw_size)  # only when a rule needs it
        checks = tuple(Check(rule, self._amount(rule, model, prompt, output)) for rule in rules)
        lease_ms = int(timeout * 1000) + LEASE_MARGIN_MS
        pending = Reservation(self, rid, checks, prompt, output, None)
        redis = self.state.redis
        if redis is not None:
            return self._admit_redis(redis, tenant, pending, lease_ms)
        return self._decided(tenant, pending, self.state.memory.admit(checks, rid, lease_ms))

    async def _admit_redis(
        self, redis: RedisStore, tenant: str, pending: Reservation, lease_ms: int
    ) -> Reservation:
        decision = await redis.admit(pending.checks, pending.rid, lease_ms)
        return self._decided(tenant, pending, decision)

    def _amount(self, rule: Rule, model: str, prompt: int, output: int) -> float:
        if rule.counts_tokens:
            return float(prompt + output)
        if rule.kind is Kind.SPEND:
            price = self.dearest.get(model)
            return cost(price, prompt, output, 0) if price is not None else 0.0
        return 1.0

    def _decided(self, tenant: str, pending: Reservation, decision: Decision) -> Reservation:
        """The reservation of an admitted request (with the store's decision), or the 429."""
        if decision.local:
            self.metrics.limiter_local_decisions.inc()
        checks = pending.checks
        if not decision.allowed:
            rule = checks[decision.denied].rule
            self.metrics.rate_limited.labels(tenant, rule.scope.value, rule.kind.value).inc()
            raise refusal(checks, decision, pending.prompt + pending.output, self.currency)
        pending.decision = decision
        return pending

    # -- settlement -------------------------------------------------------------------------

    def settle(self, reservation: Reservation, record: RequestRecord) -> None:
        """Settle `reservation` to what `record` says the request used."""
        usage = record.usage
        reached = record.attempts > 0 and record.provider != ""
        # A stream cut short (the client left) may hold counts so far (Anthropic's
        # message_start, Gemini's running usageMetadata), not what the provider went on to
        # generate: its output is not known.
        partial = usage is not None and record.stream and not record.answer_complete
        stood = False
        if usage is not None and not partial:
            prompt, output = usage.prompt_tokens, usage.completion_tokens
            cached = usage.cached_tokens or 0
            if reservation.prompt and prompt:
                self.metrics.prompt_estimate_ratio.observe(reservation.prompt / prompt)
        elif reached and (200 <= record.status < 300 or record.status == 499):
            # It reached a provider, which said nothing (final) of its usage: the estimate
            # stands, but for the prompt count a cut stream did report.
            prompt, output, cached = reservation.prompt, reservation.output, 0
            if usage is not None:
                prompt, cached = usage.prompt_tokens, usage.cached_tokens or 0
                output = max(output, usage.completion_tokens)
            stood = True
            self.metrics.usage_estimated.labels(record.tenant, record.model).inc()
        else:
            prompt = output = cached = 0
        price = self.prices.get(record.target)
        spent = cost(price, prompt, output, cached) if price is not None else 0.0
        record.cost = spent
        amounts = []
        # A cache hit used no provider: it counts as a request, never as tokens or spend.
        hit = record.cache == "hit"
        for check in reservation.checks:
            rule = check.rule
            if rule.counts_tokens:
                amounts.append(0.0 if hit else float(prompt + output))
            elif rule.kind is Kind.SPEND:
                amounts.append(spent)
            else:
                amounts.append(check.amount)
        fields = [
            ("requests", 1.0),
            ("input_tokens", float(prompt)),
            ("output_tokens", float(output)),
            ("cached_tokens", float(cached)),
            ("cost", spent),
            ("cache_hits", 1.0 if hit else 0.0),
        ]
        if stood:
            fields.append(("estimated_requests", 1.0))
        usage_rows = [
            (base, name, value)
            for base in (tenant_base(record.tenant), key_base(record.tenant, record.key_id))
            for name, value in fields
            if value
        ]
        periods = reservation.decision.periods if reservation.decision else []
        settlement = Settlement(reservation.rid, reservation.checks, amounts, periods, usage_rows)
        if reservation.redis:
            self.state.settle(settlement)
        else:
            self.state.memory.settle(settlement)

    # -- reading ----------------------------------------------------------------------------

    async def usage_report(self, tenants: list[tuple[str, list[str]]]) -> dict[str, object]:
        """`/usage`: per tenant and key, its windows now and its totals."""
        out: dict[str, object] = {}
        for tenant, key_ids in tenants:
            keys = {}
            for key_id in key_ids:
                keys[key_id] = await self._report(
                    key_base(tenant, key_id), self.rules.key_rules(tenant, key_id)
                )
            entry = await self._report(tenant_base(tenant), self.rules.tenant_rules(tenant))
            entry["keys"] = keys
            out[tenant] = entry
        return {"currency": self.currency, "backend": self._backend(), "tenants": out}

    def _backend(self) -> str:
        redis = self.state.redis
        if redis is None:
            return "memory"
        return "redis" if redis.up else "redis (unreachable: local limits)"

    async def _report(self, base: str, rules: list[Rule]) -> dict[str, object]:
        checks = [Check(rule, 0.0) for rule in rules]
        redis = self.state.redis
        totals: dict[str, float]
        states: list[RuleState]
        if redis is not None:
            totals = await redis.usage(base)
            states = await redis.states(checks)
        else:
            totals = self.state.memory.usage(base)
            states = [self.state.memory.state(c) for c in checks]
        windows = [
            {
                "scope": rule.scope.value,
                "limit": rule.kind.value,
                "key": rule.key,
                **({"period": rule.period, "unit": rule.unit} if rule.period else {}),
                "max": state.limit,
                "used": state.limit - state.remaining,
                "remaining": max(0.0, state.remaining),
                "resets_in_seconds": state.reset_ms / 1000,
            }
            for rule, state in zip(rules, states, strict=True)
        ]
        return {"totals": totals, "windows": windows}


def cost(price: Price, prompt: int, output: int, cached: int) -> float:
    """What these tokens cost at `price` (prompt tokens include the cached ones)."""
    cached_price = price.cached_input_per_million
    if cached_price is None:
        cached_price = price.input_per_million
    uncached = max(0, prompt - cached)
    return (
        uncached * price.input_per_million
        + cached * cached_price
        + output * price.output_per_million
    ) / 1_000_000


def refusal(
    checks: tuple[Check, ...], decision: Decision, tokens: int, currency: str
) -> GatewayError:
    """The 429 for a request a rule has no room for (`decision.denied`)."""
    check = checks[decision.denied]
    rule = check.rule
    retry = max(1, math.ceil(decision.retry_after_ms / 1000))
    headers = {"retry-after": str(retry), **rate_limit_headers(checks, decision.states)}
    who = rule.who
    if rule.kind is Kind.SPEND:
        unit = currency if rule.unit == "currency" else "tokens"
        return GatewayError(
            429,
            "insufficient_quota",
            f"the {_PERIODS[rule.period]} budget of {who} ({_number(rule.limit)} {unit}) cannot "
            f"cover this request (it reserves {_number(check.amount)} {unit}); it resets in "
            f"{retry} s",
            headers=headers,
        )
    if rule.kind is Kind.CONCURRENCY:
        message = f"{who} allows {_number(rule.limit)} concurrent requests; retry in {retry} s"
    elif rule.kind is Kind.TOKENS and check.amount > rule.limit:
        message = (
            f"this request reserves {tokens} tokens (prompt estimate + max_tokens), more than "
            f"{who} allows per minute ({_number(rule.limit)}); lower max_tokens"
        )
    else:
        message = (
            f"rate limit of {who} reached: {_number(rule.limit)} {rule.kind.value} per minute; "
            f"retry in {retry} s"
        )
    return GatewayError(429, "rate_limit_exceeded", message, headers=headers)


_PERIODS = {"day": "daily", "month": "monthly"}


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.6g}"


def rate_limit_headers(checks: tuple[Check, ...], states: list[RuleState]) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the tightest rules: of the
    request limits and of the token limits that apply, the one with the least left."""
    headers: dict[str, str] = {}
    for kind, suffix in ((Kind.REQUESTS, "requests"), (Kind.TOKENS, "tokens")):
        tightest: RuleState | None = None
        for check, state in zip(checks, states, strict=True):
            if check.rule.kind is kind and (
                tightest is None or state.remaining < tightest.remaining
            ):
                tightest = state
        if tightest is not None:
            headers[f"x-ratelimit-limit-{suffix}"] = _number(tightest.limit)
            remaining = max(0, math.floor(tightest.remaining))
            headers[f"x-ratelimit-remaining-{suffix}"] = str(remaining)
            headers[f"x-ratelimit-reset-{suffix}"] = reset_text(tightest.reset_ms)
    return headers


def reset_text(ms: int) -> str:
    """A duration the way OpenAI's reset headers write it: `20ms`, `1.5s`, `6m0s`."""
    if ms < 1000:
        return f"{max(0, ms)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest}s"
