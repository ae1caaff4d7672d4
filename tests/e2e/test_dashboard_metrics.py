"""Every metric the Grafana dashboard and the alert rules query is exported after real traffic.

A stack of its own (one provider with an active health check, so `gateway_provider_healthy` is
there) answers a pass-through, a translated, two streamed (pass-through and translated) and one
refused request from the openai SDK; then the processor's `/metrics` must carry every metric
name that a query of helm/llm-gateway/files/grafana-dashboard.json or prometheus-rules.yaml
reads. A query on `x_bucket` needs `x` exported as a histogram.

Its governance runs on a Redis of its own (`gateway_limiter_redis_up` exists only then), with a
priced target and a tenant allowed one request a minute: that tenant gets one 429 from the
gateway, a stream the client leaves keeps its estimate, and a request while Redis is killed is
admitted locally (labelled counters appear only once incremented).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.decisions.auth import hash_key
from extproc.dev.redis_server import RedisServer
from tests.e2e.conftest import FULL_KEY, Stack, make_stack
from tests.monitoring import dashboard_expressions, rule_expressions
from tests.promql import metric_names

pytestmark = pytest.mark.e2e


CAPPED_KEY = "sk-test-one-a-minute"
REDIS_RETRY_SECONDS = 0.5


@pytest.fixture(scope="module")
def limiter_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as redis:
        yield redis


@pytest.fixture(scope="module")
def metrics_stack(
    tmp_path_factory: pytest.TempPathFactory, limiter_redis: RedisServer
) -> Iterator[Stack]:
    def customize(config: dict[str, Any]) -> None:
        provider = next(p for p in config["providers"] if p["name"] == "p-openai")
        provider["health_check"] = {"path": "/models", "interval_seconds": 1}
        model = next(m for m in config["models"] if m["name"] == "chat-openai")
        model["targets"][0]["price"] = {"input_per_million": 2.0, "output_per_million": 8.0}
        config["tenants"].append(
            {
                "name": "capped",
                "keys": [{"sha256": hash_key(CAPPED_KEY), "id": "capped-key"}],
                "limits": {"requests_per_minute": 1},
            }
        )
        config["governance"] = {
            "backend": "redis",
            "redis": {"url": limiter_redis.url, "retry_seconds": REDIS_RETRY_SECONDS},
        }

    with make_stack(tmp_path_factory.mktemp("metrics"), customize=customize) as s:
        yield s


def send_traffic(stack: Stack) -> None:
    client = stack.client()
    for model in ("chat-openai", "chat-anthropic"):  # pass-through, translated
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"whole {model}"}]
        )
        assert reply.choices[0].message.content == f"echo: whole {model}"
        chunks = list(
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"streamed {model}"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"echo: streamed {model}"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        stack.client(key="sk-not-a-key").chat.completions.create(
            model="chat-openai", messages=[{"role": "user", "content": "refused"}]
        )


def ask(stack: Stack, key: str = FULL_KEY) -> None:
    reply = stack.client(key=key).chat.completions.create(
        model="chat-openai", messages=[{"role": "user", "content": "governed"}]
    )
    assert reply.choices[0].message.content == "echo: governed"


def send_governed_traffic(stack: Stack, redis: RedisServer) -> None:
    """A 429 of a limit, an estimate that stood, and a local decision while Redis is gone."""
    ask(stack, CAPPED_KEY)  # through Redis: priced, its prompt estimate compared to the usage
    with pytest.raises(openai.RateLimitError) as refused:
        ask(stack, CAPPED_KEY)
    assert refused.value.code == "rate_limit_exceeded"

    # A stream the client leaves before the provider's usage chunk: its estimate stands.
    gate = threading.Event()
    stack.fake.set_behaviour(stream_gate=gate, reply="one two three four")
    try:
        stream = stack.client().chat.completions.create(
            model="chat-openai", messages=[{"role": "user", "content": "left"}], stream=True
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        stream.close()
        wait_for_sample(stack, "gateway_usage_estimated_total", lambda v: v >= 1)
    finally:
        gate.set()
        stack.fake.clear()

    redis.kill()
    try:
        ask(stack, CAPPED_KEY)  # admitted by the processor's own limits
        assert sample(stack, "gateway_limiter_redis_up") == 0
        assert sample(stack, "gateway_limiter_local_decisions_total") == 1
    finally:
        redis.start()
    time.sleep(REDIS_RETRY_SECONDS + 0.2)  # past `retry_seconds`: the next call tries Redis
    ask(stack)  # its settlement reaches Redis again
    wait_for_sample(stack, "gateway_limiter_redis_up", lambda v: v == 1)


def sample(stack: Stack, name: str) -> float | None:
    """The sum of the samples called `name` on the processor's `/metrics` (None: none)."""
    response = httpx.get(f"{stack.admin_url}/metrics", timeout=10)
    response.raise_for_status()
    values = [
        s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name == name
    ]
    return sum(values) if values else None


def wait_for_sample(
    stack: Stack, name: str, ok: Callable[[float], bool], timeout: float = 10
) -> None:
    """Until `ok(value)` of `sample(name)`: records close, and settle, just after the answer."""
    deadline = time.monotonic() + timeout
    while (value := sample(stack, name)) is None or not ok(value):
        assert time.monotonic() < deadline, f"{name} is {value}"
        time.sleep(0.05)


def exported(stack: Stack) -> dict[str, str]:
    """Sample name -> the type of its metric family, from the processor's `/metrics`."""
    response = httpx.get(f"{stack.admin_url}/metrics", timeout=10)
    response.raise_for_status()
    return {
        sample.name: family.type
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def missing(name: str, samples: dict[str, str]) -> str | None:
    """Why `name` is not exported as the query needs it (None when it is)."""
    if name not in samples:
        return "not exported"
    if name.endswith("_bucket") and samples[name] != "histogram":
        return f"exported as a {samples[name]}, not a histogram"
    return None


def queried_metrics() -> dict[str, list[str]]:
    """Metric name -> where it is queried (dashboard panels and variables, alert rules)."""
    used: dict[str, list[str]] = {}
    for where, expr in [*dashboard_expressions(), *rule_expressions()]:
        for name in metric_names(expr):
            places = used.setdefault(name, [])
            if where not in places:
                places.append(where)
    return used


def test_every_metric_the_dashboard_and_the_alerts_query_is_exported(
    metrics_stack: Stack, limiter_redis: RedisServer
) -> None:
    send_traffic(metrics_stack)
    send_governed_traffic(metrics_stack, limiter_redis)
    samples = exported(metrics_stack)
    used = queried_metrics()
    problems = {
        name: f"{why} (used by {', '.join(used[name])})"
        for name in sorted(used)
        if (why := missing(name, samples)) is not None
    }
    assert not problems, "\n".join(f"{name}: {why}" for name, why in problems.items())
