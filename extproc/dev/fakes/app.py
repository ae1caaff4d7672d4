"""The fake provider's aiohttp application: which wire format answers a request, and how.

Owns the one ordered list of wire formats (OpenAI last, as the fallback) and the exchange
every request goes through: record, latency, injected error or the wire's answer, faults.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from extproc.dev.fakes import anthropic, bedrock, gemini, openai
from extproc.dev.fakes.core import CLOSING, FakeProvider, WireFormat, deliver

# Tried in order; OpenAI's matches every path, so it is the fallback and stays last.
WIRES: Final[tuple[WireFormat, ...]] = (anthropic.WIRE, gemini.WIRE, bedrock.WIRE, openai.WIRE)
# Real providers accept large prompts; aiohttp would refuse anything over 1 MiB.
MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024


def wire_for(path: str) -> WireFormat:
    """The wire format serving `path` (OpenAI's when no other claims it)."""
    return next(wire for wire in WIRES if wire.matches(path))


async def answer(provider: FakeProvider, request: web.Request) -> web.StreamResponse:
    """Record `request`, hold it for the latency, then answer it in its wire format."""
    arrival = await provider.receive(request)
    if not await provider.hold(request, arrival):
        return openai.shutting_down(arrival)
    wire = wire_for(request.path)
    if arrival.inject:
        response: web.StreamResponse = wire.error_response(arrival)
    else:
        response = await wire.handle(provider, request, arrival)
    return await deliver(request, arrival, response)


def create_app(provider: FakeProvider) -> web.Application:
    """aiohttp application serving `provider` on every method and path."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)

    async def on_startup(app: web.Application) -> None:
        app[CLOSING] = asyncio.Event()

    async def on_shutdown(app: web.Application) -> None:
        app[CLOSING].set()  # ends delays and gate waits so shutdown is prompt

    async def handle(request: web.Request) -> web.StreamResponse:
        return await answer(provider, request)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
