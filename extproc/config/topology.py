"""Ids both the Envoy renderer and the processor derive from the config, and must agree on.

A model's route id is also its Envoy cluster's name; a target id is its endpoint's `gw.target`
metadata and the health-check host. Pure functions of the validated config.

Route ids survive a reload unchanged unless what Envoy does for that model changes: they are the
model's stat name (per model name) plus a hash of everything its route and cluster are rendered
from. A reload that changes a model therefore adds a new route and cluster beside the old ones
instead of changing them in place, so requests routed by the old config keep reaching exactly the
targets that config translated them for (`docs/architecture.md`, "Hot reload").
"""

from __future__ import annotations

import hashlib
import json
import re

from extproc.config.schema import (
    PROCESSOR_ONLY_MODEL_FIELDS,
    GatewayConfig,
    ModelConfig,
    TargetConfig,
)

_SLUG_LENGTH = 40
_HASH_LENGTH = 8


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


def model_stat_name(model_name: str) -> str:
    """Envoy-safe name per model name, the same across reloads: `{slug}_{hash of the name}`.

    Envoy's stats of the model's cluster use it (`cluster.<stat name>.*`), whatever version of the
    cluster is serving. No dots: Envoy's stat tag extraction would split the name at one.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", model_name)[:_SLUG_LENGTH]
    return f"{slug}_{_short_hash(model_name)}"


def _rendered_from(config: GatewayConfig, model: ModelConfig) -> str:
    """Every input of a model's Envoy route and cluster, as canonical JSON."""
    providers = {p.name: p for p in config.providers}
    used = sorted({t.provider for t in model.targets})
    inputs = {
        "model": model.model_dump(mode="json", exclude=PROCESSOR_ONLY_MODEL_FIELDS),
        "providers": [providers[name].model_dump(mode="json") for name in used],
        "processor": config.processor.model_dump(mode="json"),
        "limits": config.limits.model_dump(mode="json"),
        "resilience": config.resilience.model_dump(mode="json"),
    }
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"))


def model_route_id(config: GatewayConfig, model: ModelConfig) -> str:
    """The model's route id (its cluster's name): `{stat name}_{hash of what it renders from}`."""
    return f"{model_stat_name(model.name)}_{_short_hash(_rendered_from(config, model))}"


def model_route_ids(config: GatewayConfig) -> dict[str, str]:
    """Route id per model name (`model_route_id`)."""
    return {model.name: model_route_id(config, model) for model in config.models}


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


def model_lead(config: GatewayConfig, model: ModelConfig) -> int | None:
    """The index of a several-target model's lead: the one target of its first priority, whose
    first attempt the downstream filter translates (`resilience.inline_first_attempt`); None
    when there is one target, several share the first priority, or it is off."""
    if not config.resilience.inline_first_attempt or len(model.targets) < 2:
        return None
    priorities = [target_priority(t, i) for i, t in enumerate(model.targets)]
    first = min(priorities)
    leads = [i for i, p in enumerate(priorities) if p == first]
    return leads[0] if len(leads) == 1 else None


def breaker_key(provider: str, upstream_model: str) -> str:
    """Breakers are per provider + upstream model, shared by models that use the same."""
    return f"{provider}/{upstream_model}"
