"""The Redis cache on a real redis-server: single flight across replicas (three stores with
clients of their own), lock expiry and ownership, TTLs, corrupt entries, and Redis going away.

Also the entry's bytes (`CachedAnswer.encode`/`decode`), which are what Redis keeps.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from extproc.cache.redis_store import RedisCache
from extproc.cache.store import CachedAnswer, Lease
from extproc.dev.redis_server import RedisServer

TTL = 60.0
LOCK_TTL = 30.0


def answer(body: bytes = b'{"id":"cmpl-1"}', stream: bool = False) -> CachedAnswer:
    return CachedAnswer(body, "application/json", stream, 12, 3, 1_700_000_000.5)


def lease_of(found: CachedAnswer | Lease | None) -> Lease:
    assert isinstance(found, Lease), found
    return found


# -- the entry's bytes --------------------------------------------------------------------


def test_an_answer_round_trips_and_its_body_is_kept_as_is() -> None:
    body = b'data: {"a":1}\n\ndata: [DONE]\n\n\xff\x00'
    value = CachedAnswer(body, "text/event-stream", True, 0, 7, 12.25)
    data = value.encode()
    assert data.endswith(b"\n" + body)
    assert len(data) == value.size()
    assert CachedAnswer.decode(data) == value


def header(**fields: object) -> bytes:
    good: dict[str, object] = {"v": 1, "ct": "a/b", "s": False, "p": 1, "c": 2, "t": 3.0}
    return orjson.dumps({**good, **fields}) + b"\nbody"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\n",
        b"[1,2]\nbody",
        b'{"v":1\nbody',
        header(v=2),
        header(ct=None),
        header(s=1),
        header(p=True),
        header(p=-1),
        header(c=1.5),
        header(t="now"),
        header(t=False),
        orjson.dumps({"v": 1}) + b"\nbody",
    ],
)
def test_malformed_bytes_decode_to_none(data: bytes) -> None:
    assert CachedAnswer.decode(data) is None


def test_the_header_fixture_is_itself_valid() -> None:
    assert CachedAnswer.decode(header()) == CachedAnswer(b"body", "a/b", False, 1, 2, 3.0)


@given(st.binary(max_size=200))
def test_decode_never_raises(data: bytes) -> None:
    found = CachedAnswer.decode(data)
    assert found is None or isinstance(found, CachedAnswer)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


def client_of(server: RedisServer) -> Redis:
    # As a replica's would be: bytes, bounded sockets, one reconnecting retry.
    return Redis.from_url(
        server.url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1)
    )


_prefixes = itertools.count()


class Replicas:
    """Three stores on one Redis, each with a client of its own, as three replicas."""

    def __init__(self, server: RedisServer, lock_ttl: float = LOCK_TTL) -> None:
        self.prefix = f"test{next(_prefixes)}"
        self.errors: list[str] = []
        self.stores = [
            RedisCache(
                client_of(server),
                self.prefix,
                max_entry_bytes=10_000,
                ttl_seconds=TTL,
                lock_ttl_seconds=lock_ttl,
                on_error=self.errors.append,
                timeout_seconds=2,
            )
            for _ in range(3)
        ]
        self.client = client_of(server)

    async def close(self) -> None:
        for store in self.stores:
            await store.close()
        await self.client.aclose()


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    group = Replicas(redis_server)
    yield group
    await group.close()
    assert group.errors == []


@pytest.fixture
async def short_locks(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    group = Replicas(redis_server, lock_ttl=0.1)
    yield group
    await group.close()
    assert group.errors == []


async def gone(client: Redis, key: str) -> None:
    while await client.exists(key):
        await asyncio.sleep(0.01)


# -- hits, misses, TTLs -------------------------------------------------------------------


async def test_a_miss_is_a_lease_and_a_fill_is_a_hit_on_every_replica(
    replicas: Replicas,
) -> None:
    a, b, c = replicas.stores
    assert a.lookup_now("k") is None  # Redis always needs a round trip
    lease = lease_of(await a.lookup("k", 0))
    assert a.fill(lease, answer())
    await a.drain()
    assert await b.lookup("k", 0) == answer()
    assert await c.lookup("k", 0) == answer()


async def test_entries_and_locks_carry_ttls_under_the_documented_keys(
    replicas: Replicas,
) -> None:
    store, client, prefix = replicas.stores[0], replicas.client, replicas.prefix
    lease = lease_of(await store.lookup("k", 0))
    lock = f"{prefix}:cache-lock:k"
    assert store.lock_key("k") == lock
    assert await client.get(lock) == lease.token.encode()
    assert 0 < await client.pttl(lock) <= LOCK_TTL * 1000
    store.fill(lease, answer())
    await store.drain()
    entry = f"{prefix}:cache:k"
    assert store.entry_key("k") == entry
    assert await client.get(entry) == answer().encode()
    assert 0 < await client.pttl(entry) <= TTL * 1000
    assert not await client.exists(lock)


async def test_an_answer_above_max_entry_bytes_is_not_stored_and_the_lock_goes(
    replicas: Replicas,
) -> None:
    store, client = replicas.stores[0], replicas.client
    lease = lease_of(await store.lookup("k", 0))
    assert not store.fill(lease, answer(b"x" * 10_000))
    await store.drain()
    assert not await client.exists(store.entry_key("k"), store.lock_key("k"))
    assert isinstance(await replicas.stores[1].lookup("k", 0), Lease)


async def test_a_corrupt_entry_is_a_miss_and_the_fill_replaces_it(replicas: Replicas) -> None:
    store, client = replicas.stores[0], replicas.client
    await client.set(store.entry_key("k"), b"\x00not an entry", px=60_000)
    lease = lease_of(await store.lookup("k", 0))
    store.fill(lease, answer())
    await store.drain()
    assert await replicas.stores[1].lookup("k", 0) == answer()


async def test_a_client_that_decodes_responses_is_refused(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="bytes"):
            RedisCache(client, "p", 10_000, TTL, LOCK_TTL)
    finally:
        await client.aclose()


# -- single flight across replicas --------------------------------------------------------


async def test_twenty_lookups_on_three_replicas_ask_the_provider_once(
    replicas: Replicas,
) -> None:
    leased, ready = asyncio.Event(), asyncio.Event()

    async def caller(store: RedisCache) -> CachedAnswer | Lease | str | None:
        found = await store.lookup("k", 10)
        if isinstance(found, Lease):
            leased.set()
            await ready.wait()  # "asks the provider"
            assert store.fill(found, answer())
            return "filled"
        return found

    tasks = [asyncio.create_task(caller(replicas.stores[i % 3])) for i in range(20)]
    await leased.wait()
    await asyncio.sleep(0.3)  # the other 19 are polling by now
    assert not any(task.done() for task in tasks)
    ready.set()
    results = await asyncio.gather(*tasks)
    assert results.count("filled") == 1
    assert [r for r in results if r != "filled"] == [answer()] * 19


async def test_a_release_without_fill_lets_one_waiter_on_any_replica_fill(
    replicas: Replicas,
) -> None:
    first = lease_of(await replicas.stores[0].lookup("k", 0))
    ready = asyncio.Event()

    async def waiter(store: RedisCache) -> CachedAnswer | str | None:
        found = await store.lookup("k", 10)
        if isinstance(found, Lease):
            await ready.wait()
            store.fill(found, answer(b"second"))
            return "filled"
        return found

    tasks = [asyncio.create_task(waiter(replicas.stores[i % 3])) for i in range(6)]
    await asyncio.sleep(0.2)
    replicas.stores[0].release(first)  # the provider failed
    await asyncio.sleep(0.3)
    assert not any(task.done() for task in tasks)  # one holds the new lock, five wait on it
    ready.set()
    results = await asyncio.gather(*tasks)
    assert results.count("filled") == 1
    assert [r for r in results if r != "filled"] == [answer(b"second")] * 5


async def test_a_waiter_gives_up_after_wait_seconds(replicas: Replicas) -> None:
    a, b, _ = replicas.stores
    lease = lease_of(await a.lookup("k", 0))
    assert await b.lookup("k", 0) is None
    assert await b.lookup("k", 0.1) is None
    assert a.fill(lease, answer())  # the holder is unaffected
    await a.drain()
    assert await b.lookup("k", 0) == answer()


async def test_an_expired_lock_lets_another_replica_claim(short_locks: Replicas) -> None:
    a, b, _ = short_locks.stores
    lease_of(await a.lookup("k", 0))
    assert await b.lookup("k", 0) is None
    await gone(short_locks.client, a.lock_key("k"))  # its holder died: the lock lapses
    lease_of(await b.lookup("k", 0))


async def test_a_waiter_takes_over_a_lock_that_expires_while_it_polls(
    short_locks: Replicas,
) -> None:
    a, b, _ = short_locks.stores
    dead = lease_of(await a.lookup("k", 0))
    taken = lease_of(await b.lookup("k", 10))
    assert taken.token != dead.token


async def test_a_late_holder_never_deletes_the_new_holders_lock(short_locks: Replicas) -> None:
    a, b, c = short_locks.stores
    client = short_locks.client
    dead = lease_of(await a.lookup("k", 0))
    await gone(client, a.lock_key("k"))
    live = lease_of(await b.lookup("k", 0))
    # Lengthen the live lock so it cannot lapse by itself while we look.
    await client.pexpire(b.lock_key("k"), 60_000)
    a.release(dead)
    await a.drain()
    assert await client.get(b.lock_key("k")) == live.token.encode()
    a.fill(dead, answer(b"late"))  # stored (either answer will do), the lock left alone
    await a.drain()
    assert await client.get(b.lock_key("k")) == live.token.encode()
    assert await c.lookup("k", 0) == answer(b"late")
    b.release(live)
    await b.drain()
    assert not await client.exists(b.lock_key("k"))


# -- Redis going away ---------------------------------------------------------------------


async def test_redis_down_fails_open_and_a_restarted_redis_is_used_again(
    tmp_path: Path,
) -> None:
    errors: list[str] = []
    with RedisServer(tmp_path / "redis") as server:
        store = RedisCache(client_of(server), "down", 10_000, TTL, LOCK_TTL, on_error=errors.append)
        try:
            lease = lease_of(await store.lookup("k", 0))
            server.kill()
            assert await store.lookup("k", 1) is None
            assert errors == ["lookup"]
            store.fill(lease, answer())
            store.release(lease)
            await store.drain()  # neither raises
            assert errors == ["lookup", "fill", "release"]

            server.start()  # empty: no entry, no lock
            lease = lease_of(await store.lookup("k", 0))
            store.fill(lease, answer())
            await store.drain()
            assert await store.lookup("k", 0) == answer()
            assert errors == ["lookup", "fill", "release"]
        finally:
            await store.close()
