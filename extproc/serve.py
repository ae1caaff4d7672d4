"""The processor's lifecycle: start gRPC and admin servers, drain on SIGTERM.

On SIGTERM/SIGINT the admin server reports not-ready, the gRPC server refuses
new streams and in-flight ones get `shutdown_grace_seconds` to finish.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from extproc.admin import AdminState, start_admin
from extproc.config import LoadedConfig
from extproc.provider_health import ProviderHealth, run_checks
from extproc.runtime import Gateway
from extproc.server import ProcessorServer, install_signal_handlers

log = logging.getLogger("extproc.serve")

# Room for protobuf framing and headers around the largest allowed body.
MESSAGE_OVERHEAD_BYTES = 1024 * 1024


def start_provider_checks(loaded: LoadedConfig, gateway: Gateway) -> list[asyncio.Task[None]]:
    """One background task per provider with an active health check."""
    tasks = []
    gauge = gateway.metrics.provider_healthy
    for provider in loaded.config.providers:
        if provider.health_check is None:
            continue
        health = gateway.provider_health[provider.name]
        gauge.labels(provider.name).set(1)

        def changed(h: ProviderHealth, name: str = provider.name) -> None:
            gauge.labels(name).set(1 if gateway.provider_health[name].healthy else 0)

        tasks.append(
            asyncio.create_task(
                run_checks(provider, loaded.credentials.get(provider.name), health, changed)
            )
        )
    return tasks


async def serve(loaded: LoadedConfig) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    config = loaded.config
    gateway = Gateway(loaded)
    processor = config.processor
    server = ProcessorServer(gateway, config.limits.max_body_bytes + MESSAGE_OVERHEAD_BYTES)
    server.bind(processor.unix_socket, processor.tcp_address)
    state = AdminState()
    admin = await start_admin(
        state, gateway.metrics, processor.admin_address, processor.admin_port, gateway
    )
    await server.start()
    checks = start_provider_checks(loaded, gateway)
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
    log.info(
        "shutting down: draining %d in-flight streams (grace %.0fs)",
        server.servicer.active,
        processor.shutdown_grace_seconds,
    )
    await server.stop(processor.shutdown_grace_seconds)
    for task in checks:
        task.cancel()
    await asyncio.gather(*checks, return_exceptions=True)
    await admin.cleanup()
    if processor.unix_socket is not None and processor.unix_socket.exists():
        processor.unix_socket.unlink()
    log.info("stopped")
