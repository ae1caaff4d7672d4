"""The memory store and the Redis store (its Lua scripts, on a real redis-server) take the same
decisions: the same sequences of admissions and settlements run against both.

The Redis store is fail-closed here, so a Redis failure raises instead of being decided
quietly by its local fallback: every Redis decision below was taken by the scripts. Time passing
is simulated by `age(ms)`: the windows' entries (admission times) and the leases' expiries move
back by `ms`, in the memory store's structures and in the Redis sorted sets alike.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest
from redis.asyncio import Redis

from extproc.config.schema import RedisConfig
from extproc.dev.redis_server import RedisServer
from extproc.governance.governor import refusal
from extproc.governance.memory import MemoryStore
from extproc.governance.redis_store import RedisStore
from extproc.governance.rules import WINDOW_MS, Check, Kind, Rule, Scope
from extproc.governance.scripts import _COMMON
from extproc.governance.store import DAY_MS, Decision, RuleState, Settlement, period_of

LEASE_MS = 120_000


def rpm(limit: float, key: str = "t:acme:rpm") -> Rule:
    return Rule(key, Scope.TENANT, Kind.REQUESTS, limit, "tenant 'acme'")


def tpm(limit: float, key: str = "t:acme:tpm") -> Rule:
    return Rule(key, Scope.TENANT, Kind.TOKENS, limit, "tenant 'acme'")


def conc(limit: float, key: str = "t:acme:conc") -> Rule:
    return Rule(key, Scope.TENANT, Kind.CONCURRENCY, limit, "tenant 'acme'")


def budget(limit: float, period: str, unit: str = "currency") -> Rule:
    key = f"t:acme:spend:{unit}:{period}"
    return Rule(key, Scope.TENANT, Kind.SPEND, limit, "tenant 'acme'", period, unit)


def now_ms() -> int:
    return math.floor(time.time() * 1000)


def utc_ms(*parts: int) -> int:
    moment = dt.datetime(*parts, tzinfo=dt.UTC)  # type: ignore[misc]
    return int(moment.timestamp() * 1000)


class Harness(Protocol):
    name: str

    async def admit(self, checks: tuple[Check, ...], rid: str, lease_ms: int = ...) -> Decision:
        """Admit through the store."""

    async def settle(self, settlement: Settlement) -> None:
        """Settle through the store."""

    async def states(self, checks: Sequence[Check]) -> list[RuleState]:
        """The rules' states, taking nothing."""

    async def usage(self, key: str) -> dict[str, float]:
        """Usage totals under `key`."""

    async def age(self, ms: int, rules: Sequence[Rule]) -> None:
        """Let `ms` pass for the windows and leases of `rules`."""


class MemoryHarness:
    name = "memory"

    def __init__(self) -> None:
        self.store = MemoryStore()

    async def admit(
        self, checks: tuple[Check, ...], rid: str, lease_ms: int = LEASE_MS
    ) -> Decision:
        return self.store.admit(checks, rid, lease_ms)

    async def settle(self, settlement: Settlement) -> None:
        self.store.settle(settlement)

    async def states(self, checks: Sequence[Check]) -> list[RuleState]:
        return [self.store.state(c) for c in checks]

    async def usage(self, key: str) -> dict[str, float]:
        return self.store.usage(key)

    async def age(self, ms: int, rules: Sequence[Rule]) -> None:
        # The same as in Redis: entries and leases move back in time; the clock (and with it
        # the budgets' calendar period) stays.
        for rule in rules:
            log = self.store._logs.get(rule.key)
            if log is not None:
                log.entries = deque((at - ms, r) for at, r in log.entries)
            for lease, expiry in self.store._leases.get(rule.key, {}).items():
                self.store._leases[rule.key][lease] = expiry - ms


class RedisHarness:
    name = "redis"

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.client: Redis = store.client
        self.prefix = store.prefix

    async def admit(
        self, checks: tuple[Check, ...], rid: str, lease_ms: int = LEASE_MS
    ) -> Decision:
        decision = await self.store.admit(checks, rid, lease_ms)
        assert not decision.local, "decided by the local fallback, not by Redis"
        return decision

    async def settle(self, settlement: Settlement) -> None:
        await self.store.settle(settlement)
        assert self.store.up, "the settlement script failed"

    async def states(self, checks: Sequence[Check]) -> list[RuleState]:
        return await self.store.states(checks)

    async def usage(self, key: str) -> dict[str, float]:
        return await self.store.usage(key)

    async def age(self, ms: int, rules: Sequence[Rule]) -> None:
        for rule in rules:
            if rule.kind is Kind.SPEND:
                continue
            key = self.prefix + rule.key
            entries = await self.client.zrange(key, 0, -1, withscores=True)
            if entries:
                await self.client.zadd(key, {member: score - ms for member, score in entries})


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    with server:
        yield server


_prefixes = itertools.count()


async def make_redis_store(server: RedisServer) -> RedisStore:
    config = RedisConfig(url=server.url, key_prefix=f"test{next(_prefixes)}", timeout_ms=2000)
    store = RedisStore(config, server.url, MemoryStore(), True, lambda up, what: None)
    await store.client.flushdb()
    return store


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = await make_redis_store(redis_server)
    yield store
    await store.close()


@pytest.fixture(params=["memory", "redis"])
async def harness(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness()
        return
    store = await make_redis_store(redis_server)
    yield RedisHarness(store)
    await store.close()


_rids = itertools.count()


def rid() -> str:
    return f"r{next(_rids)}"


def settlement(
    request_id: str,
    checks: tuple[Check, ...],
    decision: Decision,
    amounts: Sequence[float] | None = None,
    usage: list[tuple[str, str, float]] | None = None,
) -> Settlement:
    final = list(amounts) if amounts is not None else [c.amount for c in checks]
    return Settlement(request_id, checks, final, decision.periods, usage or [])


# -- requests per minute ------------------------------------------------------------------


async def test_requests_per_minute_admit_exactly_the_limit(harness: Harness) -> None:
    rule = rpm(5)
    checks = (Check(rule, 1.0),)
    remaining = []
    for _ in range(5):
        decision = await harness.admit(checks, rid())
        assert decision.allowed
        remaining.append(decision.states[0].remaining)
    assert remaining == [4, 3, 2, 1, 0]

    refused = await harness.admit(checks, rid())
    assert not refused.allowed
    assert refused.denied == 0
    # The oldest entry frees a slot a minute after it was admitted: just under 60 s from now.
    assert 50_000 < refused.retry_after_ms <= WINDOW_MS
    error = refusal(checks, refused, 0, "USD")
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    assert 50 < int(error.headers["retry-after"]) <= 60
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-requests"] == "5"
    # A refused request took nothing: still exactly the limit in the window.
    assert (await harness.states(checks))[0].remaining == 0

    await harness.age(WINDOW_MS + 1, [rule])
    again = await harness.admit(checks, rid())
    assert again.allowed
    assert again.states[0].remaining == 4


async def test_retry_after_names_when_the_oldest_entries_leave_the_window(
    harness: Harness,
) -> None:
    rule = rpm(3)
    checks = (Check(rule, 1.0),)
    assert (await harness.admit(checks, rid())).allowed
    assert (await harness.admit(checks, rid())).allowed
    await harness.age(40_000, [rule])
    assert (await harness.admit(checks, rid())).allowed
    refused = await harness.admit(checks, rid())
    assert not refused.allowed
    # The first two entries are 40 s old: room in about 20 s, not in a whole minute.
    assert 10_000 < refused.retry_after_ms <= 20_000
    await harness.age(20_001, [rule])
    # The two oldest left the window: two requests fit, not three.
    assert (await harness.admit(checks, rid())).allowed
    assert (await harness.admit(checks, rid())).allowed
    assert not (await harness.admit(checks, rid())).allowed


# -- tokens per minute --------------------------------------------------------------------


async def test_tokens_per_minute_reserve_then_settle_down_and_up(harness: Harness) -> None:
    rule = tpm(1000)
    first = (Check(rule, 600.0),)
    first_id = rid()
    decision = await harness.admit(first, first_id)
    assert decision.allowed
    assert decision.states[0].remaining == 400

    second = (Check(rule, 500.0),)
    refused = await harness.admit(second, rid())
    assert not refused.allowed
    assert refused.states[0].remaining == 400
    assert 50_000 < refused.retry_after_ms <= WINDOW_MS

    # The first request used 300 of its 600: 700 left, the 500 fits now.
    await harness.settle(settlement(first_id, first, decision, [300.0]))
    assert (await harness.states(second))[0].remaining == 700
    second_id = rid()
    admitted = await harness.admit(second, second_id)
    assert admitted.allowed
    assert admitted.states[0].remaining == 200

    # The second used 700 of its 500 (settled up): the window is full.
    await harness.settle(settlement(second_id, second, admitted, [700.0]))
    assert (await harness.states(second))[0].remaining == 0
    assert not (await harness.admit((Check(rule, 1.0),), rid())).allowed

    # More than the limit can never fit: a whole window.
    too_big = await harness.admit((Check(rule, 1001.0),), rid())
    assert not too_big.allowed
    assert too_big.retry_after_ms == WINDOW_MS

    # Once the entries left the window, a late settlement changes nothing.
    await harness.age(WINDOW_MS + 1, [rule])
    await harness.settle(settlement(second_id, second, admitted, [5000.0]))
    full = await harness.admit((Check(rule, 1000.0),), rid())
    assert full.allowed
    assert full.states[0].remaining == 0


# -- concurrency --------------------------------------------------------------------------


async def test_concurrency_leases_are_released_by_settlement_and_lapse(harness: Harness) -> None:
    rule = conc(2)
    checks = (Check(rule, 1.0),)
    a, b = rid(), rid()
    decision_a = await harness.admit(checks, a)
    assert decision_a.allowed
    assert decision_a.states[0].remaining == 1
    assert (await harness.admit(checks, b)).allowed
    refused = await harness.admit(checks, rid())
    assert not refused.allowed
    assert refused.retry_after_ms == 1000

    await harness.settle(settlement(a, checks, decision_a))
    assert (await harness.states(checks))[0].remaining == 1
    c = rid()
    assert (await harness.admit(checks, c)).allowed
    assert not (await harness.admit(checks, rid())).allowed
    # Settling twice (or a request that holds no lease) releases nothing more.
    await harness.settle(settlement(a, checks, decision_a))
    assert not (await harness.admit(checks, rid())).allowed

    # A processor that died holding leases: they lapse at their expiry.
    await harness.age(LEASE_MS + 1, [rule])
    assert (await harness.states(checks))[0].remaining == 2
    assert (await harness.admit(checks, rid())).allowed


async def test_a_short_lease_does_not_cut_a_long_one_short(harness: Harness) -> None:
    # Leases follow each request's timeout: a request with a short one, admitted after one
    # with a long one, must not make the long one lapse early.
    rule = conc(2)
    checks = (Check(rule, 1.0),)
    assert (await harness.admit(checks, rid(), lease_ms=LEASE_MS)).allowed
    assert (await harness.admit(checks, rid(), lease_ms=50)).allowed
    time.sleep(0.3)  # the short lease lapses (real time: key expiry in Redis is real time)
    assert (await harness.admit(checks, rid())).allowed  # the short one's place
    assert not (await harness.admit(checks, rid())).allowed  # the long one still holds


# -- budgets ------------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["day", "month"])
async def test_budgets_per_period_reserve_settle_and_name_their_period(
    harness: Harness, period: str
) -> None:
    rule = budget(10.0, period)
    checks = (Check(rule, 4.0),)
    before = now_ms()
    first_id = rid()
    first = await harness.admit(checks, first_id)
    after = now_ms()
    assert first.allowed
    assert first.states[0].remaining == 6
    expected = {period_of(before, period)[0], period_of(after, period)[0]}
    assert first.periods[0] in expected
    assert (await harness.admit(checks, rid())).allowed
    refused = await harness.admit(checks, rid())
    assert not refused.allowed
    assert refused.states[0].remaining == 2
    # A budget has room again when its period ends.
    end = period_of(now_ms(), period)[1]
    assert abs(refused.retry_after_ms - (end - now_ms())) < 5_000
    error = refusal(checks, refused, 0, "USD")
    assert error.code == "insufficient_quota"

    # The first request cost 1, not 4: 3 back, and a request of 4 fits again (1 + 4 + 4 = 9).
    await harness.settle(settlement(first_id, checks, first, [1.0]))
    assert (await harness.states(checks))[0].remaining == 5
    assert (await harness.admit(checks, rid())).allowed
    assert (await harness.states(checks))[0].remaining == 1
    assert not (await harness.admit(checks, rid())).allowed


async def test_a_token_budget_settles_up_and_blocks(harness: Harness) -> None:
    rule = budget(1000.0, "month", "tokens")
    checks = (Check(rule, 100.0),)
    request_id = rid()
    decision = await harness.admit(checks, request_id)
    assert decision.allowed
    await harness.settle(settlement(request_id, checks, decision, [950.0]))
    assert (await harness.states(checks))[0].remaining == 50
    assert not (await harness.admit(checks, rid())).allowed
    assert (await harness.admit((Check(rule, 50.0),), rid())).allowed


# -- all or nothing -----------------------------------------------------------------------


@pytest.mark.parametrize("failing", [0, 1, 2, 3])
async def test_a_refused_request_takes_nothing_from_any_rule(
    harness: Harness, failing: int
) -> None:
    rules = [
        rpm(10),
        tpm(1000),
        conc(3),
        budget(50.0, "day"),
    ]
    normal = (Check(rules[0], 1.0), Check(rules[1], 100.0), Check(rules[2], 1.0))
    normal += (Check(rules[3], 5.0),)
    held = rid()
    decision = await harness.admit(normal, held)
    assert decision.allowed
    before = [s.remaining for s in await harness.states(normal)]
    assert before == [9, 900, 2, 45]

    # The same request, asking too much of one rule (the first, a middle or the last one).
    greedy = list(normal)
    greedy[failing] = Check(rules[failing], [11.0, 1001.0, 1.0, 51.0][failing])
    if failing == 2:  # concurrency asks one lease: fill the rule first
        for _ in range(2):
            assert (await harness.admit((normal[2],), rid())).allowed
        before[2] = 0
    refused = await harness.admit(tuple(greedy), rid())
    assert not refused.allowed
    assert refused.denied == failing
    assert [s.remaining for s in await harness.states(normal)] == before


async def test_usage_totals_add_up(harness: Harness) -> None:
    checks = (Check(rpm(100), 1.0),)
    for _ in range(3):
        request_id = rid()
        decision = await harness.admit(checks, request_id)
        rows = [("t:acme", "requests", 1.0), ("t:acme", "cost", 0.25)]
        rows.append(("k:acme:ci", "input_tokens", 10.0))
        await harness.settle(settlement(request_id, checks, decision, usage=rows))
    assert await harness.usage("t:acme") == {"requests": 3.0, "cost": 0.75}
    assert await harness.usage("k:acme:ci") == {"input_tokens": 30.0}
    assert await harness.usage("t:nobody") == {}


# -- both side by side --------------------------------------------------------------------


async def test_both_stores_decide_a_mixed_sequence_alike(redis_store: RedisStore) -> None:
    memory, redis = MemoryHarness(), RedisHarness(redis_store)
    rules = [rpm(7), tpm(2000), conc(3), budget(20.0, "day"), budget(9000.0, "month", "tokens")]
    held: dict[str, list[tuple[str, tuple[Check, ...], Decision]]] = {"memory": [], "redis": []}
    trace: dict[str, list[object]] = {"memory": [], "redis": []}
    for step in range(40):
        tokens = float(100 + (step * 137) % 600)
        checks = (
            Check(rules[0], 1.0),
            Check(rules[1], tokens),
            Check(rules[2], 1.0),
            Check(rules[3], tokens / 100),
            Check(rules[4], tokens),
        )
        request_id = f"mix{step}"
        for store in (memory, redis):
            decision = await store.admit(checks, request_id)
            trace[store.name].append(
                (
                    step,
                    decision.allowed,
                    decision.denied,
                    [round(s.remaining, 6) for s in decision.states],
                    decision.periods,
                )
            )
            if decision.allowed:
                held[store.name].append((request_id, checks, decision))
            # Every third step the oldest request in flight ends, having used half its tokens.
            if step % 3 == 2 and held[store.name]:
                done_id, done_checks, done = held[store.name].pop(0)
                used = done_checks[1].amount / 2
                amounts = [1.0, used, 1.0, used / 100, used]
                await store.settle(settlement(done_id, done_checks, done, amounts))
            if step == 20:
                await store.age(WINDOW_MS + 1, rules)
    assert trace["memory"] == trace["redis"]
    # The sequence exercised refusals by several rules and admissions after the window moved.
    denied = {t[2] for t in trace["memory"] if not t[1]}  # type: ignore[index]
    assert len(denied) >= 2
    assert sum(1 for t in trace["memory"] if t[1]) >= 10  # type: ignore[index]


# -- calendar periods ---------------------------------------------------------------------

FIXED_DATES = [
    (1970, 1, 1, 0, 0, 0),
    (2000, 2, 29, 12, 0, 0),  # a leap century
    (2023, 2, 28, 23, 59, 59),  # not a leap year: March next
    (2024, 1, 31, 23, 59, 59),
    (2024, 2, 28, 10, 0, 0),
    (2024, 2, 29, 23, 59, 59),  # leap day
    (2024, 3, 1, 0, 0, 0),
    (2024, 12, 31, 23, 59, 59),  # December to January
    (2025, 1, 1, 0, 0, 0),
    (2100, 2, 28, 12, 0, 0),  # not a leap century
    (2099, 12, 31, 0, 0, 1),
]


def test_period_of_fixed_dates() -> None:
    assert period_of(utc_ms(2024, 2, 29, 23, 59, 59), "day") == (
        "2024-02-29",
        utc_ms(2024, 3, 1),
    )
    assert period_of(utc_ms(2024, 2, 10), "month") == ("2024-02", utc_ms(2024, 3, 1))
    assert period_of(utc_ms(2023, 2, 10), "month") == ("2023-02", utc_ms(2023, 3, 1))
    assert period_of(utc_ms(2024, 12, 31, 23, 59, 59) + 999, "day") == (
        "2024-12-31",
        utc_ms(2025, 1, 1),
    )
    assert period_of(utc_ms(2024, 12, 31, 23, 59, 59), "month") == ("2024-12", utc_ms(2025, 1, 1))
    assert period_of(utc_ms(2025, 1, 1), "month") == ("2025-01", utc_ms(2025, 2, 1))
    assert period_of(utc_ms(2025, 1, 1), "day") == ("2025-01-01", utc_ms(2025, 1, 1) + DAY_MS)
    assert period_of(utc_ms(2100, 2, 28, 12), "month") == ("2100-02", utc_ms(2100, 3, 1))


async def test_the_lua_calendar_agrees_with_period_of(redis_store: RedisStore) -> None:
    # The scripts' own `period()` on fixed instants (its clock set by the test script).
    script = (
        _COMMON
        + """
now = tonumber(ARGV[1])
local d, de = period('d')
local m, me = period('m')
return {d, de, m, me}
"""
    )
    for parts in FIXED_DATES:
        for extra in (0, 999):
            instant = utc_ms(*parts) + extra
            day, day_end, month, month_end = await redis_store.client.eval(script, 0, str(instant))
            assert (day, int(day_end)) == period_of(instant, "day"), parts
            assert (month, int(month_end)) == period_of(instant, "month"), parts


# -- keys: TTLs and how many --------------------------------------------------------------


async def everything_once(store: RedisStore, request_id: str) -> tuple[Check, ...]:
    checks = (
        Check(rpm(1000), 1.0),
        Check(tpm(100_000), 50.0),
        Check(conc(1000), 1.0),
        Check(budget(1000.0, "day"), 0.5),
        Check(budget(100_000.0, "month", "tokens"), 50.0),
    )
    decision = await store.admit(checks, request_id, LEASE_MS)
    assert decision.allowed and not decision.local
    usage = [("t:acme", "requests", 1.0), ("k:acme:ci", "requests", 1.0)]
    await store.settle(
        Settlement(request_id, checks, [1.0, 40.0, 1.0, 0.4, 40.0], decision.periods, usage)
    )
    return checks


async def test_every_key_has_a_ttl(redis_store: RedisStore) -> None:
    # One request still holds its lease (not settled), so the lease key stays.
    await redis_store.admit((Check(conc(1000), 1.0),), "holder", LEASE_MS)
    await everything_once(redis_store, "once")
    client, prefix = redis_store.client, redis_store.prefix
    keys = sorted(await client.keys(prefix + "*"))
    assert keys
    ttls = {key.removeprefix(prefix): await client.pttl(key) for key in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    for name in ("t:acme:rpm", "t:acme:rpm:a", "t:acme:tpm", "t:acme:tpm:a"):
        assert 0 < ttls[name] <= WINDOW_MS
    assert 0 < ttls["t:acme:conc"] <= LEASE_MS
    day, day_end = period_of(now_ms(), "day")
    month, month_end = period_of(now_ms(), "month")
    # Budgets outlive their period by a day (a late settlement still finds its counter).
    assert abs(ttls[f"t:acme:spend:currency:day:{day}"] - (day_end + DAY_MS - now_ms())) < 5_000
    assert abs(ttls[f"t:acme:spend:tokens:month:{month}"] - (month_end + DAY_MS - now_ms())) < 5_000
    for name in ("t:acme", "k:acme:ci"):
        assert ttls[name] > 300 * DAY_MS


async def test_keys_are_bounded_by_the_rules_not_the_requests(redis_store: RedisStore) -> None:
    for index in range(150):
        await everything_once(redis_store, f"req{index}")
    client, prefix = redis_store.client, redis_store.prefix
    keys = {key.removeprefix(prefix) for key in await client.keys(prefix + "*")}
    day = period_of(now_ms(), "day")[0]
    month = period_of(now_ms(), "month")[0]
    assert keys == {
        "t:acme:rpm",
        "t:acme:rpm:a",
        "t:acme:tpm",
        "t:acme:tpm:a",
        f"t:acme:spend:currency:day:{day}",
        f"t:acme:spend:tokens:month:{month}",
        "t:acme",
        "k:acme:ci",
        # No "t:acme:conc": every lease was released, and an empty sorted set is no key.
    }
    assert await client.dbsize() == len(keys)
    # Per-request entries live inside those keys and are bounded by the window.
    assert await client.zcard(prefix + "t:acme:rpm") == 150
    assert await client.hlen(prefix + "t:acme:rpm:a") == 151  # 150 amounts and their total
    assert await client.hget(prefix + "t:acme:tpm:a", "#") == "6000"
    assert float(await client.get(prefix + f"t:acme:spend:currency:day:{day}")) == pytest.approx(
        60.0
    )


# -- Redis restarted ----------------------------------------------------------------------


async def test_a_restarted_redis_is_used_at_once_by_an_idle_store(tmp_path: Path) -> None:
    # A store whose pooled connection Redis closed (it restarted while the store sat idle)
    # reconnects on its next call instead of counting Redis as down.
    with RedisServer(tmp_path / "redis") as server:
        store = await make_redis_store(server)
        checks = (Check(rpm(10), 1.0),)
        try:
            assert (await store.admit(checks, rid(), LEASE_MS)).allowed
            server.kill()
            server.start()
            decision = await store.admit(checks, rid(), LEASE_MS)  # fail-closed: raises if down
            assert decision.allowed and not decision.local and store.up
            assert decision.states[0].remaining == 9  # an empty Redis: a new window
        finally:
            await store.close()


async def test_a_store_without_traffic_notices_that_redis_is_back(tmp_path: Path) -> None:
    events: list[bool] = []
    with RedisServer(tmp_path / "probe") as server:
        config = RedisConfig(url=server.url, timeout_ms=200, retry_seconds=0.1)
        store = RedisStore(
            config, server.url, MemoryStore(), False, lambda up, _: events.append(up)
        )
        rule = Rule("t:probe:rpm", Scope.TENANT, Kind.REQUESTS, 10, "tenant 'probe'")
        try:
            server.kill()
            decision = await store.admit((Check(rule, 1.0),), "a", 1000)
            assert decision.local and not store.up
            server.start()
            for _ in range(100):  # no request meanwhile: the probe alone must see it
                if store.up:
                    break
                await asyncio.sleep(0.05)
            assert store.up and events[-1] is True
            assert not (await store.admit((Check(rule, 1.0),), "b", 1000)).local
        finally:
            await store.close()
