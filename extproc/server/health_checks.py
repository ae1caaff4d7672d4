"""Optional active health checks of providers, polled by the processor in the background.

A provider with `health_check` configured is polled (GET base_url + path) and the result fed to
its `ProviderHealth`; while it is unhealthy its targets report unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from extproc.config.credentials import Credential
from extproc.config.schema import ProviderConfig
from extproc.decisions.provider_health import ProviderHealth
from extproc.providers import adapter_for

log = logging.getLogger("extproc.provider_health")


def check_headers(provider: ProviderConfig, credential: Credential | None) -> dict[str, str]:
    """Headers a health check sends: the ones carrying the provider's key on every request
    (asked of its adapter); none for AWS credentials (checks go unsigned)."""
    return adapter_for(provider.type).credential_headers(provider, credential)


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
