"""The processor's lifecycle: bind and start the gRPC and admin servers, drain on SIGTERM.

On SIGTERM/SIGINT the admin server reports not-ready, the gRPC server refuses
new streams and in-flight ones get `shutdown_grace_seconds` to finish. The processor is
stopped after its Envoy has drained (`extproc drain`, `extproc wait-envoy-exit`): every request
in flight through Envoy needs it. SIGHUP (like a change of the config file, or `POST /reload`)
reloads the config (`reload.py`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.config.loading import LoadedConfig
from extproc.config.schema import BUFFER_HEADROOM_BYTES, MAX_BODY_BYTES_LIMIT
from extproc.gateway import Gateway, LiveGateways
from extproc.policies.remote import close_channels
from extproc.server.admin import AdminState, start_admin
from extproc.server.envoy_admin import EnvoyReadiness, envoy_admin_url
from extproc.server.health_checks import ProviderChecks
from extproc.server.loop_lag import watch_loop_lag
from extproc.server.reload import Reloader
from extproc.server.servicer import ExternalProcessor

log = logging.getLogger("extproc.serve")

# Room for protobuf framing and headers around the largest allowed body.
MESSAGE_OVERHEAD_BYTES = 1024 * 1024


def _unix_target(path: Path) -> str:
    return f"unix:{path}"


class ProcessorServer:
    """Owns the grpc.aio server: bind, serve, drain on shutdown."""

    def __init__(self, gateway: Gateway | LiveGateways, max_message_bytes: int) -> None:
        self.servicer = ExternalProcessor(gateway)
        self.gateway = self.servicer.gateway
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, self.server)
        self.addresses: list[str] = []

    def bind(self, unix_socket: Path | None, tcp_address: str | None) -> None:
        """Listen on a unix socket and/or a TCP address."""
        if unix_socket is not None:
            unix_socket.parent.mkdir(parents=True, exist_ok=True)
            if unix_socket.exists() or unix_socket.is_symlink():
                unix_socket.unlink()
            target = _unix_target(unix_socket)
            self.server.add_insecure_port(target)
            self.addresses.append(target)
        if tcp_address is not None:
            port = self.server.add_insecure_port(tcp_address)
            host = tcp_address.rpartition(":")[0]
            self.addresses.append(f"{host}:{port}")

    async def start(self) -> None:
        """Start serving."""
        await self.server.start()

    async def stop(self, grace: float) -> None:
        """Refuse new streams, let in-flight ones finish for up to `grace` seconds."""
        await self.server.stop(grace)


def install_signal_handlers(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGTERM and SIGINT (once each; the loop keeps running)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


async def serve(loaded: LoadedConfig) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully; reload on SIGHUP."""
    config = loaded.config
    gateway = Gateway(loaded)
    gateways = LiveGateways(gateway)
    processor = config.processor
    # The largest body any config may allow, so a reload can raise `limits.max_body_bytes`; a
    # response body Envoy hands over may be its whole buffer (`limits.buffer_bytes`) and a read.
    largest = MAX_BODY_BYTES_LIMIT + 2 * BUFFER_HEADROOM_BYTES
    server = ProcessorServer(gateways, largest + MESSAGE_OVERHEAD_BYTES)
    server.bind(processor.unix_socket, processor.tcp_address)
    checks = ProviderChecks()
    reloader = Reloader(Path(loaded.source), gateways, checks)
    state = AdminState()
    envoy = EnvoyReadiness(envoy_admin_url(config)) if processor.ready_requires_envoy else None
    admin = await start_admin(
        state,
        gateway.metrics,
        processor.admin_address,
        processor.admin_port,
        gateways,
        envoy,
        reloader,
    )
    await server.start()
    reloader.start()
    checks.restart(gateway)
    watch = asyncio.create_task(reloader.watch())
    lag_watch = asyncio.create_task(watch_loop_lag(server.servicer.shedder))
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.reload_soon, "signal")
    # Everything loaded so far (config, adapters, botocore, aiohttp: ~70k objects) lives as
    # long as the process: keep it out of the cyclic GC, whose full passes over it cost
    # ~18 ms each under load.
    gc.freeze()
    state.ready = True
    stop = asyncio.Event()
    install_signal_handlers(stop.set)
    log.info(
        "extproc serving on %s (admin http://%s:%d, %d models, auth %s, event loop %s)",
        ", ".join(server.addresses),
        processor.admin_address,
        processor.admin_port,
        len(gateway.models),
        "on" if gateway.auth.enabled else "OFF",
        type(asyncio.get_running_loop()).__module__.split(".")[0],
    )
    await stop.wait()
    state.draining = True
    watch.cancel()
    lag_watch.cancel()
    grace = gateways.current.config.processor.shutdown_grace_seconds
    log.info(
        "shutting down: draining %d in-flight streams (grace %.0fs)",
        server.servicer.active,
        grace,
    )
    await server.stop(grace)
    await asyncio.gather(watch, lag_watch, return_exceptions=True)
    await reloader.stop()
    await checks.stop()
    await admin.cleanup()
    await gateway.governance.drain()  # settlements still on their way to Redis
    if gateway.cache is not None:
        await gateway.cache.drain()  # fills still on their way to Redis
    if gateway.telemetry.completions:  # policies still hearing of completions
        await asyncio.wait(gateway.telemetry.completions, timeout=5)
    await close_channels()  # the `grpc` policies' channels
    gateway.telemetry.close()
    if processor.unix_socket is not None and processor.unix_socket.exists():
        processor.unix_socket.unlink()
    log.info("stopped")
