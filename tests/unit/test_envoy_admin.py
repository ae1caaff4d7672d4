"""Envoy's admin as the lifecycle uses it: the drain sequence, the admin calls, readiness.

The drain sequence runs on a recording admin and a fake clock; the HTTP calls and the readiness
check go to a small fake of Envoy's admin answering in the shapes Envoy 1.40 answers (seen on the
real binary; the real Envoy is driven by tests/e2e/test_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import urllib.error
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from extproc.dev.stack import free_port
from extproc.metrics import Metrics
from extproc.server.admin import AdminState, make_admin_app
from extproc.server.envoy_admin import (
    UNREACHABLE,
    DrainOutcome,
    EnvoyAdmin,
    EnvoyReadiness,
    admin_url,
    drain_envoy,
    wait_for_envoy_exit,
)

# -- the drain sequence ------------------------------------------------------------------------


class FakeClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class RecordingAdmin:
    """Stands in for `EnvoyAdmin`: records calls; `active` is what each poll returns (or
    raises) in turn, the last value repeating."""

    active: list[int | OSError]
    clock: FakeClock
    calls: list[str] = field(default_factory=list)
    down: bool = False

    def _call(self, name: str) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        self.calls.append(f"{name}@{self.clock.now - 100:g}")

    def fail_health_checks(self) -> None:
        self._call("fail_health_checks")

    def close_listeners(self) -> None:
        self._call("close_listeners")

    def active_requests(self) -> int:
        self._call("active_requests")
        value = self.active.pop(0) if len(self.active) > 1 else self.active[0]
        if isinstance(value, OSError):
            raise value
        return value

    def server_state(self) -> str:
        self._call("server_state")
        return "LIVE"


def drain(
    admin: RecordingAdmin, clock: FakeClock, grace: float, delay: float = 0.0
) -> DrainOutcome:
    return drain_envoy(
        admin,  # type: ignore[arg-type]
        grace=grace,
        delay=delay,
        poll=0.5,
        clock=clock,
        sleep=clock.sleep,
    )


def test_drain_fails_health_then_closes_listeners_after_the_delay_then_waits_for_requests() -> None:
    clock = FakeClock()
    admin = RecordingAdmin(active=[3, 1, 0], clock=clock)
    outcome = drain(admin, clock, grace=30, delay=5)
    assert admin.calls == [
        "fail_health_checks@0",
        "close_listeners@5",
        "active_requests@5",
        "active_requests@5.5",
        "active_requests@6",
    ]
    assert outcome.in_flight == 0 and outcome.complete
    assert outcome.seconds == 6


def test_drain_gives_up_after_the_grace_and_says_how_many_requests_are_left() -> None:
    clock = FakeClock()
    admin = RecordingAdmin(active=[2], clock=clock)
    outcome = drain(admin, clock, grace=3)
    assert outcome.in_flight == 2 and not outcome.complete
    # Polled until the grace ran out, not longer.
    assert admin.calls[-1] == "active_requests@3"
    assert sum(clock.sleeps) == 3


def test_drain_of_an_envoy_that_does_not_answer_knows_nothing_and_does_not_wait() -> None:
    clock = FakeClock()
    admin = RecordingAdmin(active=[0], clock=clock, down=True)
    outcome = drain(admin, clock, grace=30, delay=5)
    assert outcome.in_flight is None and not outcome.complete
    assert clock.sleeps == []


def test_drain_keeps_waiting_through_an_admin_answer_that_is_slow_or_cut_off() -> None:
    clock = FakeClock()
    slow = urllib.error.URLError(TimeoutError("timed out"))
    admin = RecordingAdmin(active=[2, slow, OSError("cut off"), 0], clock=clock)
    outcome = drain(admin, clock, grace=30)
    assert outcome.in_flight == 0
    assert admin.calls[-1] == "active_requests@1.5"


def test_drain_ends_when_envoy_refuses_the_connection_mid_wait() -> None:
    clock = FakeClock()
    gone = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    outcome = drain(RecordingAdmin(active=[2, gone], clock=clock), clock, grace=30)
    assert outcome.in_flight is None
    assert clock.now - 100 == 0.5


def test_wait_for_envoy_exit_returns_once_the_admin_refuses_connections() -> None:
    clock = FakeClock()
    admin = RecordingAdmin(active=[0], clock=clock)
    # A slow answer is not an exit; a refused connection is.
    answers: Iterator[OSError | None] = iter(
        [None, urllib.error.URLError(TimeoutError("timed out")), ConnectionRefusedError()]
    )

    def server_state() -> str:
        admin.calls.append(f"server_state@{clock.now - 100:g}")
        error = next(answers)
        if error is not None:
            raise error
        return "LIVE"

    admin.server_state = server_state  # type: ignore[method-assign]
    assert wait_for_envoy_exit(admin, timeout=10, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert admin.calls == ["server_state@0", "server_state@0.2", "server_state@0.4"]


def test_wait_for_envoy_exit_gives_up_after_its_timeout() -> None:
    clock = FakeClock()
    admin = RecordingAdmin(active=[0], clock=clock)
    assert not wait_for_envoy_exit(admin, timeout=1, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.now - 100 == pytest.approx(1)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9901"),
        ("0.0.0.0", "http://127.0.0.1:9901"),
        ("::", "http://[::1]:9901"),
        ("::1", "http://[::1]:9901"),
    ],
)
def test_admin_url_reaches_a_wildcard_bound_admin_on_loopback(host: str, url: str) -> None:
    assert admin_url(host, 9901) == url


# -- a fake of Envoy's admin -------------------------------------------------------------------


@dataclass
class FakeEnvoy:
    """Envoy's admin endpoints the lifecycle calls, answering as Envoy 1.40 does."""

    state: str = "LIVE"
    active: int = 0
    calls: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        async def ready(request: web.Request) -> web.Response:
            self.calls.append(f"{request.method} {request.path_qs}")
            return web.Response(text=f"{self.state}\n", status=200 if self.state == "LIVE" else 503)

        async def post_only(request: web.Request) -> web.Response:
            self.calls.append(f"{request.method} {request.path_qs}")
            if request.method != "POST":
                return web.Response(text="Method GET not allowed, POST required.", status=405)
            if request.path == "/healthcheck/fail":
                self.state = "DRAINING"
            return web.Response(text="OK\n")

        async def stats(request: web.Request) -> web.Response:
            self.calls.append(f"{request.method} {request.path_qs}")
            wanted = "^http\\.gateway\\.downstream_rq_active$"
            if request.query.get("filter") != wanted or request.query.get("format") != "json":
                return web.json_response({"stats": []})
            entry = {"name": "http.gateway.downstream_rq_active", "value": self.active}
            return web.Response(body=orjson.dumps({"stats": [entry]}))

        app = web.Application()
        app.router.add_get("/ready", ready)
        app.router.add_route("*", "/healthcheck/fail", post_only)
        app.router.add_route("*", "/drain_listeners", post_only)
        app.router.add_get("/stats", stats)
        return app


@pytest.fixture
async def envoy() -> AsyncIterator[tuple[FakeEnvoy, str]]:
    fake = FakeEnvoy()
    server = TestServer(fake.app(), host="127.0.0.1", port=free_port())
    await server.start_server()
    yield fake, f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_envoy_admin_calls_envoys_endpoints_with_their_methods(
    envoy: tuple[FakeEnvoy, str],
) -> None:
    fake, url = envoy
    admin = EnvoyAdmin(url)
    fake.active = 4

    def calls() -> tuple[str, str, int]:
        live = admin.server_state()
        admin.fail_health_checks()
        draining = admin.server_state()
        admin.close_listeners()
        return live, draining, admin.active_requests()

    live, draining, active = await asyncio.to_thread(calls)
    assert (live, draining, active) == ("LIVE", "DRAINING", 4)
    assert fake.calls == [
        "GET /ready",
        "POST /healthcheck/fail",
        "GET /ready",
        "POST /drain_listeners",
        "GET /stats?filter=%5Ehttp%5C.gateway%5C.downstream_rq_active%24&format=json",
    ]


def test_envoy_admin_raises_oserror_when_envoy_is_not_there() -> None:
    admin = EnvoyAdmin(f"http://127.0.0.1:{free_port()}")
    for call in (admin.server_state, admin.fail_health_checks, admin.active_requests):
        with pytest.raises(OSError):
            call()


async def test_readiness_asks_envoy_once_per_ttl_however_many_probes_come(
    envoy: tuple[FakeEnvoy, str],
) -> None:
    fake, url = envoy
    clock = FakeClock()
    readiness = EnvoyReadiness(url, ttl=1.0, clock=clock)
    try:
        states = await asyncio.gather(*(readiness.state() for _ in range(20)))
        assert states == ["LIVE"] * 20
        fake.state = "DRAINING"
        clock.now += 0.5
        assert await readiness.state() == "LIVE"  # still the cached answer
        assert fake.calls == ["GET /ready"]
        clock.now += 0.5
        assert await readiness.state() == "DRAINING"
        assert fake.calls == ["GET /ready", "GET /ready"]
    finally:
        await readiness.close()


async def test_readiness_of_an_envoy_that_is_not_there_is_unreachable() -> None:
    readiness = EnvoyReadiness(f"http://127.0.0.1:{free_port()}")
    try:
        assert await readiness.state() == UNREACHABLE
    finally:
        await readiness.close()


# -- the processor's /readyz and /healthz ------------------------------------------------------


@pytest.fixture
async def admin_client(
    envoy: tuple[FakeEnvoy, str],
) -> AsyncIterator[tuple[AdminState, FakeEnvoy, TestClient[web.Request, web.Application]]]:
    fake, url = envoy
    state = AdminState()
    # ttl 0: every probe asks (the cache is tested above).
    app = make_admin_app(state, Metrics(), envoy=EnvoyReadiness(url, ttl=0))
    async with TestClient(TestServer(app)) as client:
        yield state, fake, client


async def probe(client: TestClient[web.Request, web.Application], path: str) -> tuple[int, object]:
    response = await client.get(path)
    return response.status, orjson.loads(await response.read())


async def test_readyz_is_ready_only_when_the_processor_serves_and_envoy_is_live(
    admin_client: tuple[AdminState, FakeEnvoy, TestClient[web.Request, web.Application]],
) -> None:
    state, fake, client = admin_client
    assert await probe(client, "/readyz") == (503, {"status": "starting"})
    state.ready = True
    assert await probe(client, "/readyz") == (200, {"status": "ready"})
    fake.state = "PRE_INITIALIZING"
    assert await probe(client, "/readyz") == (
        503,
        {"status": "envoy_not_ready", "envoy": "PRE_INITIALIZING"},
    )
    fake.state = "DRAINING"
    assert await probe(client, "/readyz") == (503, {"status": "draining", "envoy": "DRAINING"})
    fake.state = "LIVE"
    state.draining = True
    assert await probe(client, "/readyz") == (503, {"status": "draining"})
    # Liveness is the processor alone.
    assert await probe(client, "/healthz") == (200, {"status": "ok"})


async def test_readyz_without_envoy_is_envoy_not_ready_but_healthz_stays_ok() -> None:
    state = AdminState()
    state.ready = True
    gone = EnvoyReadiness(f"http://127.0.0.1:{free_port()}")
    async with TestClient(TestServer(make_admin_app(state, Metrics(), envoy=gone))) as client:
        assert await probe(client, "/readyz") == (
            503,
            {"status": "envoy_not_ready", "envoy": "unreachable"},
        )
        assert await probe(client, "/healthz") == (200, {"status": "ok"})


async def test_readyz_of_a_processor_that_does_not_check_envoy_is_its_own() -> None:
    state = AdminState()
    state.ready = True
    async with TestClient(TestServer(make_admin_app(state, Metrics()))) as client:
        assert await probe(client, "/readyz") == (200, {"status": "ready"})
