"""Optional active health checks of providers, run by the processor in the background.

A provider with `health_check` configured is polled (GET base_url + path); while it
is unhealthy its targets report unavailable, exactly like an open breaker, so Envoy
routes around it and a recovered provider gets traffic again without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from extproc.config import Credential, ProviderConfig
from extproc.providers import adapter_for

log = logging.getLogger("extproc.provider_health")


@dataclass
class ProviderHealth:
    """The health of one provider as its checks last saw it (healthy until proven not)."""

    provider: str
    healthy: bool = True
    failures: int = 0
    successes: int = 0
    last_error: str = ""

    def observe(self, ok: bool, error: str, unhealthy_after: int, healthy_after: int) -> bool:
        """Count one check result; True when the health flipped."""
        if ok:
            self.failures, self.successes = 0, self.successes + 1
            if not self.healthy and self.successes >= healthy_after:
                self.healthy = True
                return True
            return False
        self.successes, self.failures, self.last_error = 0, self.failures + 1, error
        if self.healthy and self.failures >= unhealthy_after:
            self.healthy = False
            return True
        return False


def check_headers(provider: ProviderConfig, credential: Credential | None) -> dict[str, str]:
    """Headers a health check sends: the ones carrying the provider's key on every request
    (asked of its adapter); none for AWS credentials (checks go unsigned)."""
    return adapter_for(provider.type)(provider, credential).credential_headers()


async def run_checks(
    provider: ProviderConfig,
    credential: Credential | None,
    health: ProviderHealth,
    on_change: Callable[[ProviderHealth], None] | None = None,
) -> None:
    """Poll one provider until cancelled."""
    check = provider.health_check
    if check is None:
        return
    url = provider.base_url + check.path
    headers = check_headers(provider, credential)
    timeout = aiohttp.ClientTimeout(total=check.timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            ok, error = await _probe(session, url, headers)
            if health.observe(ok, error, check.unhealthy_threshold, check.healthy_threshold):
                state = "healthy" if health.healthy else f"UNHEALTHY ({error})"
                log.warning("provider %s is now %s", provider.name, state)
                if on_change is not None:
                    on_change(health)
            await asyncio.sleep(check.interval_seconds)


async def _probe(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[bool, str]:
    try:
        async with session.get(url, headers=headers) as response:
            await response.read()
            if 200 <= response.status < 300:
                return True, ""
            return False, f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, type(exc).__name__
