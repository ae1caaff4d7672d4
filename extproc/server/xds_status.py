"""Asking Envoy's admin interface which xDS versions it has applied (for hot reloads).

(`envoy_admin.py` holds the other admin calls: readiness and the shutdown drain.)

Envoy reports, per dynamic source, the `version_info` of the last file it accepted
(`*.version_text`), how many updates it rejected (`*.update_rejected`), and how many clusters and
listeners are still warming (a new cluster warms until its first health checks are done; a route
to it answers 503 until then). A reload waits until all three files are applied and nothing is
warming before it lets new requests use the new config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from extproc.contract import CDS_FILE, LDS_FILE, LISTENER_STAT_PREFIX, RDS_FILE, ROUTE_CONFIG_NAME

_RDS = f"http.{LISTENER_STAT_PREFIX}.rds.{ROUTE_CONFIG_NAME}"
# Per file: the stat prefix of its subscription.
SOURCES: Mapping[str, str] = {
    CDS_FILE: "cluster_manager.cds",
    RDS_FILE: _RDS,
    LDS_FILE: "listener_manager.lds",
}
WARMING = ("cluster_manager.warming_clusters", "listener_manager.total_listeners_warming")
_STATS_FILTER = (
    r"^(cluster_manager\.(cds\.(version_text|update_rejected)|warming_clusters)"
    r"|listener_manager\.(lds\.(version_text|update_rejected)|total_listeners_warming)"
    + r"|"
    + _RDS.replace(".", r"\.")
    + r"\.(version_text|update_rejected))$"
)
_POLL_SECONDS = 0.05
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=2)


@dataclass(frozen=True, slots=True)
class XdsState:
    """What Envoy says about its dynamic config."""

    versions: dict[str, str]  # file name -> version applied ("" before any)
    rejected: dict[str, int]  # file name -> updates rejected so far
    warming: int  # clusters and listeners still warming


class XdsStatus:
    """What Envoy's admin interface at `base_url` (loopback) says about its dynamic config."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    async def xds_state(self) -> XdsState:
        """Envoy's applied versions, rejection counts and warming resources (OSError/aiohttp
        errors when Envoy cannot be reached)."""
        url = f"{self.base_url}/stats"
        async with (
            aiohttp.ClientSession(timeout=_REQUEST_TIMEOUT) as session,
            session.get(url, params={"filter": _STATS_FILTER}) as response,
        ):
            response.raise_for_status()
            return parse_stats(await response.text())

    async def wait_applied(
        self,
        versions: Mapping[str, str],
        rejected_before: Mapping[str, int] | None,
        timeout: float,
    ) -> str | None:
        """Wait until Envoy applied every file's version and nothing is warming.

        Returns None once it has, else why not: a file Envoy rejected (a count above
        `rejected_before`; None: counts unknown, wait for the timeout), or the timeout with
        what was still missing.
        """
        deadline = time.monotonic() + timeout
        missing = "no answer yet"
        while True:
            try:
                state = await self.xds_state()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                missing = f"Envoy's admin interface {self.base_url} did not answer ({exc!r})"
            else:
                for name, count in state.rejected.items():
                    if rejected_before is not None and count > rejected_before.get(name, 0):
                        return f"Envoy rejected the new {name} (Envoy's log says why)"
                pending = [n for n, v in versions.items() if state.versions.get(n) != v]
                if not pending and state.warming == 0:
                    return None
                missing = (
                    f"not applied yet: {', '.join(pending)}"
                    if pending
                    else f"{state.warming} cluster(s) or listener(s) still warming"
                )
            if time.monotonic() >= deadline:
                return f"Envoy did not apply the new config within {timeout:g}s ({missing})"
            await asyncio.sleep(_POLL_SECONDS)


def parse_stats(text: str) -> XdsState:
    """Read the filtered `/stats` text (`name: value`, text readouts quoted)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            values[name.strip()] = value.strip()
    versions = {}
    rejected = {}
    for file, prefix in SOURCES.items():
        versions[file] = values.get(f"{prefix}.version_text", '""').strip('"')
        rejected[file] = _int(values.get(f"{prefix}.update_rejected"))
    return XdsState(versions, rejected, sum(_int(values.get(name)) for name in WARMING))


def _int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0
