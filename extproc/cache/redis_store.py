"""The Redis cache: every replica's entries in one Redis, with single-flight fills across them.

An entry is `{prefix}:cache:{key}` (its bytes, with a PX TTL); the claim to fill it is
`{prefix}:cache-lock:{key}` (SET NX PX, the lease's token as value); other callers poll. Every
operation touches one key, so they spread over a cluster. Redis failing fails open: the request
goes to the provider, `on_error` hears a fixed reason, nothing raises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from extproc.cache.store import CachedAnswer, Lease

# What a failing Redis raises: its own errors (its timeouts too), sockets, and our deadline.
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

# Delete the lock only while it is ours: a lock that expired may since be another's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_MAX_POLL_SECONDS = 0.1


class RedisCache:
    """Answers shared by every replica through Redis.

    `client` must return bytes (`decode_responses=False`); give it socket timeouts and one
    reconnecting retry, as the governance store's client has. `timeout_seconds` bounds each
    round trip.
    """

    def __init__(
        self,
        client: Redis,
        prefix: str,
        max_entry_bytes: int,
        ttl_seconds: float,
        lock_ttl_seconds: float,
        poll_seconds: float = 0.02,
        on_error: Callable[[str], None] | None = None,
        timeout_seconds: float = 0.25,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("the cache's Redis client must return bytes (decode_responses off)")
        if max_entry_bytes <= 0:
            raise ValueError("max_entry_bytes must be positive")
        if min(ttl_seconds, lock_ttl_seconds, poll_seconds, timeout_seconds) <= 0:
            raise ValueError("ttl, lock ttl, poll and timeout seconds must be positive")
        self.client = client
        self.max_entry_bytes = max_entry_bytes
        self.ttl_ms = max(1, round(ttl_seconds * 1000))
        self.lock_ms = max(1, round(lock_ttl_seconds * 1000))
        self.poll_seconds = poll_seconds
        self.timeout = timeout_seconds
        self._entry_prefix = f"{prefix}:cache:"
        self._lock_prefix = f"{prefix}:cache-lock:"
        self._on_error = on_error
        self._release = client.register_script(_RELEASE)
        self._tasks: set[asyncio.Task[None]] = set()

    def entry_key(self, key: str) -> str:
        """The Redis key of an entry."""
        return self._entry_prefix + key

    def lock_key(self, key: str) -> str:
        """The Redis key of the claim to fill an entry."""
        return self._lock_prefix + key

    # -- lookup -----------------------------------------------------------------------------

    def lookup_now(self, key: str) -> CachedAnswer | Lease | None:
        """Always None: Redis needs a round trip (`lookup`)."""
        return None

    async def lookup(self, key: str, wait_seconds: float) -> CachedAnswer | Lease | None:
        """The answer, a lease (fill it), or None (go to the provider, do not fill).

        Waits up to `wait_seconds` for another replica's fill, polling. None too while Redis
        fails.
        """
        try:
            return await self._lookup(key, wait_seconds)
        except _FAILURES:
            self._error("lookup")
            return None

    async def _lookup(self, key: str, wait_seconds: float) -> CachedAnswer | Lease | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        entry_key = self.entry_key(key)
        # GET alone first: a hit costs one read, and claims are only taken on a miss.
        async with asyncio.timeout(self.timeout):
            data = await self.client.get(entry_key)
        answer = _decode(data)
        if answer is not None:
            return answer
        found = await self._claim(key)
        if found is not None:
            return found
        delay = self.poll_seconds
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, max(self.poll_seconds, _MAX_POLL_SECONDS))
            async with asyncio.timeout(self.timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.get(entry_key)
                    pipe.exists(self.lock_key(key))
                    data, locked = await pipe.execute()
            answer = _decode(data)
            if answer is not None:
                return answer
            if not locked:  # released, or its holder died: one try to take over
                found = await self._claim(key)
                if found is not None:
                    return found

    async def _claim(self, key: str) -> CachedAnswer | Lease | None:
        """SET NX the lock, and read the entry in the same round trip: a fill that landed since
        our first read (its lock then gone) is an answer, not a claim."""
        lease = Lease.new(key, time.monotonic())
        async with asyncio.timeout(self.timeout):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.set(self.lock_key(key), lease.token, nx=True, px=self.lock_ms)
                pipe.get(self.entry_key(key))
                claimed, data = await pipe.execute()
        answer = _decode(data)
        if answer is not None:
            if claimed:
                self.release(lease)
            return answer
        return lease if claimed else None

    # -- fill and release (in the background) -----------------------------------------------

    def fill(self, lease: Lease, answer: CachedAnswer) -> bool:
        """Schedule SET entry PX ttl, then the lock's release; False (released only) if the
        answer is above `max_entry_bytes`.

        Unlike the memory store, the entry is written even if another replica took the claim
        over (one key, one request: either answer will do).
        """
        data = answer.encode()
        if len(data) > self.max_entry_bytes:
            self.release(lease)
            return False
        return self._background(self._fill(lease, data), "fill")

    def release(self, lease: Lease) -> None:
        """Schedule deleting the lock if it still holds the lease's token."""
        self._background(self._release_lock(lease), "release")

    async def _fill(self, lease: Lease, data: bytes) -> None:
        async with asyncio.timeout(self.timeout):
            await self.client.set(self.entry_key(lease.key), data, px=self.ttl_ms)
        # After the SET has answered: a waiter that sees the lock gone then finds the entry.
        await self._release_lock(lease)

    async def _release_lock(self, lease: Lease) -> None:
        async with asyncio.timeout(self.timeout):
            await self._release(keys=[self.lock_key(lease.key)], args=[lease.token])

    def _background(self, work: Coroutine[Any, Any, None], reason: str) -> bool:
        try:
            task = asyncio.get_running_loop().create_task(self._guarded(work, reason))
        except RuntimeError:  # no running loop: nothing can run it
            work.close()
            self._error(reason)
            return False
        # The loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _guarded(self, work: Coroutine[Any, Any, None], reason: str) -> None:
        try:
            await work
        except _FAILURES:
            self._error(reason)

    # -- the rest of the protocol -----------------------------------------------------------

    def stats(self) -> None:
        """None: counting entries in Redis would need I/O."""
        return None

    async def drain(self) -> None:
        """Wait for the scheduled fills and releases."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Drain, then close the client."""
        await self.drain()
        await self.client.aclose()

    def _error(self, reason: str) -> None:
        if self._on_error is not None:
            self._on_error(reason)


def _decode(data: object) -> CachedAnswer | None:
    return CachedAnswer.decode(data) if isinstance(data, bytes) else None
