"""Fixtures shared by the unit tests of the fake providers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from extproc.dev.fakes import FakeProviderServer


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    """One fake provider (every wire format) per test module."""
    with FakeProviderServer(port=0) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeProviderServer) -> Iterator[FakeProviderServer]:
    """The module's fake, reset before and after each test."""
    server.clear()
    yield server
    server.clear()
