"""Every metric the Grafana dashboard and the alert rules query is exported after real traffic.

A stack of its own (one provider with an active health check, so `gateway_provider_healthy` is
there) answers a pass-through, a translated, two streamed (pass-through and translated) and one
refused request from the openai SDK; then the processor's `/metrics` must carry every metric
name that a query of helm/llm-gateway/files/grafana-dashboard.json or prometheus-rules.yaml
reads. A query on `x_bucket` needs `x` exported as a histogram.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack, make_stack
from tests.monitoring import dashboard_expressions, rule_expressions
from tests.promql import metric_names

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    def with_health_check(config: dict[str, Any]) -> None:
        provider = next(p for p in config["providers"] if p["name"] == "p-openai")
        provider["health_check"] = {"path": "/models", "interval_seconds": 1}

    with make_stack(tmp_path_factory.mktemp("metrics"), customize=with_health_check) as s:
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
    metrics_stack: Stack,
) -> None:
    send_traffic(metrics_stack)
    samples = exported(metrics_stack)
    used = queried_metrics()
    problems = {
        name: f"{why} (used by {', '.join(used[name])})"
        for name in sorted(used)
        if (why := missing(name, samples)) is not None
    }
    assert not problems, "\n".join(f"{name}: {why}" for name, why in problems.items())
