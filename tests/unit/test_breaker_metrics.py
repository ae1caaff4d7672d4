"""`gateway_breaker_state` exports every configured breaker from the start.

The "no healthy provider" alert (helm/llm-gateway/files/prometheus-rules.yaml) compares every
breaker of a replica: a breaker that never changed state must be there, closed.
"""

from __future__ import annotations

from extproc.config.loading import LoadedConfig, parse_config
from extproc.decisions.breaker import State, Transition
from extproc.gateway import Gateway
from extproc.metrics import Metrics

CONFIG = {
    "auth": {"enabled": False},
    "providers": [
        {"name": "oa", "type": "openai", "base_url": "https://api.example.com/v1"},
        {"name": "local", "type": "ollama", "base_url": "http://127.0.0.1:11434/v1"},
    ],
    "models": [
        {"name": "gpt", "targets": [{"provider": "oa", "model": "gpt-up"}]},
        {
            "name": "pair",
            "targets": [
                {"provider": "oa", "model": "gpt-up"},  # the same breaker as gpt's target
                {"provider": "local", "model": "llama3"},
            ],
        },
        {"name": "emb", "kind": "embeddings", "targets": [{"provider": "oa", "model": "emb-up"}]},
    ],
}


def breaker_states(metrics: Metrics) -> dict[str, float]:
    return {
        sample.labels["target"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "gateway_breaker_state"
        for sample in family.samples
    }


def test_a_new_gateway_exports_every_breaker_closed() -> None:
    gateway = Gateway(LoadedConfig(parse_config(CONFIG), {}, "test"))
    assert breaker_states(gateway.metrics) == {
        "oa/gpt-up": 0.0,
        "local/llama3": 0.0,
        "oa/emb-up": 0.0,
    }


def test_known_breakers_keep_their_state() -> None:
    metrics = Metrics()
    metrics.breaker_transition(Transition("oa/gpt-up", State.CLOSED, State.OPEN, 0.0, "test"))
    metrics.breakers_known(["oa/gpt-up", "local/llama3"])
    assert breaker_states(metrics) == {"oa/gpt-up": 2.0, "local/llama3": 0.0}
