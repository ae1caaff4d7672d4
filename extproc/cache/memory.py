"""The in-memory cache: one processor's entries, an LRU bounded in bytes, with a TTL each.

Single-flight within the process: at most one live `Lease` per key; other callers of `lookup`
wait on an asyncio event for its fill or release (no polling). Not shared across replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from extproc.cache.store import CachedAnswer, CacheStats, Lease


@dataclass(slots=True)
class _Entry:
    answer: CachedAnswer
    expires_at: float
    size: int


@dataclass(slots=True)
class _Claim:
    token: str
    taken_at: float
    # Set when the claim ends (filled, released or taken over): its waiters look again.
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryCache:
    """Answers kept in this process, most recently used last."""

    def __init__(
        self,
        max_bytes: int,
        max_entry_bytes: int,
        ttl_seconds: float,
        lock_ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0 or max_entry_bytes <= 0:
            raise ValueError("max_bytes and max_entry_bytes must be positive")
        if ttl_seconds <= 0 or lock_ttl_seconds <= 0:
            raise ValueError("ttl_seconds and lock_ttl_seconds must be positive")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.ttl = ttl_seconds
        self.lock_ttl = lock_ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._claims: dict[str, _Claim] = {}
        self._bytes = 0

    def lookup_now(self, key: str) -> CachedAnswer | Lease | None:
        """A fresh answer, else a lease if no one else holds a live claim, else None."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            if entry.expires_at > now:
                self._entries.move_to_end(key)
                return entry.answer
            self._drop(key)
        claim = self._claims.get(key)
        if claim is not None:
            if now - claim.taken_at < self.lock_ttl:
                return None
            claim.ended.set()  # a dead claim, taken over: its waiters now wait for ours
        lease = Lease.new(key, now)
        self._claims[key] = _Claim(lease.token, now)
        return lease

    async def lookup(self, key: str, wait_seconds: float) -> CachedAnswer | Lease | None:
        """Like `lookup_now`, but waits up to `wait_seconds` for another's claim to end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            found = self.lookup_now(key)
            if found is not None:
                return found
            left = deadline - loop.time()
            if left <= 0:
                return None
            claim = self._claims[key]
            # Wake when the claim would die too, to take it over.
            life = claim.taken_at + self.lock_ttl - self._clock()
            try:
                async with asyncio.timeout(max(0.0, min(left, life))):
                    await claim.ended.wait()
            except TimeoutError:
                pass

    def fill(self, lease: Lease, answer: CachedAnswer) -> bool:
        """Store the answer if the lease is the live claim (or the key is free) and it fits.

        Ends the claim either way, unless someone else holds a live one.
        """
        now = self._clock()
        key = lease.key
        claim = self._claims.get(key)
        if claim is not None:
            if claim.token != lease.token and now - claim.taken_at < self.lock_ttl:
                return False  # our claim was taken over: the new holder fills
            del self._claims[key]
        entry_bytes = answer.size()  # what `max_entry_bytes` bounds, as in Redis
        size = len(key) + entry_bytes
        stored = entry_bytes <= self.max_entry_bytes and size <= self.max_bytes
        if stored:
            self._drop(key)
            self._entries[key] = _Entry(answer, now + self.ttl, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        if claim is not None:
            claim.ended.set()
        return stored

    def release(self, lease: Lease) -> None:
        """End the lease's claim without an answer, if it is still the claim (idempotent)."""
        claim = self._claims.get(lease.key)
        if claim is not None and claim.token == lease.token:
            del self._claims[lease.key]
            claim.ended.set()

    def stats(self) -> CacheStats:
        """Entries and bytes held (expired entries count until they are looked up or evicted)."""
        return CacheStats(len(self._entries), self._bytes)

    async def drain(self) -> None:
        """Nothing runs in the background."""

    async def close(self) -> None:
        """Nothing to close."""

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
