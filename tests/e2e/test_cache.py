"""End to end: the response cache through the real Envoy binary, the openai SDK as the client.

A module stack caches every model (memory backend); a second module runs three replicas on
one real redis-server. What the provider was asked is read from the fake's request log, so "a
hit costs no provider call" is counted, never assumed. Each test uses its own prompt, so no
two tests share an entry.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from extproc.decisions.auth import hash_key
from extproc.dev.fakes import FakeProviderServer
from tests.e2e.conftest import FULL_KEY, UPSTREAM_KEYS, Stack, gateway_config, metric
from tests.e2e.redis_replicas import redis_replicas

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
OTHER_KEY = "sk-cache-other-tenant"
MAX_ENTRY = 4096


def cached(config: Json) -> None:
    """Cache on for every model; a second tenant; a model with two targets (upstream path)."""
    config["cache"] = {"enabled": True, "max_entry_bytes": MAX_ENTRY, "wait_seconds": 20}
    config["tenants"].append({"name": "other", "api_key_sha256": [hash_key(OTHER_KEY)]})
    config["models"].append(
        {
            "name": "chat-two-targets",
            "targets": [
                {"provider": "p-openai", "model": "gpt-first"},
                {"provider": "p-vllm", "model": "llama-second"},
            ],
        }
    )
    config["models"].append(
        {
            "name": "chat-uncached",
            "cache": False,
            "targets": [{"provider": "p-openai", "model": "gpt-u"}],
        }
    )


@pytest.fixture(scope="module")
def cache_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cache")

    def config(fake_url: str) -> Json:
        data = gateway_config(fake_url, tmp)
        cached(data)
        return data

    with Stack(tmp, config, FakeProviderServer(port=0), processor_env=UPSTREAM_KEYS).start() as s:
        yield s


@pytest.fixture
def fake(cache_stack: Stack) -> Iterator[FakeProviderServer]:
    cache_stack.fake.clear()
    yield cache_stack.fake
    cache_stack.fake.clear()


def prompt() -> list[Json]:
    return [{"role": "user", "content": f"what is cached? {uuid.uuid4().hex}"}]


def ask(
    stack: Stack, messages: list[Json], key: str = FULL_KEY, **kw: Any
) -> tuple[str | None, Any]:
    """(x-gateway-cache, the parsed completion) of one whole-answer request."""
    kw.setdefault("temperature", 0)
    kw.setdefault("model", "chat-openai")
    raw = stack.client(key).chat.completions.with_raw_response.create(messages=messages, **kw)
    return raw.headers.get("x-gateway-cache"), raw.parse()


def ask_stream(stack: Stack, messages: list[Json], **kw: Any) -> tuple[str | None, list[Any]]:
    kw.setdefault("temperature", 0)
    kw.setdefault("model", "chat-openai")
    raw = stack.client().chat.completions.with_raw_response.create(
        messages=messages, stream=True, **kw
    )
    return raw.headers.get("x-gateway-cache"), list(raw.parse())


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize(
    "model", ["chat-openai", "chat-anthropic", "chat-gemini", "chat-two-targets"]
)
def test_a_hit_is_answered_without_the_provider(
    cache_stack: Stack, fake: FakeProviderServer, model: str
) -> None:
    messages = prompt()
    first_header, first = ask(cache_stack, messages, model=model)
    assert first_header == "miss" and len(fake.requests) == 1
    second_header, second = ask(cache_stack, messages, model=model)
    assert second_header == "hit"
    assert len(fake.requests) == 1  # no provider call for the hit
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.completion_tokens == first.usage.completion_tokens


@pytest.mark.parametrize("model", ["chat-openai", "chat-anthropic", "chat-bedrock"])
def test_a_stream_is_replayed_in_the_same_chunks(
    cache_stack: Stack, fake: FakeProviderServer, model: str
) -> None:
    messages = prompt()
    header, first = ask_stream(cache_stack, messages, model=model)
    assert header == "miss" and len(fake.requests) == 1
    header, again = ask_stream(cache_stack, messages, model=model)
    assert header == "hit" and len(fake.requests) == 1
    assert text_of(again) == text_of(first) and text_of(first)
    assert [c.model_dump() for c in again] == [c.model_dump() for c in first]
    # A whole answer to the same prompt is another entry (a stream is stored as one).
    header, _ = ask(cache_stack, messages, model=model)
    assert header == "miss" and len(fake.requests) == 2


def test_twenty_concurrent_identical_requests_make_one_provider_call(
    cache_stack: Stack, fake: FakeProviderServer
) -> None:
    fake.set_behaviour(latency_s=1.0)  # the first is still at the provider when the rest arrive
    messages = prompt()
    start = threading.Barrier(20)

    def one(_: int) -> tuple[str | None, str | None]:
        start.wait()
        header, answer = ask(cache_stack, messages)
        return header, answer.choices[0].message.content

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert len(fake.requests) == 1
    assert Counter(header for header, _ in results) == {"miss": 1, "hit": 19}
    assert len({content for _, content in results}) == 1


def test_never_shared_across_tenants(cache_stack: Stack, fake: FakeProviderServer) -> None:
    messages = prompt()
    assert ask(cache_stack, messages)[0] == "miss"
    assert ask(cache_stack, messages, key=OTHER_KEY)[0] == "miss"
    assert len(fake.requests) == 2
    assert ask(cache_stack, messages, key=OTHER_KEY)[0] == "hit"
    assert len(fake.requests) == 2


def test_only_deterministic_or_opted_in_requests_are_cached(
    cache_stack: Stack, fake: FakeProviderServer
) -> None:
    messages = prompt()
    for _ in range(2):
        header, _ = ask(cache_stack, messages, temperature=0.7)
        assert header is None
    assert len(fake.requests) == 2
    fake.clear()
    opted = {"x-gateway-cache": "on"}
    assert ask(cache_stack, messages, temperature=0.7, extra_headers=opted)[0] == "miss"
    assert ask(cache_stack, messages, temperature=0.7, extra_headers=opted)[0] == "hit"
    assert len(fake.requests) == 1
    assert fake.requests[0].header("x-gateway-cache") is None  # not sent on to the provider
    fake.clear()
    assert ask(cache_stack, prompt(), model="chat-uncached")[0] is None  # cache: false


def test_cache_control_bypasses(cache_stack: Stack, fake: FakeProviderServer) -> None:
    messages = prompt()
    assert ask(cache_stack, messages)[0] == "miss"
    no_cache = {"cache-control": "no-cache"}
    assert ask(cache_stack, messages, extra_headers=no_cache)[0] == "miss"  # fetched again
    no_store = {"cache-control": "no-store"}
    assert ask(cache_stack, messages, extra_headers=no_store)[0] == "bypass"
    assert len(fake.requests) == 3
    assert ask(cache_stack, messages)[0] == "hit"
    assert len(fake.requests) == 3


@pytest.mark.parametrize("status", [500, 400, 429])
def test_errors_are_never_cached(cache_stack: Stack, fake: FakeProviderServer, status: int) -> None:
    messages = prompt()
    fake.set_behaviour(status=status, fail_times=1, error_headers={"retry-after": "0"})
    with pytest.raises(openai.APIStatusError) as caught:
        ask(cache_stack, messages)
    assert caught.value.response.headers.get("x-gateway-cache") == "miss"
    header, answer = ask(cache_stack, messages)
    assert header == "miss" and answer.choices[0].message.content
    assert len(fake.requests) == 2
    assert ask(cache_stack, messages)[0] == "hit"


def test_an_answer_above_max_entry_bytes_is_not_stored(
    cache_stack: Stack, fake: FakeProviderServer
) -> None:
    fake.set_behaviour(reply="long " * (MAX_ENTRY // 4))
    messages = prompt()
    before = (
        metric(cache_stack, "gateway_cache_stores_total", model="chat-openai", result="too_large")
        if _has(cache_stack, "too_large")
        else 0.0
    )
    assert ask(cache_stack, messages)[0] == "miss"
    assert ask(cache_stack, messages)[0] == "miss"
    assert len(fake.requests) == 2
    after = metric(
        cache_stack, "gateway_cache_stores_total", model="chat-openai", result="too_large"
    )
    assert after == before + 2


def _has(stack: Stack, result: str) -> bool:
    try:
        metric(stack, "gateway_cache_stores_total", model="chat-openai", result=result)
    except AssertionError:
        return False
    return True


def test_a_hit_counts_as_cached_usage_with_no_cost(
    cache_stack: Stack, fake: FakeProviderServer
) -> None:
    messages = prompt()
    _, first = ask(cache_stack, messages, key=OTHER_KEY)
    before = httpx.get(
        f"{cache_stack.admin_url}/usage", params={"tenant": "other"}, timeout=10
    ).json()
    hits_before = metric(
        cache_stack, "gateway_cache_requests_total", model="chat-openai", result="hit"
    )
    assert ask(cache_stack, messages, key=OTHER_KEY)[0] == "hit"
    after = httpx.get(
        f"{cache_stack.admin_url}/usage", params={"tenant": "other"}, timeout=10
    ).json()
    totals_before = before["tenants"]["other"]["totals"]
    totals_after = after["tenants"]["other"]["totals"]
    assert totals_after["cache_hits"] == totals_before.get("cache_hits", 0) + 1
    assert (
        totals_after["cached_tokens"]
        == totals_before.get("cached_tokens", 0) + first.usage.prompt_tokens
    )
    assert totals_after.get("cost", 0) == totals_before.get("cost", 0)
    assert (
        metric(cache_stack, "gateway_cache_requests_total", model="chat-openai", result="hit")
        == hits_before + 1
    )


# -- shared through Redis: three replicas ------------------------------------------------------


def cached_on_redis(redis_url: str) -> Callable[[Json], None]:
    """`cached`, with the cache's entries and locks in Redis at `redis_url`."""

    def customize(data: Json) -> None:
        cached(data)
        data["cache"]["backend"] = "redis"
        data["governance"] = {"redis": {"url": redis_url, "timeout_ms": 500}}

    return customize


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[Stack], FakeProviderServer]]:
    root = tmp_path_factory.mktemp("cache-redis")
    with redis_replicas(root, [cached_on_redis] * 3) as shared:
        yield shared.stacks, shared.fake


def test_replicas_on_redis_share_entries_and_make_one_provider_call(
    replicas: tuple[list[Stack], FakeProviderServer],
) -> None:
    stacks, fake = replicas
    fake.clear()
    fake.set_behaviour(latency_s=1.0)
    messages = prompt()
    start = threading.Barrier(21)

    def one(index: int) -> tuple[str | None, str | None]:
        start.wait()
        header, answer = ask(stacks[index % 3], messages)
        return header, answer.choices[0].message.content

    with ThreadPoolExecutor(21) as pool:
        results = list(pool.map(one, range(21)))  # seven requests on each replica
    assert len(fake.requests) == 1
    assert Counter(header for header, _ in results) == {"miss": 1, "hit": 20}
    assert len({content for _, content in results}) == 1
    fake.set_behaviour(latency_s=0.0)
    # Another tenant's identical request is its own entry, on every replica.
    assert ask(stacks[1], messages, key=OTHER_KEY)[0] == "miss"
    assert ask(stacks[2], messages, key=OTHER_KEY)[0] == "hit"
    assert len(fake.requests) == 2


def test_replicas_replay_streams_from_redis(
    replicas: tuple[list[Stack], FakeProviderServer],
) -> None:
    stacks, fake = replicas
    fake.clear()
    messages = prompt()
    header, first = ask_stream(stacks[0], messages, model="chat-anthropic")
    assert header == "miss"
    header, again = ask_stream(stacks[2], messages, model="chat-anthropic")
    assert header == "hit" and len(fake.requests) == 1
    assert [c.model_dump() for c in again] == [c.model_dump() for c in first]
