"""The processor's admin HTTP server: liveness, readiness and Prometheus metrics.

Runs on its own port (never the Envoy listener) inside the processor's event loop.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc.metrics import Metrics


class AdminState:
    """What the admin endpoints report: set by the serve command as it starts and stops."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False


def make_admin_app(state: AdminState, metrics: Metrics) -> web.Application:
    """The aiohttp app serving `/healthz`, `/readyz` and `/metrics`."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if state.ready and not state.draining:
            return web.json_response({"status": "ready"})
        reason = "draining" if state.draining else "starting"
        return web.json_response({"status": reason}, status=503)

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


async def start_admin(state: AdminState, metrics: Metrics, host: str, port: int) -> web.AppRunner:
    """Start the admin server; returns the runner to clean up on shutdown."""
    runner = web.AppRunner(make_admin_app(state, metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
