"""Several gateway replicas (each its own processor and Envoy) on one redis-server and one fake
provider, as the e2e tests of shared limits, budgets and cache entries start them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from extproc.dev.fakes import FakeProviderServer
from extproc.dev.redis_server import RedisServer
from tests.e2e.conftest import UPSTREAM_KEYS, Stack, gateway_config

Customize = Callable[[dict[str, Any]], None]


class BorrowedFake:
    """One fake provider lent to several stacks: they neither start nor stop it."""

    def __init__(self, fake: FakeProviderServer) -> None:
        self.fake = fake

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def start(self) -> object:
        return self

    def stop(self) -> None:
        return None


class RedisReplicas:
    """The running replicas (in the order they were asked for), their Redis and their fake."""

    def __init__(self, redis: RedisServer, fake: FakeProviderServer, stacks: list[Stack]):
        self.redis = redis
        self.fake = fake
        self.stacks = stacks


def replica_stack(workdir: Path, fake: FakeProviderServer, customize: Customize) -> Stack:
    """A stack (not started) in `workdir` on `gateway_config` changed by `customize`, on the
    borrowed `fake`."""
    workdir.mkdir(parents=True, exist_ok=True)

    def config(fake_url: str) -> dict[str, Any]:
        data = gateway_config(fake_url, workdir)
        customize(data)
        return data

    borrowed: Any = BorrowedFake(fake)
    return Stack(workdir, config, borrowed, processor_env=UPSTREAM_KEYS)


@contextlib.contextmanager
def redis_replicas(
    root: Path, customizers: Sequence[Callable[[str], Customize]]
) -> Iterator[RedisReplicas]:
    """A redis-server and a fake provider, then one replica per entry of `customizers` (in
    `root/replica-<index>`, its config changed by what the entry returns for the Redis URL),
    started at once; all of it stopped at the end."""
    redis = RedisServer(root / "redis").start()
    fake = FakeProviderServer(port=0).start()
    stacks = [
        replica_stack(root / f"replica-{index}", fake, customizer(redis.url))
        for index, customizer in enumerate(customizers)
    ]
    try:
        with ThreadPoolExecutor(len(stacks)) as pool:
            list(pool.map(lambda s: s.start(), stacks))
        yield RedisReplicas(redis, fake, stacks)
    finally:
        for stack in stacks:
            stack.stop()
        fake.stop()
        redis.stop()
