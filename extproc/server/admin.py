"""The processor's admin HTTP server: liveness, readiness and Prometheus metrics.

Runs on its own port (never the Envoy listener) inside the processor's event loop. Readiness
covers the pair: the processor serving and its Envoy answering ready (`EnvoyReadiness`).
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc.decisions.breaker import Admission
from extproc.gateway import Gateway
from extproc.metrics import Metrics
from extproc.server.envoy_admin import DRAINING, LIVE, EnvoyReadiness


class AdminState:
    """What the admin endpoints report: set by the serve command as it starts and stops."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False


def make_admin_app(
    state: AdminState,
    metrics: Metrics,
    gateway: Gateway | None = None,
    envoy: EnvoyReadiness | None = None,
) -> web.Application:
    """The aiohttp app: `/healthz`, `/readyz`, `/metrics`, `/breakers`, `/breaker/health`.

    `/healthz` is the processor alone (liveness); `/readyz` is 200 only while the processor
    serves and, given `envoy`, Envoy answers LIVE. Otherwise 503 with the reason: `starting`,
    `draining` (this processor, or its Envoy, is shutting down) or `envoy_not_ready` (with the
    Envoy state seen, `unreachable` when it did not answer).
    """

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if not state.ready or state.draining:
            reason = "draining" if state.draining else "starting"
            return web.json_response({"status": reason}, status=503)
        if envoy is not None:
            envoy_state = await envoy.state()
            if envoy_state != LIVE:
                reason = "draining" if envoy_state == DRAINING else "envoy_not_ready"
                return web.json_response({"status": reason, "envoy": envoy_state}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def breaker_health(request: web.Request) -> web.Response:
        # Envoy's active health check of a target: Host is the target id.
        target = gateway.targets.get(request.host.rsplit(":", 1)[0]) if gateway else None
        if target is None:
            return web.Response(status=404, text="unknown target")
        admission = target.admission(time.monotonic())
        if admission in (Admission.ALLOW, Admission.PROBE):
            return web.Response(text=admission.value)
        return web.Response(status=503, text=admission.value)

    async def breakers(_: web.Request) -> web.Response:
        snapshot: dict[str, object] = {}
        if gateway is not None:
            snapshot.update(gateway.breakers.snapshot(time.monotonic()))
            snapshot["providers"] = {
                name: {"healthy": h.healthy, "last_error": h.last_error}
                for name, h in gateway.provider_health.items()
            }
        return web.json_response(snapshot, dumps=_dumps)

    async def reset_breakers(_: web.Request) -> web.Response:
        changed = gateway.breakers.reset(time.monotonic()) if gateway else 0
        return web.json_response({"reset": changed})

    app = web.Application()
    if envoy is not None:

        async def close_envoy(_: web.Application) -> None:
            await envoy.close()

        app.on_cleanup.append(close_envoy)
    app.router.add_get("/breaker/health", breaker_health)
    app.router.add_post("/breakers/reset", reset_breakers)
    app.router.add_get("/breakers", breakers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


def _dumps(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


async def start_admin(
    state: AdminState,
    metrics: Metrics,
    host: str,
    port: int,
    gateway: Gateway | None = None,
    envoy: EnvoyReadiness | None = None,
) -> web.AppRunner:
    """Start the admin server; returns the runner to clean up on shutdown."""
    runner = web.AppRunner(make_admin_app(state, metrics, gateway, envoy), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
