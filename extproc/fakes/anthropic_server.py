"""Fake anthropic provider wire format (not implemented yet: matches no path)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from extproc.fakes.openai_server import Arrival, FakeProvider


class _NotYet:
    """Placeholder wire format that matches nothing."""

    def matches(self, path: str) -> bool:
        """Never matches."""
        return False

    async def handle(
        self, fake: FakeProvider, request: web.Request, parsed: Any, arrival: Arrival
    ) -> web.StreamResponse:
        """Unreachable: matches() is always False."""
        raise NotImplementedError

    def error_response(self, arrival: Arrival) -> web.Response:
        """Unreachable: matches() is always False."""
        raise NotImplementedError


WIRE = _NotYet()
