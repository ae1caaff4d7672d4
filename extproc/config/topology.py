"""Ids both the Envoy renderer and the processor derive from the config, and must agree on.

A model's route id is also its Envoy cluster's name; a target id is its endpoint's `gw.target`
metadata and the health-check host. Pure functions of the validated config.
"""

from __future__ import annotations

import re

from extproc.config.schema import GatewayConfig, TargetConfig


def model_route_ids(config: GatewayConfig) -> dict[str, str]:
    """Stable Envoy-safe id per model name: `m{index}_{slug}` (also its cluster's name)."""
    ids = {}
    for index, model in enumerate(config.models):
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", model.name)[:40]
        ids[model.name] = f"m{index}_{slug}"
    return ids


def target_id(route_id: str, index: int) -> str:
    """Id of a model's target `index` (Envoy endpoint metadata and health-check host)."""
    return f"{route_id}.t{index}"


def target_priority(target: TargetConfig, index: int) -> int:
    """The target's priority: explicit, else its position in the list."""
    return target.priority if target.priority is not None else index


def inline_translation(target_count: int) -> bool:
    """A model with one target is translated once by the downstream filter: every attempt
    goes to that target. With several, each attempt is translated by the upstream filter."""
    return target_count == 1


def breaker_key(provider: str, upstream_model: str) -> str:
    """Breakers are per provider + upstream model, shared by models that use the same."""
    return f"{provider}/{upstream_model}"
