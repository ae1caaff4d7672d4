"""What a cache store keeps and hands out: `CachedAnswer`, `Lease`, and the `CacheStore` protocol.

An entry's bytes are a small orjson header, a newline and the raw body, so the body is never
re-encoded; `decode` refuses anything malformed instead of raising.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

import orjson

_VERSION = 1
# orjson escapes newlines inside strings, so the header's bytes never hold one.
_SEPARATOR = b"\n"


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A provider's answer as the cache keeps it: the body the client received, and its usage."""

    body: bytes
    content_type: str
    stream: bool  # the body is the whole SSE stream, not one JSON document
    prompt_tokens: int
    completion_tokens: int
    stored_at: float  # wall-clock seconds (time.time()) when it was stored

    def _header(self) -> bytes:
        return orjson.dumps(
            {
                "v": _VERSION,
                "ct": self.content_type,
                "s": self.stream,
                "p": self.prompt_tokens,
                "c": self.completion_tokens,
                "t": self.stored_at,
            }
        )

    def encode(self) -> bytes:
        """The entry's bytes: header, separator, body."""
        return self._header() + _SEPARATOR + self.body

    def size(self) -> int:
        """Length of `encode()`, without copying the body."""
        return len(self._header()) + len(_SEPARATOR) + len(self.body)

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer | None:
        """The answer in `data`, or None if `data` is not an entry of this version."""
        header, separator, body = data.partition(_SEPARATOR)
        if not separator:
            return None
        try:
            fields = orjson.loads(header)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(fields, dict) or fields.get("v") != _VERSION:
            return None
        content_type, stream, stored_at = fields.get("ct"), fields.get("s"), fields.get("t")
        prompt, completion = _count(fields.get("p")), _count(fields.get("c"))
        if (
            not isinstance(content_type, str)
            or not isinstance(stream, bool)
            or prompt is None
            or completion is None
            or not isinstance(stored_at, int | float)
            or isinstance(stored_at, bool)
        ):
            return None
        return cls(body, content_type, stream, prompt, completion, float(stored_at))


def _count(value: object) -> int | None:
    """A token count (an int, not a bool, at least 0), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to fill one key: whoever holds it asks the provider, then fills or releases."""

    key: str
    token: str  # random: tells this claim from a later one on the same key
    taken_at: float  # the store's monotonic clock, seconds

    @classmethod
    def new(cls, key: str, now: float) -> Lease:
        """A lease with a fresh random token (also what a REFRESH request fills with)."""
        return cls(key, secrets.token_hex(8), now)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What a store holds, for gauges."""

    entries: int
    bytes: int


class CacheStore(Protocol):
    """A response cache with single-flight fills: one caller per key asks the provider."""

    def lookup_now(self, key: str) -> CachedAnswer | Lease | None:
        """Without waiting: the answer, a lease (fill it), or None (await `lookup`)."""

    async def lookup(self, key: str, wait_seconds: float) -> CachedAnswer | Lease | None:
        """The answer, a lease (fill it), or None: go to the provider and do not fill.

        Waits up to `wait_seconds` for another caller's fill. Never raises.
        """

    def fill(self, lease: Lease, answer: CachedAnswer) -> bool:
        """Store the answer under the lease's key and end the claim; whether it is stored."""

    def release(self, lease: Lease) -> None:
        """End the claim without an answer (idempotent): a waiter may claim instead."""

    def stats(self) -> CacheStats | None:
        """Entries and bytes held, or None when the store cannot tell without I/O."""

    async def drain(self) -> None:
        """Wait for background writes."""

    async def close(self) -> None:
        """Drain, then let go of connections."""
