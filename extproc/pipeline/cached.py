"""The response cache's part of a request: the answer from the cache, or the provider's stored.

`CacheState` holds the processor's store (memory or Redis; one per processor, carried across
reloads). `CachePass` follows one cacheable request: its key, the lease of a fill (a request
whose identical twins wait for it), and the answer's bytes as they pass, stored when the
answer ended whole and well. Nothing here runs for requests that are not cacheable.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from extproc.cache.key import CacheMode
from extproc.cache.memory import MemoryCache
from extproc.cache.store import CachedAnswer, CacheStore, Lease
from extproc.config.loading import LoadedConfig
from extproc.metrics import Metrics
from extproc.pipeline.actions import Respond
from extproc.providers.base import Usage

if TYPE_CHECKING:
    from extproc.telemetry.record import RequestRecord

log = logging.getLogger("extproc.cache")

CACHE_HEADER = "x-gateway-cache"
# A stream the gateway or the provider ended with an error event is never stored.
_STREAM_ERROR = b'data: {"error"'
_STREAM_DONE = b"data: [DONE]"


class CacheState:
    """The processor's cache store, made once from the first config (backend restart-only)."""

    def __init__(self, loaded: LoadedConfig, metrics: Metrics) -> None:
        cache = loaded.config.cache
        self.metrics = metrics
        self.store: CacheStore
        if cache.backend == "redis":
            redis = loaded.config.governance.redis
            url = loaded.redis_url or redis.url
            if url is None:
                raise ValueError("cache.backend is redis but no Redis URL is known")
            # Imported only for a Redis cache.
            from redis.asyncio import Redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            from extproc.cache.redis_store import RedisCache

            timeout = redis.timeout_ms / 1000
            client = Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),  # as the limiter's client (governance)
            )
            self.store = RedisCache(
                client,
                redis.key_prefix,
                cache.max_entry_bytes,
                cache.ttl_seconds,
                cache.lock_ttl_seconds,
                on_error=self._failed,
                timeout_seconds=timeout,
            )
        else:
            memory = MemoryCache(
                cache.max_bytes, cache.max_entry_bytes, cache.ttl_seconds, cache.lock_ttl_seconds
            )
            metrics.cache_entries.set_function(lambda: memory.stats().entries)
            metrics.cache_bytes.set_function(lambda: memory.stats().bytes)
            self.store = memory
        self.max_entry_bytes = cache.max_entry_bytes

    def _failed(self, reason: str) -> None:
        self.metrics.cache_errors.labels(reason).inc()

    async def drain(self) -> None:
        """Finish the writes in flight, then let go of connections (the processor stops)."""
        await self.store.close()


class CachePass:
    """One cacheable request's way through the cache."""

    __slots__ = ("key", "lease", "mode", "model", "state")

    def __init__(self, state: CacheState, key: str, mode: CacheMode, model: str) -> None:
        self.state = state
        self.key = key
        self.mode = mode
        self.model = model
        self.lease: Lease | None = None  # this request fills the entry

    @property
    def result(self) -> str:
        """`x-gateway-cache` of an answer from the provider: miss, or bypass."""
        return "bypass" if self.mode is CacheMode.BYPASS else "miss"

    def hit(
        self, answer: CachedAnswer, record: RequestRecord | None, headers: dict[str, str]
    ) -> Respond:
        """Answer from the cache: the stored bytes (a whole stream, replayed at once)."""
        self.state.metrics.cache_requests.labels(self.model, "hit").inc()
        if record is not None:
            now = time.monotonic()
            record.cache = "hit"
            # What the answer used, served from the cache: no provider, no cost.
            prompt = answer.prompt_tokens
            record.usage = Usage.of(prompt, answer.completion_tokens, prompt)
            record.first_chunk_at = record.ended_at = now
            record.answer_complete = True
        age = str(max(0, int(time.time() - answer.stored_at)))
        return Respond(
            200,
            answer.body,
            {"content-type": answer.content_type, CACHE_HEADER: "hit", "age": age, **headers},
        )

    def missed(self, found: Lease | None, record: RequestRecord | None) -> None:
        """The provider answers: with a lease this request fills the entry (REFRESH makes one)."""
        if self.mode is CacheMode.REFRESH:
            found = Lease.new(self.key, time.monotonic())
        self.lease = found
        self.state.metrics.cache_requests.labels(self.model, self.result).inc()
        if record is not None:
            record.cache = self.result

    @property
    def fills(self) -> bool:
        """Whether the answer is read to be stored."""
        return self.lease is not None

    def too_large(self) -> None:
        """The answer outgrew `cache.max_entry_bytes`: it is not stored."""
        if self.lease is not None:
            self._stored("too_large")
            self.release()

    def store(self, body: bytes, record: RequestRecord | None) -> None:
        """Store the whole answer if it ended well (a 200 without an error, a whole stream)."""
        lease = self.lease
        if lease is None:
            return
        self.lease = None
        stream = record is not None and record.stream
        good = record is not None and record.status == 200 and not record.code
        if stream and (_STREAM_ERROR in body or _STREAM_DONE not in body):
            good = False
        if not good or record is None:
            self.state.store.release(lease)
            self._stored("not_stored")
            return
        usage = record.usage
        answer = CachedAnswer(
            body=body,
            content_type="text/event-stream" if stream else "application/json",
            stream=stream,
            prompt_tokens=usage.prompt_tokens if usage is not None else 0,
            completion_tokens=usage.completion_tokens if usage is not None else 0,
            stored_at=time.time(),
        )
        stored = self.state.store.fill(lease, answer)
        self._stored("stored" if stored else "not_stored")

    def _stored(self, result: str) -> None:
        self.state.metrics.cache_stores.labels(self.model, result).inc()

    def release(self) -> None:
        """Give up the fill (an error, an answer cut short): a waiting twin may take it."""
        lease, self.lease = self.lease, None
        if lease is not None:
            self.state.store.release(lease)
