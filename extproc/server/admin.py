"""The processor's admin HTTP server: liveness, readiness, Prometheus metrics, breakers, reload.

Runs on its own port (never the Envoy listener) inside the processor's event loop. Readiness
covers the pair: the processor serving and its Envoy answering ready (`EnvoyReadiness`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc.decisions.breaker import Admission
from extproc.gateway import Gateway, LiveGateways
from extproc.metrics import Metrics
from extproc.server.envoy_admin import DRAINING, LIVE, EnvoyReadiness

if TYPE_CHECKING:
    from extproc.server.reload import Reloader

# HTTP status of a `POST /reload` answer, by result.
RELOAD_STATUS = {"success": 200, "rejected": 422, "failed": 503}


class AdminState:
    """What the admin endpoints report: set by the serve command as it starts and stops."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False


def make_admin_app(
    state: AdminState,
    metrics: Metrics,
    gateways: Gateway | LiveGateways | None = None,
    envoy: EnvoyReadiness | None = None,
    reloader: Reloader | None = None,
) -> web.Application:
    """The aiohttp app: `/healthz`, `/readyz`, `/metrics`, `/breakers`, `/breaker/health`,
    `/usage`, `/reload` (GET: the last reload's result; POST: reload now, given `reloader`).

    `/healthz` is the processor alone (liveness); `/readyz` is 200 only while the processor
    serves and, given `envoy`, Envoy answers LIVE. Otherwise 503 with the reason: `starting`,
    `draining` (this processor, or its Envoy, is shutting down) or `envoy_not_ready` (with the
    Envoy state seen, `unreachable` when it did not answer).
    """
    live = LiveGateways(gateways) if isinstance(gateways, Gateway) else gateways

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
        # Envoy's active health check of a target: Host is the target id. During a reload the
        # new config's clusters are checked before it is in force, and the old config's until
        # its requests have finished: every live gateway answers for its targets.
        found = live.target(request.host.rsplit(":", 1)[0]) if live else None
        if found is None:
            return web.Response(status=404, text="unknown target")
        admission = found[1].admission(time.monotonic())
        if admission in (Admission.ALLOW, Admission.PROBE):
            return web.Response(text=admission.value)
        return web.Response(status=503, text=admission.value)

    async def breakers(_: web.Request) -> web.Response:
        snapshot: dict[str, object] = {}
        if live is not None:
            gateway = live.current
            snapshot.update(gateway.breakers.snapshot(time.monotonic()))
            snapshot["providers"] = {
                name: {"healthy": h.healthy, "last_error": h.last_error}
                for name, h in gateway.provider_health.items()
            }
        return web.json_response(snapshot, dumps=_dumps)

    async def usage(request: web.Request) -> web.Response:
        # Per tenant and key: its windows now and its totals (from Redis when shared, so every
        # replica answers the same). `?tenant=NAME` narrows it to one tenant.
        if live is None:
            return web.json_response({"error": "usage is not available"}, status=404)
        gateway = live.current
        wanted = request.query.get("tenant")
        callers = [
            (t.name, list(dict.fromkeys(key.key_id for key in t.all_keys())))
            for t in gateway.config.tenants
            if wanted is None or t.name == wanted
        ]
        if not gateway.config.auth.enabled and wanted in (
            None,
            gateway.config.auth.anonymous_tenant,
        ):
            callers.append((gateway.config.auth.anonymous_tenant, [""]))
        if wanted is not None and not callers:
            return web.json_response({"error": f"unknown tenant {wanted[:64]!r}"}, status=404)
        try:
            report = await gateway.governor.usage_report(callers)
        except Exception as exc:  # Redis unreachable: say so, never a stack trace
            return web.json_response(
                {"error": f"usage store unavailable ({type(exc).__name__})"}, status=503
            )
        return web.json_response(report, dumps=_dumps)

    async def reset_breakers(_: web.Request) -> web.Response:
        changed = live.current.breakers.reset(time.monotonic()) if live else 0
        return web.json_response({"reset": changed})

    async def last_reload(_: web.Request) -> web.Response:
        if reloader is None:
            return web.json_response({"error": "reload is not available"}, status=404)
        body: dict[str, object] = reloader.last.to_json() if reloader.last else {"result": None}
        body["config"] = str(reloader.path)
        body["retiring_configs"] = len(reloader.gateways.retiring)
        return web.json_response(body, dumps=_dumps)

    async def reload_now(_: web.Request) -> web.Response:
        if reloader is None:
            return web.json_response({"error": "reload is not available"}, status=404)
        result = await reloader.reload("api")
        assert result is not None  # only a reload `only_if_changed` can skip
        return web.json_response(
            result.to_json(), status=RELOAD_STATUS[result.result], dumps=_dumps
        )

    app = web.Application()
    app.router.add_get("/reload", last_reload)
    app.router.add_post("/reload", reload_now)
    if envoy is not None:

        async def close_envoy(_: web.Application) -> None:
            await envoy.close()

        app.on_cleanup.append(close_envoy)
    app.router.add_get("/breaker/health", breaker_health)
    app.router.add_post("/breakers/reset", reset_breakers)
    app.router.add_get("/breakers", breakers)
    app.router.add_get("/usage", usage)
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
    gateways: Gateway | LiveGateways | None = None,
    envoy: EnvoyReadiness | None = None,
    reloader: Reloader | None = None,
) -> web.AppRunner:
    """Start the admin server; returns the runner to clean up on shutdown."""
    app = make_admin_app(state, metrics, gateways, envoy, reloader)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
