"""The Redis store: every replica's limits, budgets and usage totals in one Redis.

One script call per admission (all of a request's checks) and one per settlement, through the
`redis` package's asyncio client (`scripts.py`). Redis unreachable or too slow: the admission is
decided by this processor's own `MemoryStore` (`on_redis_failure: local`, with a metric and a
log line) or refused with 503 `rate_limiter_unavailable` (`deny`); Redis is tried again after
`retry_seconds`, and the client reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from extproc.config.schema import RedisConfig
from extproc.errors import GatewayError
from extproc.governance.memory import MemoryStore
from extproc.governance.rules import Check
from extproc.governance.scripts import ADMIT, SETTLE
from extproc.governance.store import Decision, RuleState, Settlement

log = logging.getLogger("extproc.governance")

# What a failing Redis raises: its own errors, sockets, and our deadline.
_FAILURES = (RedisError, OSError, TimeoutError, asyncio.TimeoutError)


def unavailable() -> GatewayError:
    """The 503 of a fail-closed gateway whose Redis is unreachable."""
    return GatewayError(
        503,
        "rate_limiter_unavailable",
        "the rate limiter is unavailable right now; retry shortly",
        headers={"retry-after": "1"},
    )


class RedisStore:
    """Limits in Redis, with a local fallback while it is unreachable."""

    def __init__(
        self,
        config: RedisConfig,
        url: str,
        fallback: MemoryStore,
        fail_closed: bool,
        on_state: Callable[[bool, str], None],
    ) -> None:
        timeout = config.timeout_ms / 1000
        self.client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One retry, at once: a pooled connection Redis closed while it sat idle (Redis
            # restarted, its idle timeout) fails on first use, and the retry reconnects. The
            # call as a whole stays within `timeout` (`asyncio.timeout` below).
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        self.prefix = "{" + config.key_prefix + "}:"
        self.timeout = timeout
        self.retry_seconds = config.retry_seconds
        self.fallback = fallback
        self.fail_closed = fail_closed
        self._admit = self.client.register_script(ADMIT)
        self._settle = self.client.register_script(SETTLE)
        self._down_until = 0.0
        self.up = True
        self._probe: asyncio.Task[None] | None = None  # while Redis is down
        self._on_state = on_state  # (up, what failed) on every change

    # -- admission and settlement -----------------------------------------------------------

    async def admit(self, checks: tuple[Check, ...], rid: str, lease_ms: int) -> Decision:
        """All of a request's checks in one script call (or locally while Redis is down)."""
        if time.monotonic() < self._down_until:
            return self._local(checks, rid, lease_ms)
        keys = [self.prefix + c.rule.key for c in checks]
        args: list[str | int | float] = [rid, lease_ms, 0]
        for check in checks:
            args += [check.rule.code, check.rule.limit, check.amount]
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._admit(keys=keys, args=args)
        except _FAILURES as exc:
            self._failed("admission", exc)
            return self._local(checks, rid, lease_ms)
        self._recovered()
        return _decision(checks, reply)

    def _local(self, checks: tuple[Check, ...], rid: str, lease_ms: int) -> Decision:
        if self.fail_closed:
            raise unavailable()
        decision = self.fallback.admit(checks, rid, lease_ms)
        decision.local = True
        return decision

    async def settle(self, settlement: Settlement) -> None:
        """Charge what the request used, and add its usage totals, in one script call."""
        if time.monotonic() < self._down_until:  # known down: keep the totals here
            self.fallback.settle(Settlement(settlement.rid, (), (), (), settlement.usage))
            return
        checks = settlement.checks
        keys = [self.prefix + c.rule.key for c in checks]
        args: list[str | int | float] = [settlement.rid, len(checks)]
        for check, amount, period in zip(
            checks, settlement.amounts, settlement.periods, strict=True
        ):
            args += [check.rule.code, check.amount, amount, period]
        for key, name, increment in settlement.usage:
            keys.append(self.prefix + key)
            args += [name, increment]
        try:
            async with asyncio.timeout(self.timeout):
                await self._settle(keys=keys, args=args)
        except _FAILURES as exc:
            self._failed("settlement", exc)
            # The reservation stands in Redis (its lease and window entries expire); the usage
            # totals go to this processor's own, so `/usage` of this replica still shows them.
            self.fallback.settle(Settlement(settlement.rid, (), (), (), settlement.usage))
            return
        self._recovered()

    # -- reading (the admin's /usage) -------------------------------------------------------

    async def usage(self, key: str) -> dict[str, float]:
        """Usage totals under `key`, from Redis."""
        async with asyncio.timeout(self.timeout * 4):
            raw = await self.client.hgetall(self.prefix + key)
        return {str(name): float(value) for name, value in raw.items()}

    async def states(self, checks: Sequence[Check]) -> list[RuleState]:
        """Rules' current states, taking nothing."""
        if not checks:
            return []
        keys = [self.prefix + c.rule.key for c in checks]
        args: list[str | int | float] = ["", 0, 1]
        for check in checks:
            args += [check.rule.code, check.rule.limit, 0]
        async with asyncio.timeout(self.timeout * 4):
            reply = await self._admit(keys=keys, args=args)
        return _decision(tuple(checks), reply, peek=True).states

    async def close(self) -> None:
        """Stop probing, close the connections."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.client.aclose()

    # -- health -----------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_seconds
        if self.up:
            self.up = False
            mode = "refusing requests (503)" if self.fail_closed else "using local limits"
            # The exception's type only: its text may hold the URL.
            log.warning(
                "redis unreachable during %s (%s): %s until it answers again",
                what,
                type(exc).__name__,
                mode,
            )
        self._on_state(False, what)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        """PING Redis every `retry_seconds` while it is down, so its return is noticed (and
        `gateway_limiter_redis_up` set back to 1) even on a replica without traffic."""
        while not self.up:
            await asyncio.sleep(self.retry_seconds)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except _FAILURES:
                continue
            self._down_until = 0.0
            self._recovered()

    def _recovered(self) -> None:
        if not self.up:
            self.up = True
            log.warning("redis answers again: limits are shared across replicas again")
            self._on_state(True, "")


def _decision(checks: tuple[Check, ...], reply: list[object], peek: bool = False) -> Decision:
    admitted, denied, retry = int(str(reply[0])), int(str(reply[1])), int(str(reply[2]))
    states: list[RuleState] = []
    periods: list[str] = []
    for index, check in enumerate(checks):
        used = float(str(reply[3 + index * 3]))
        reset = int(str(reply[4 + index * 3]))
        periods.append(str(reply[5 + index * 3]))
        remaining = check.rule.limit - used
        if admitted:
            remaining -= 1 if check.rule.code == "c" else check.amount
        states.append(RuleState(check.rule.limit, remaining, reset))
    if peek:
        return Decision(True, states, periods)
    if not admitted:
        return Decision(False, states, periods, denied - 1, retry)
    return Decision(True, states, periods)
