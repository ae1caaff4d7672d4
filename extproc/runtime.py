"""The validated config turned into the lookup tables the hot path uses.

Built once at start-up: models by name, their targets with adapters and
credentials, the authenticator, limits. No pydantic access per request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from extproc.auth import Authenticator
from extproc.config import Credential, GatewayConfig, LoadedConfig, ModelConfig, ProviderConfig
from extproc.metrics import Metrics
from extproc.providers import ProviderAdapter, adapter_for


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved model target: provider, upstream model name, weight, adapter class."""

    provider: ProviderConfig
    upstream_model: str
    weight: int
    adapter_class: type[ProviderAdapter]
    credential: Credential | None

    def adapter(self) -> ProviderAdapter:
        """A fresh per-request adapter for this target."""
        return self.adapter_class(self.provider, self.credential)


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A client-facing model and the targets that can serve it."""

    name: str
    kind: str
    owned_by: str
    default_max_tokens: int
    targets: tuple[Target, ...]
    weights: tuple[int, ...]

    def choose(self) -> Target:
        """Pick a target by weight."""
        if len(self.targets) == 1:
            return self.targets[0]
        return random.choices(self.targets, weights=self.weights)[0]


class Gateway:
    """Everything a request pipeline needs, prepared from one loaded config."""

    def __init__(self, loaded: LoadedConfig, metrics: Metrics | None = None) -> None:
        config: GatewayConfig = loaded.config
        self.config = config
        self.metrics = metrics or Metrics()
        self.auth = Authenticator(config)
        self.max_body_bytes = config.limits.max_body_bytes
        self.max_json_depth = config.limits.max_json_depth
        self.default_timeout = config.limits.default_timeout_seconds
        providers = {p.name: p for p in config.providers}
        self.models: dict[str, ModelRoute] = {
            m.name: _model_route(m, providers, loaded.credentials) for m in config.models
        }
        self.created = 0


def _model_route(
    model: ModelConfig,
    providers: dict[str, ProviderConfig],
    credentials: dict[str, Credential],
) -> ModelRoute:
    targets = tuple(
        Target(
            provider=providers[t.provider],
            upstream_model=t.model,
            weight=t.weight,
            adapter_class=adapter_for(providers[t.provider].type),
            credential=credentials.get(t.provider),
        )
        for t in model.targets
    )
    return ModelRoute(
        name=model.name,
        kind=model.kind,
        owned_by=model.owned_by,
        default_max_tokens=model.default_max_tokens,
        targets=targets,
        weights=tuple(t.weight for t in targets),
    )
