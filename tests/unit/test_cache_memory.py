"""The in-memory cache: hits, TTL and LRU by a controlled clock, and single-flight fills."""

from __future__ import annotations

import asyncio

from extproc.cache.memory import MemoryCache
from extproc.cache.store import CachedAnswer, CacheStats, Lease


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(body: bytes = b'{"id":"cmpl-1"}', stream: bool = False) -> CachedAnswer:
    return CachedAnswer(body, "application/json", stream, 12, 3, 1_700_000_000.5)


def make(
    clock: Clock | None = None,
    max_bytes: int = 1 << 20,
    max_entry_bytes: int = 1 << 16,
    ttl: float = 60.0,
    lock_ttl: float = 30.0,
) -> MemoryCache:
    if clock is None:
        return MemoryCache(max_bytes, max_entry_bytes, ttl, lock_ttl)
    return MemoryCache(max_bytes, max_entry_bytes, ttl, lock_ttl, clock=clock)


def lease_of(found: CachedAnswer | Lease | None) -> Lease:
    assert isinstance(found, Lease), found
    return found


def put(cache: MemoryCache, key: str, value: CachedAnswer) -> None:
    assert cache.fill(lease_of(cache.lookup_now(key)), value)


# -- hits, misses, TTL, size --------------------------------------------------------------


def test_a_miss_is_a_lease_and_a_fill_is_a_hit() -> None:
    cache = make(Clock())
    lease = lease_of(cache.lookup_now("k"))
    assert lease.key == "k"
    assert cache.lookup_now("k") is None  # claimed by the lease, not filled yet
    value = answer()
    assert cache.fill(lease, value)
    assert cache.lookup_now("k") is value
    assert cache.stats() == CacheStats(1, len("k") + len(value.encode()))


async def test_lookup_of_an_entry_or_a_free_key_does_not_wait() -> None:
    cache = make(Clock())
    lease = lease_of(await cache.lookup("k", 0))
    cache.fill(lease, answer())
    assert await cache.lookup("k", 0) == answer()


def test_an_entry_expires_after_its_ttl() -> None:
    clock = Clock()
    cache = make(clock, ttl=60)
    put(cache, "k", answer())
    clock.now += 59.9
    assert cache.lookup_now("k") == answer()
    clock.now += 0.2
    assert isinstance(cache.lookup_now("k"), Lease)
    assert cache.stats() == CacheStats(0, 0)


def test_a_refill_replaces_the_entry_and_its_bytes() -> None:
    clock = Clock()
    cache = make(clock)
    put(cache, "k", answer(b"old"))
    # What a REFRESH request does: no lookup, a lease of its own, filled.
    assert cache.fill(Lease.new("k", clock()), answer(b"newer"))
    assert cache.lookup_now("k") == answer(b"newer")
    assert cache.stats() == CacheStats(1, len("k") + len(answer(b"newer").encode()))


def test_the_least_recently_used_entries_go_when_the_bytes_are_full() -> None:
    size = len("a") + len(answer().encode())
    cache = make(Clock(), max_bytes=3 * size)
    for key in "abc":
        put(cache, key, answer())
    assert cache.lookup_now("a") == answer()  # a is now the most recently used
    put(cache, "d", answer())
    assert cache.stats() == CacheStats(3, 3 * size)
    assert isinstance(cache.lookup_now("b"), Lease)  # evicted
    for key in "acd":
        assert cache.lookup_now(key) == answer()


def test_one_big_entry_evicts_as_many_as_it_needs() -> None:
    small = answer(b"x")
    size = len("a") + len(small.encode())
    cache = make(Clock(), max_bytes=4 * size)
    for key in "abcd":
        put(cache, key, small)
    put(cache, "e", answer(b"x" * (2 * size)))
    assert cache.stats().entries == 2  # d and e
    assert cache.stats().bytes <= 4 * size
    assert cache.lookup_now("d") == small


def test_an_answer_above_max_entry_bytes_is_not_stored_and_the_claim_ends() -> None:
    cache = make(Clock(), max_entry_bytes=100)
    lease = lease_of(cache.lookup_now("k"))
    assert not cache.fill(lease, answer(b"x" * 100))
    assert cache.stats() == CacheStats(0, 0)
    assert isinstance(cache.lookup_now("k"), Lease)  # free again, not claimed


def test_an_answer_above_the_whole_cache_is_not_stored() -> None:
    cache = make(Clock(), max_bytes=200, max_entry_bytes=10_000)
    put(cache, "a", answer())
    assert not cache.fill(lease_of(cache.lookup_now("k")), answer(b"x" * 500))
    assert cache.lookup_now("a") == answer()  # nothing evicted for it


def test_release_is_idempotent_and_only_ends_its_own_claim() -> None:
    clock = Clock()
    cache = make(clock, lock_ttl=30)
    first = lease_of(cache.lookup_now("k"))
    cache.release(first)
    cache.release(first)
    second = lease_of(cache.lookup_now("k"))
    cache.release(first)  # a stale lease: the second claim stands
    assert cache.lookup_now("k") is None
    cache.release(second)
    assert isinstance(cache.lookup_now("k"), Lease)


def test_a_claim_older_than_the_lock_ttl_is_taken_over() -> None:
    clock = Clock()
    cache = make(clock, lock_ttl=30)
    dead = lease_of(cache.lookup_now("k"))
    clock.now += 29
    assert cache.lookup_now("k") is None
    clock.now += 1
    live = lease_of(cache.lookup_now("k"))
    assert live.token != dead.token
    # The first holder comes back late: it neither fills nor frees the new holder's key.
    assert not cache.fill(dead, answer(b"late"))
    cache.release(dead)
    assert cache.lookup_now("k") is None
    assert cache.fill(live, answer())
    assert cache.lookup_now("k") == answer()


def test_a_dead_claims_holder_may_still_fill_if_no_one_took_over() -> None:
    clock = Clock()
    cache = make(clock, lock_ttl=30)
    lease = lease_of(cache.lookup_now("k"))
    clock.now += 31
    assert cache.fill(lease, answer())
    assert cache.lookup_now("k") == answer()


# -- single flight ------------------------------------------------------------------------


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_twenty_concurrent_lookups_ask_the_provider_once() -> None:
    cache = make(Clock())
    ready = asyncio.Event()

    async def caller() -> CachedAnswer | Lease | str | None:
        found = await cache.lookup("k", 10)
        if isinstance(found, Lease):
            await ready.wait()  # "asks the provider"
            assert cache.fill(found, answer())
            return "filled"
        return found

    tasks = [asyncio.create_task(caller()) for _ in range(20)]
    await settle()
    assert not any(task.done() for task in tasks)  # 19 wait for the one
    ready.set()
    results = await asyncio.gather(*tasks)
    assert results.count("filled") == 1
    assert [r for r in results if r != "filled"] == [answer()] * 19


async def test_a_release_without_fill_makes_one_waiter_the_filler() -> None:
    cache = make(Clock())
    first = lease_of(cache.lookup_now("k"))
    ready = asyncio.Event()

    async def waiter() -> CachedAnswer | str | None:
        found = await cache.lookup("k", 10)
        if isinstance(found, Lease):
            await ready.wait()
            cache.fill(found, answer(b"second"))
            return "filled"
        return found

    tasks = [asyncio.create_task(waiter()) for _ in range(5)]
    await settle()
    cache.release(first)  # the provider failed
    await settle()
    assert not any(task.done() for task in tasks)  # one holds the new lease, four wait on it
    ready.set()
    results = await asyncio.gather(*tasks)
    assert results.count("filled") == 1
    assert [r for r in results if r != "filled"] == [answer(b"second")] * 4


async def test_a_too_big_answer_ends_the_claim_for_its_waiters_too() -> None:
    cache = make(Clock(), max_entry_bytes=100)
    first = lease_of(cache.lookup_now("k"))
    waiting = asyncio.create_task(cache.lookup("k", 10))
    await settle()
    assert not cache.fill(first, answer(b"x" * 200))
    assert isinstance(await waiting, Lease)


async def test_a_waiter_gives_up_after_wait_seconds() -> None:
    cache = make(Clock())
    lease = lease_of(cache.lookup_now("k"))
    assert await cache.lookup("k", 0.05) is None
    assert await cache.lookup("k", 0) is None
    assert cache.fill(lease, answer())  # the holder is unaffected by the waiter's timeout


async def test_a_waiter_takes_over_a_claim_that_dies_while_it_waits() -> None:
    cache = make(lock_ttl=0.05)  # the real clock: the claim dies while the waiter sleeps
    dead = lease_of(cache.lookup_now("k"))
    taken = lease_of(await cache.lookup("k", 10))
    assert taken.token != dead.token


async def test_a_fill_by_the_new_holder_wakes_the_dead_claims_waiters() -> None:
    clock = Clock()
    cache = make(clock, lock_ttl=30)
    lease_of(cache.lookup_now("k"))
    waiting = asyncio.create_task(cache.lookup("k", 10))
    await settle()
    clock.now += 31
    live = lease_of(cache.lookup_now("k"))
    await settle()
    assert not waiting.done()  # it now waits for the new holder
    cache.fill(live, answer())
    assert await waiting == answer()
