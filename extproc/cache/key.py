"""Whether a request may be served from the cache (`cache_mode`), and its entry's name.

Pure functions of the parsed body and the request headers; no I/O. The key covers only what
changes the answer, and always the tenant: two tenants never share an entry.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson


class CacheMode(enum.Enum):
    """What the cache does for one cacheable request."""

    LOOKUP = "lookup"  # answer from the cache if it can, else store the provider's answer
    REFRESH = "refresh"  # skip the lookup, store the fresh answer (Cache-Control: no-cache)
    BYPASS = "bypass"  # neither (Cache-Control: no-store, x-gateway-cache: off)


OPT_IN_HEADER = "x-gateway-cache"

# Top-level body fields that do not change the provider's answer, left out of the key so
# that requests differing only in them share an entry.
IGNORED_FIELDS = frozenset(
    {
        "user",  # end-user id for the provider's abuse monitoring
        "metadata",  # caller's tags, stored with the request, never read by the model
        "store",  # whether the provider keeps the completion for evals/distillation
        "timeout",  # client-side request timeout (SDKs), not a sampling parameter
        "service_tier",  # latency/price class of the provider's serving, same model
        "safety_identifier",  # the newer name of `user`
        "prompt_cache_key",  # routing hint for the provider's prompt cache (same answer)
    }
)


def cache_mode(body: Mapping[str, Any], headers: Mapping[str, str]) -> CacheMode | None:
    """The cache's mode for a request, or None when it is not cacheable.

    Cacheable: deterministic (`temperature` is a number equal to 0) or opted in with
    `x-gateway-cache: on`. A cacheable request opts out with `x-gateway-cache: off` or
    `Cache-Control: no-store` (BYPASS), or asks for a fresh answer with `no-cache` (REFRESH).
    `headers` has lower-case names.
    """
    switch = headers.get(OPT_IN_HEADER, "").strip().lower()
    temperature = body.get("temperature")
    deterministic = (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and temperature == 0
    )
    if not deterministic and switch != "on":
        return None
    if switch == "off":
        return CacheMode.BYPASS
    directives = _directives(headers.get("cache-control", ""))
    if "no-store" in directives:
        return CacheMode.BYPASS
    if "no-cache" in directives:
        return CacheMode.REFRESH
    return CacheMode.LOOKUP


def _directives(value: str) -> set[str]:
    # `no-cache="set-cookie"` and `max-age=0` have values: only the directive's name matters.
    return {part.split("=", 1)[0].strip().lower() for part in value.split(",")}


def cache_key(tenant: str, model: str, endpoint: str, body: Mapping[str, Any]) -> str:
    """The entry's name: hex SHA-256 of canonical JSON of tenant, model, endpoint and body.

    The body's keys are sorted (at every depth) and `IGNORED_FIELDS` left out; `stream` and
    `stream_options` stay, because a stream and a whole answer are stored differently.
    """
    kept = {name: value for name, value in body.items() if name not in IGNORED_FIELDS}
    canonical = orjson.dumps([tenant, model, endpoint, kept], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
