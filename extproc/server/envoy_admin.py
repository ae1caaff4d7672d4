"""Envoy's admin interface, as the processor's readiness and the shutdown drain use it.

`EnvoyReadiness` (async, for the processor's `/readyz`) asks Envoy's `GET /ready`, cached
briefly. `EnvoyAdmin` (blocking, for `extproc drain` and the dev stack) fails Envoy's health
checks, closes its listeners and reads its in-flight requests; `drain_envoy` is the sequence
(what each step does to clients: docs/architecture.md, "Shutdown").
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import orjson

from extproc.config.schema import GatewayConfig
from extproc.contract import LISTENER_STAT_PREFIX

log = logging.getLogger("extproc.drain")

# Envoy's `GET /ready` answers 200 with this state, 503 with another (DRAINING once its health
# checks fail, PRE_INITIALIZING / INITIALIZING while it starts).
LIVE: Final = "LIVE"
DRAINING: Final = "DRAINING"
# Our name for an Envoy whose admin did not answer (not running, or too slow).
UNREACHABLE: Final = "unreachable"
# Requests in flight on the gateway listener (HTTP connection manager gauge).
ACTIVE_REQUESTS_STAT: Final = f"http.{LISTENER_STAT_PREFIX}.downstream_rq_active"
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def admin_url(host: str, port: int) -> str:
    """`http://HOST:PORT` of an admin server bound to `host` (a wildcard is reached on loopback)."""
    host = _WILDCARDS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def envoy_admin_url(config: GatewayConfig) -> str:
    """Where the processor (same host or pod) reaches Envoy's admin interface."""
    return admin_url(config.envoy_admin.address, config.envoy_admin.port)


class EnvoyReadiness:
    """Envoy's server state from its admin `GET /ready`, asked at most once per `ttl` seconds.

    Probes arriving together share one request, so a probe storm costs one admin call per
    `ttl`. An Envoy that does not answer within `timeout` is `UNREACHABLE` (half a second, so
    `/readyz` answers within the kubelet's default one-second probe timeout).
    """

    def __init__(
        self,
        base_url: str,
        ttl: float = 1.0,
        timeout: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = f"{base_url}/ready"
        self._ttl = ttl
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._state = UNREACHABLE
        self._checked_at: float | None = None

    async def state(self) -> str:
        """`LIVE`, another Envoy server state (`DRAINING`, ...), or `UNREACHABLE`."""
        async with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                self._state = await self._ask()
                self._checked_at = self._clock()
            return self._state

    async def _ask(self) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self.url) as resp:
                text = (await resp.text()).strip()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return UNREACHABLE
        if resp.status == 200:
            return LIVE
        return text or f"HTTP {resp.status}"

    async def close(self) -> None:
        """Close the HTTP session (when the admin server stops)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class EnvoyAdmin:
    """Blocking calls to Envoy's admin interface; each raises OSError when Envoy does not answer."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url
        self.timeout = timeout

    @classmethod
    def for_config(cls, config: GatewayConfig) -> EnvoyAdmin:
        """The admin interface of the Envoy running on `config`."""
        return cls(envoy_admin_url(config))

    def _call(self, method: str, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.base_url}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except http.client.HTTPException as exc:  # an answer cut off as Envoy exits
            raise OSError(f"Envoy admin {path}: {exc!r}") from exc

    def server_state(self) -> str:
        """Envoy's server state: `LIVE`, `DRAINING`, `PRE_INITIALIZING` or `INITIALIZING`."""
        status, body = self._call("GET", "/ready")
        return LIVE if status == 200 else body.decode(errors="replace").strip()

    def fail_health_checks(self) -> None:
        """`POST /healthcheck/fail`: `/ready` turns DRAINING and every connection is told to go
        (HTTP/1.1 responses carry `connection: close`, HTTP/2 connections get a GOAWAY)."""
        self._post("/healthcheck/fail")

    def close_listeners(self) -> None:
        """`POST /drain_listeners`: the listeners stop accepting at once (new connections are
        refused); requests in flight and open connections carry on."""
        self._post("/drain_listeners")

    def _post(self, path: str) -> None:
        status, body = self._call("POST", path)
        if status != 200:
            raise OSError(f"Envoy admin {path} answered {status}: {body[:200]!r}")

    def stat(self, name: str) -> int:
        """The value of one Envoy counter or gauge (OSError when Envoy has no such stat)."""
        query = urllib.parse.urlencode({"filter": f"^{re.escape(name)}$", "format": "json"})
        status, body = self._call("GET", f"/stats?{query}")
        if status == 200:
            try:
                for entry in orjson.loads(body).get("stats", []):
                    if entry.get("name") == name:
                        return int(entry["value"])
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
                pass
        raise OSError(f"Envoy admin has no stat {name} (HTTP {status})")

    def active_requests(self) -> int:
        """Requests in flight on the gateway listener."""
        return self.stat(ACTIVE_REQUESTS_STAT)


@dataclass(frozen=True)
class DrainOutcome:
    """How a drain ended: `in_flight` requests were left (0: all finished; None: Envoy's admin
    did not answer, so nothing is known), after `seconds`."""

    in_flight: int | None
    seconds: float

    @property
    def complete(self) -> bool:
        """Every in-flight request finished."""
        return self.in_flight == 0


def refused(exc: OSError) -> bool:
    """Whether a failed admin call means no Envoy is there (connection refused), rather than
    a slow or cut-off answer."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ConnectionRefusedError)


class _EnvoyGoneError(Exception):
    """Envoy's admin refused the connection: no Envoy is running."""


def _ask(call: Callable[[], None], what: str) -> None:
    """One drain step; a step that fails otherwise than refused is logged and skipped."""
    try:
        call()
    except OSError as exc:
        if refused(exc):
            raise _EnvoyGoneError from exc
        log.warning("Envoy's admin failed to %s: %s", what, exc)


def drain_envoy(
    admin: EnvoyAdmin,
    grace: float,
    delay: float = 0.0,
    poll: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> DrainOutcome:
    """Fail Envoy's health checks; after `delay` seconds close its listeners; then wait up to
    `grace` seconds for the requests in flight to finish. Envoy keeps running: stop it next.

    During `delay` new connections are still accepted (a load balancer may not have caught up
    yet), each told to close after its response; afterwards they are refused. An admin answer
    that is slow or cut off does not end the wait; a refused connection (no Envoy) does.
    """
    start = clock()
    active: int | None = None
    try:
        _ask(admin.fail_health_checks, "fail its health checks")
        log.info("Envoy fails its health checks; closing its listeners in %gs", delay)
        if delay > 0:
            sleep(delay)
        _ask(admin.close_listeners, "close its listeners")
        deadline = clock() + grace
        while True:
            try:
                active = admin.active_requests()
            except OSError as exc:
                if refused(exc):
                    raise _EnvoyGoneError from exc
                active = None  # not known this time: keep waiting
            if active == 0 or clock() >= deadline:
                break
            sleep(poll)
    except _EnvoyGoneError:
        log.warning("Envoy's admin refused the connection: no Envoy to drain")
        return DrainOutcome(None, clock() - start)
    outcome = DrainOutcome(active, clock() - start)
    if active == 0:
        log.info("Envoy drained: no request in flight (%.1fs)", outcome.seconds)
    else:
        left = "an unknown number of" if active is None else str(active)
        log.warning("%s requests still in flight after the %gs grace", left, grace)
    return outcome


def wait_for_envoy_exit(
    admin: EnvoyAdmin,
    timeout: float,
    poll: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Block until Envoy's admin refuses connections (Envoy exited); False after `timeout`."""
    deadline = clock() + timeout
    while True:
        try:
            admin.server_state()
        except OSError as exc:
            if refused(exc):
                return True
        if clock() >= deadline:
            return False
        sleep(poll)
