"""What a reload may change: the settings that need a restart, and a summary of a change.

Pure functions of two validated configs (the one in force and the new one). A reload that
changes a restart-only setting is refused as a whole rather than half-applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from extproc.config.schema import GatewayConfig

_PROCESSOR = "the processor"
_ENVOY = "Envoy"
_BOTH = "the processor and Envoy"

# Setting path, how to read it, and what has to restart for it to take effect.
RESTART_ONLY: tuple[tuple[str, Callable[[GatewayConfig], object], str], ...] = (
    # The processor binds these, and Envoy's bootstrap holds the processor's cluster.
    ("processor.unix_socket", lambda c: c.processor.unix_socket, _BOTH),
    ("processor.tcp_address", lambda c: c.processor.tcp_address, _BOTH),
    # The processor's admin server binds these (Envoy's health checks follow on reload).
    ("processor.admin_address", lambda c: c.processor.admin_address, _PROCESSOR),
    ("processor.admin_port", lambda c: c.processor.admin_port, _PROCESSOR),
    ("processor.event_loop", lambda c: c.processor.event_loop, _PROCESSOR),
    # Read once at start: the readiness check of Envoy, the processor's log setup.
    ("processor.ready_requires_envoy", lambda c: c.processor.ready_requires_envoy, _PROCESSOR),
    ("telemetry.log_level", lambda c: c.telemetry.log_level, _PROCESSOR),
    ("telemetry.log_format", lambda c: c.telemetry.log_format, _PROCESSOR),
    # The processor's tracer (exporter, sampler) is set up once, at start.
    ("telemetry.tracing", lambda c: c.telemetry.tracing, _PROCESSOR),
    # Envoy's bootstrap: its admin interface and where it reads its dynamic config.
    ("envoy_admin.address", lambda c: c.envoy_admin.address, _ENVOY),
    ("envoy_admin.port", lambda c: c.envoy_admin.port, _ENVOY),
    ("reload.xds_directory", lambda c: c.reload.xds_directory, _BOTH),
    # The limits' store (memory or a Redis client) is made once, at start; the limits,
    # budgets, keys and prices themselves reload.
    ("governance.backend", lambda c: c.governance.backend, _PROCESSOR),
    ("governance.redis", lambda c: c.governance.redis, _PROCESSOR),
    ("governance.on_redis_failure", lambda c: c.governance.on_redis_failure, _PROCESSOR),
    # The cache's store is made once too (its entries outlive a reload).
    ("cache.backend", lambda c: c.cache.backend, _PROCESSOR),
    ("cache.max_bytes", lambda c: c.cache.max_bytes, _PROCESSOR),
)


def restart_problems(running: GatewayConfig, new: GatewayConfig) -> list[str]:
    """One problem per restart-only setting that differs, each starting with its path."""
    problems = []
    for path, read, who in RESTART_ONLY:
        before, after = read(running), read(new)
        if before != after:
            problems.append(
                f"{path}: changed from {_shown(before)} to {_shown(after)}, which needs a "
                f"restart of {who}; not reloaded (the running config keeps serving)"
            )
    return problems


def _shown(value: object) -> str:
    return "unset" if value is None else repr(str(value))


def change_summary(running: GatewayConfig, new: GatewayConfig) -> str:
    """A one-line summary of what `new` changes: providers and models added, removed, changed."""
    parts = []
    for kind, before, after in (
        ("providers", _by_name(running.providers), _by_name(new.providers)),
        ("models", _by_name(running.models), _by_name(new.models)),
        ("tenants", _by_name(running.tenants), _by_name(new.tenants)),
    ):
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(n for n in before.keys() & after.keys() if before[n] != after[n])
        for verb, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                parts.append(f"{kind} {verb}: {', '.join(names)}")
    sections = (
        "listener",
        "limits",
        "auth",
        "resilience",
        "processor",
        "reload",
        "telemetry",
        "governance",
        "cache",
        "policies",
    )
    other = [s for s in sections if getattr(running, s) != getattr(new, s)]
    if other:
        parts.append(f"sections changed: {', '.join(other)}")
    return "; ".join(parts) or "no change"


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def _by_name(items: Sequence[_Named]) -> dict[str, _Named]:
    return {item.name: item for item in items}
