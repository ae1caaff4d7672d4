"""The cache's key (what changes the answer, and always the tenant) and its mode per request."""

from __future__ import annotations

from typing import Any

import pytest

from extproc.cache.key import IGNORED_FIELDS, CacheMode, cache_key, cache_mode

BODY: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi", "name": "a"}],
    "temperature": 0,
    "max_tokens": 20,
}


def key(body: dict[str, Any], tenant: str = "acme", model: str = "gpt-4o") -> str:
    return cache_key(tenant, model, "/v1/chat/completions", body)


def test_the_key_is_a_hex_sha256() -> None:
    value = key(BODY)
    assert len(value) == 64
    int(value, 16)


def test_key_order_does_not_matter_at_any_depth() -> None:
    reordered = {
        "max_tokens": 20,
        "temperature": 0,
        "messages": [{"name": "a", "content": "hi", "role": "user"}],
        "model": "gpt-4o",
    }
    assert list(reordered) != list(BODY)
    assert key(reordered) == key(BODY)


@pytest.mark.parametrize("field", sorted(IGNORED_FIELDS))
def test_fields_that_do_not_change_the_answer_are_left_out(field: str) -> None:
    assert key({**BODY, field: {"x": 1}}) == key(BODY)
    assert key({**BODY, field: "one"}) == key({**BODY, field: "two"})


def test_the_ignored_fields_are_the_documented_ones() -> None:
    assert {
        "user",
        "metadata",
        "store",
        "timeout",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    } == IGNORED_FIELDS


@pytest.mark.parametrize(
    "change",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"max_tokens": 21},
        {"seed": 7},
        {"messages": [{"role": "user", "content": "hi!", "name": "a"}]},
    ],
)
def test_fields_that_change_the_answer_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BODY, **change}) != key(BODY)


def test_stream_options_change_the_key_of_a_stream() -> None:
    stream = {**BODY, "stream": True}
    assert key({**stream, "stream_options": {"include_usage": True}}) != key(stream)


def test_tenants_models_and_endpoints_never_share_a_key() -> None:
    assert key(BODY, tenant="acme") != key(BODY, tenant="globex")
    assert key(BODY, model="gpt-4o") != key(BODY, model="gpt-4o-mini")
    assert cache_key("acme", "m", "/v1/chat/completions", BODY) != cache_key(
        "acme", "m", "/v1/completions", BODY
    )


def test_values_cannot_smuggle_one_part_of_the_key_into_another() -> None:
    # A naive "tenant:model" join would make these equal.
    assert cache_key("a:b", "c", "/e", BODY) != cache_key("a", "b:c", "/e", BODY)


# -- cache_mode -----------------------------------------------------------------------------

ON = {"x-gateway-cache": "on"}
OFF = {"x-gateway-cache": "off"}


@pytest.mark.parametrize(
    ("body", "headers", "mode"),
    [
        # Deterministic by temperature: integer or float 0.
        ({"temperature": 0}, {}, CacheMode.LOOKUP),
        ({"temperature": 0.0}, {}, CacheMode.LOOKUP),
        ({"temperature": -0.0}, {}, CacheMode.LOOKUP),
        # A bool is not a temperature (False == 0 in Python).
        ({"temperature": False}, {}, None),
        ({"temperature": True}, {}, None),
        ({"temperature": 0.5}, {}, None),
        ({"temperature": "0"}, {}, None),
        ({"temperature": None}, {}, None),
        ({}, {}, None),  # the providers' default temperature is not 0
        # The opt-in header makes anything cacheable; values are case-insensitive.
        ({"temperature": 0.5}, ON, CacheMode.LOOKUP),
        ({}, {"x-gateway-cache": " ON "}, CacheMode.LOOKUP),
        ({"temperature": True}, ON, CacheMode.LOOKUP),
        ({}, {"x-gateway-cache": "yes"}, None),
        # Opting out of a cacheable request.
        ({"temperature": 0}, OFF, CacheMode.BYPASS),
        ({"temperature": 0}, {"x-gateway-cache": "Off"}, CacheMode.BYPASS),
        # ... of one that is not cacheable anyway: the cache has nothing to do.
        ({"temperature": 0.5}, OFF, None),
        # Cache-Control: directives, case-insensitive, among others.
        ({"temperature": 0}, {"cache-control": "no-store"}, CacheMode.BYPASS),
        ({"temperature": 0}, {"cache-control": "No-Store"}, CacheMode.BYPASS),
        ({"temperature": 0}, {"cache-control": "no-cache"}, CacheMode.REFRESH),
        ({"temperature": 0}, {"cache-control": "max-age=0, NO-CACHE"}, CacheMode.REFRESH),
        ({"temperature": 0}, {"cache-control": 'no-cache="set-cookie"'}, CacheMode.REFRESH),
        ({"temperature": 0}, {"cache-control": "no-cache, no-store"}, CacheMode.BYPASS),
        ({"temperature": 0}, {"cache-control": "max-age=60"}, CacheMode.LOOKUP),
        ({"temperature": 0}, {"cache-control": "no-cachex"}, CacheMode.LOOKUP),
        ({"temperature": 0.5}, {"cache-control": "no-cache"}, None),
        ({"temperature": 0.5}, {"cache-control": "no-store"}, None),
        # Combinations with the opt-in header.
        ({"temperature": 0.7}, {**ON, "cache-control": "no-cache"}, CacheMode.REFRESH),
        ({"temperature": 0.7}, {**ON, "cache-control": "no-store"}, CacheMode.BYPASS),
        ({"temperature": 0}, {**OFF, "cache-control": "no-cache"}, CacheMode.BYPASS),
    ],
)
def test_cache_mode(body: dict[str, Any], headers: dict[str, str], mode: CacheMode | None) -> None:
    assert cache_mode(body, headers) is mode
