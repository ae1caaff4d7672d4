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
from extproc.gateway import Gateway
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


class ProviderChecks:
    """The background checks of the gateway in force: one task per checked provider.

    `restart` (at start and after each reload) stops the old tasks and starts one per provider
    of the new gateway that has a `health_check`; the gateway carries over the health of
    providers still checked, so an unhealthy provider stays unhealthy across a reload.
    """

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._reported: set[str] = set()

    def restart(self, gateway: Gateway) -> None:
        """Check `gateway`'s providers (cancelling the previous gateway's checks)."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        gauge = gateway.metrics.provider_healthy
        checked = set()
        for provider in gateway.config.providers:
            if provider.health_check is None:
                continue
            health = gateway.provider_health[provider.name]
            gauge.labels(provider.name).set(1 if health.healthy else 0)
            checked.add(provider.name)

            def changed(h: ProviderHealth, name: str = provider.name) -> None:
                gauge.labels(name).set(1 if h.healthy else 0)

            credential = gateway.loaded.credentials.get(provider.name)
            check = run_checks(provider, credential, health, changed)
            self._tasks.append(asyncio.create_task(check))
        for name in self._reported - checked:
            gauge.remove(name)
        self._reported = checked

    async def stop(self) -> None:
        """Cancel every check and wait until they have stopped."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
