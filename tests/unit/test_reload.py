"""The reload machinery without Envoy: what may change, what carries over, the Reloader's order.

A fake Envoy admin (aiohttp, in-process) reports the versions a test lets it "apply", so the
Reloader's steps can be watched one by one; `tests/e2e/test_reload.py` proves the same through
the real Envoy.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession, web

from extproc.bootstrap import CDS_FILE, LDS_FILE, RDS_FILE, xds_files
from extproc.config.changes import RESTART_ONLY, change_summary, restart_problems
from extproc.config.loading import LoadedConfig, load_config, parse_config
from extproc.decisions.auth import hash_key
from extproc.decisions.breaker import BreakerBoard, BreakerSettings, State
from extproc.dev.stack import free_ports
from extproc.errors import GatewayError
from extproc.gateway import Gateway, LiveGateways
from extproc.server.admin import AdminState, make_admin_app
from extproc.server.envoy_files import EnvoyFilesError, EnvoyFilesWriter
from extproc.server.reload import Reloader
from extproc.server.xds_status import SOURCES, XdsStatus, parse_stats
from tests.secret_volume import SecretVolume

Json = dict[str, Any]


def data(**sections: Any) -> Json:
    base: Json = {
        "auth": {"enabled": False},
        "providers": [
            {"name": "a", "type": "vllm", "base_url": "http://127.0.0.1:9/v1"},
            {
                "name": "b",
                "type": "vllm",
                "base_url": "http://127.0.0.1:10/v1",
                "health_check": {"path": "/models"},
            },
        ],
        "models": [
            {"name": "one", "targets": [{"provider": "a", "model": "one-up"}]},
            {
                "name": "two",
                "targets": [{"provider": "a", "model": "two-up"}, {"provider": "b", "model": "t"}],
            },
        ],
    }
    base.update(sections)
    return base


def gateway(config: Json, previous: Gateway | None = None) -> Gateway:
    return Gateway(LoadedConfig(parse_config(config), {}, "test"), previous=previous)


# --- what a reload may change ------------------------------------------------------------------


@pytest.mark.parametrize(("path", "_read", "who"), RESTART_ONLY)
def test_every_restart_only_setting_is_refused_with_what_to_restart(
    path: str, _read: Any, who: str
) -> None:
    running = data(
        processor={"tcp_address": "127.0.0.1:5000"},
        governance={"redis": {"url": "redis://127.0.0.1:6379/0"}},
    )
    new = copy.deepcopy(running)
    section, field = path.split(".")
    values = {
        "unix_socket": "/tmp/other.sock",
        "tcp_address": "127.0.0.1:5001",
        "admin_address": "127.0.0.2",
        "admin_port": 9191,
        "event_loop": "asyncio",
        "address": "127.0.0.2",
        "port": 9902,
        "xds_directory": "/tmp/other-xds",
        "ready_requires_envoy": False,
        "log_level": "DEBUG",
        "log_format": "json",
        "tracing": {"enabled": True, "sampling_ratio": 0.5},
        "backend": "redis",
        "redis": {"url": "redis://127.0.0.1:6380/0"},
        "on_redis_failure": "deny",
        "max_bytes": 128 * 1024,
    }
    new.setdefault(section, {})[field] = values[field]
    (problem,) = restart_problems(parse_config(running), parse_config(new))
    assert problem.startswith(f"{path}: changed from ")
    assert f"needs a restart of {who}" in problem


def test_everything_else_reloads_hot() -> None:
    running = data()
    new = data(
        listener={"address": "0.0.0.0", "port": 8081},
        limits={"max_body_bytes": 64 * 1024 * 1024, "default_timeout_seconds": 5},
        resilience={"max_retries": 0, "breaker_window_seconds": 5},
        processor={"message_timeout_ms": 300, "shutdown_grace_seconds": 1},
        reload={"watch_interval_seconds": 0, "drain_seconds": 1},
        telemetry={"access_log": {"include_content": True}, "usage_accounting": False},
        auth={"enabled": True},
        tenants=[
            {
                "name": "t",
                "api_key_sha256": ["a" * 64],
                "limits": {"requests_per_minute": 5},
                "keys": [{"sha256": "b" * 64, "id": "ci", "budgets": [{"limit": 3}]}],
            }
        ],
        governance={"currency": "EUR", "chars_per_token": 3},
    )
    assert restart_problems(parse_config(running), parse_config(new)) == []


def test_change_summary_names_what_changed() -> None:
    running = data()
    new = data()
    new["providers"].append({"name": "c", "type": "ollama", "base_url": "http://x:1"})
    new["models"] = [
        new["models"][1],
        {"name": "three", "targets": [{"provider": "c", "model": "x"}]},
    ]
    new["models"][0]["owned_by"] = "me"
    new["limits"] = {"default_timeout_seconds": 9}
    summary = change_summary(parse_config(running), parse_config(new))
    assert summary == (
        "providers added: c; models added: three; models removed: one; models changed: two; "
        "sections changed: limits"
    )
    assert change_summary(parse_config(running), parse_config(running)) == "no change"


# --- what carries over -------------------------------------------------------------------------


def test_a_new_board_takes_over_the_breakers_of_targets_that_still_exist() -> None:
    settings = BreakerSettings(consecutive_failures=1, window_seconds=10)
    old = BreakerBoard(settings)
    kept = old.get("p/m")
    kept.record_failure(0.0, probe=False, reason="boom")
    assert kept.state is State.OPEN
    old.get("p/gone")
    new_settings = BreakerSettings(consecutive_failures=3, window_seconds=10)
    new = BreakerBoard(new_settings, previous=old)
    assert new.get("p/m") is kept
    assert kept.state is State.OPEN and kept.settings is new_settings
    fresh = new.get("p/new")
    assert fresh is not old.get("p/new") and fresh.state is State.CLOSED
    new.forget_previous()
    assert new.targets() == {"p/m", "p/new"}


def test_a_window_of_another_length_starts_empty_and_the_same_keeps_its_counts() -> None:
    breaker = BreakerBoard(BreakerSettings(min_requests=2, window_seconds=10)).get("t")
    breaker.record_failure(1.0, probe=False, reason="x")
    breaker.reconfigure(BreakerSettings(min_requests=2, window_seconds=10, open_seconds=5))
    assert breaker.snapshot(1.0)["window_failures"] == 1
    breaker.reconfigure(BreakerSettings(min_requests=2, window_seconds=20))
    assert breaker.snapshot(1.0)["window_failures"] == 0
    assert breaker.snapshot(1.0)["consecutive_failures"] == 1


def test_a_reloaded_gateway_shares_breakers_metrics_and_checked_provider_health() -> None:
    old = gateway(data())
    target = old.models["one"].targets[0]
    for _ in range(5):
        target.breaker.record_failure(0.0, probe=False, reason="x")
    assert target.breaker.state is State.OPEN
    old.provider_health["b"].healthy = False
    old.provider_health["a"].healthy = False  # "a" has no health check: not carried
    new_data = data()
    new_data["models"][0]["default_max_tokens"] = 7  # "one" changes, its target does not
    new = gateway(new_data, previous=old)
    assert new.metrics is old.metrics
    assert new.models["one"].targets[0].breaker is target.breaker
    assert new.models["one"].route_id != old.models["one"].route_id
    assert new.provider_health["b"] is old.provider_health["b"]
    assert new.provider_health["a"].healthy


def test_live_gateways_find_a_target_newest_first_and_the_pending_one_last() -> None:
    old = gateway(data())
    new_data = data()
    new_data["models"].append({"name": "three", "targets": [{"provider": "a", "model": "x"}]})
    pending = gateway(new_data, previous=old)
    live = LiveGateways(old)
    three = pending.models["three"].targets[0].id
    assert live.target(three) is None
    live.pending = pending
    assert live.target(three) == (pending, pending.targets[three])
    shared = old.models["one"].targets[0].id
    assert live.target(shared) == (old, old.targets[shared])  # the one in force wins
    live.pending = None
    assert live.swap(pending) is old
    assert live.all() == [pending, old]
    assert live.target(shared) == (pending, pending.targets[shared])
    live.retire(old)
    assert live.all() == [pending]


# --- Envoy's admin interface -------------------------------------------------------------------


def stats_text(versions: dict[str, str], rejected: int = 0, warming: int = 0) -> str:
    lines = []
    for name, prefix in SOURCES.items():
        lines.append(f'{prefix}.version_text: "{versions.get(name, "")}"')
        lines.append(f"{prefix}.update_rejected: {rejected if name == CDS_FILE else 0}")
    lines += [
        f"cluster_manager.warming_clusters: {warming}",
        "listener_manager.total_listeners_warming: 0",
    ]
    return "\n".join(lines) + "\n"


def test_parse_stats_reads_versions_rejections_and_warming() -> None:
    state = parse_stats(stats_text({CDS_FILE: "c1", RDS_FILE: "r1"}, rejected=2, warming=1))
    assert state.versions == {CDS_FILE: "c1", RDS_FILE: "r1", LDS_FILE: ""}
    assert state.rejected == {CDS_FILE: 2, RDS_FILE: 0, LDS_FILE: 0}
    assert state.warming == 1


class FakeEnvoyAdmin:
    """Answers `/stats` like Envoy, with whatever the test says it has applied."""

    def __init__(self) -> None:
        self.versions: dict[str, str] = {}
        self.rejected = 0
        self.warming = 0
        self.on_stats: Callable[[], None] | None = None

    def app(self) -> web.Application:
        async def stats(_: web.Request) -> web.Response:
            if self.on_stats is not None:
                self.on_stats()
            return web.Response(text=stats_text(self.versions, self.rejected, self.warming))

        app = web.Application()
        app.router.add_get("/stats", stats)
        return app


@pytest.fixture
async def envoy_admin() -> AsyncIterator[tuple[FakeEnvoyAdmin, int]]:
    fake = FakeEnvoyAdmin()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake, port
    await runner.cleanup()


async def test_wait_applied_answers_none_once_every_version_is_in_and_nothing_warms(
    envoy_admin: tuple[FakeEnvoyAdmin, int],
) -> None:
    fake, port = envoy_admin
    wanted = {CDS_FILE: "c", RDS_FILE: "r", LDS_FILE: "l"}
    polls = 0

    def progress() -> None:
        nonlocal polls
        polls += 1
        if polls == 2:
            fake.versions = dict(wanted)
            fake.warming = 1
        if polls == 4:
            fake.warming = 0

    fake.on_stats = progress
    admin = XdsStatus(f"http://127.0.0.1:{port}")
    assert await admin.wait_applied(wanted, {}, timeout=10) is None
    assert polls == 4


async def test_wait_applied_reports_a_rejection_and_a_timeout(
    envoy_admin: tuple[FakeEnvoyAdmin, int],
) -> None:
    fake, port = envoy_admin
    admin = XdsStatus(f"http://127.0.0.1:{port}")
    wanted = {CDS_FILE: "c"}
    fake.rejected = 1
    assert await admin.wait_applied(wanted, {CDS_FILE: 0}, timeout=10) == (
        f"Envoy rejected the new {CDS_FILE} (Envoy's log says why)"
    )
    timed_out = await admin.wait_applied(wanted, {CDS_FILE: 1}, timeout=0.2)
    assert (
        timed_out == f"Envoy did not apply the new config within 0.2s (not applied yet: {CDS_FILE})"
    )


async def test_wait_applied_reports_an_envoy_that_does_not_answer() -> None:
    (port,) = free_ports(1)
    reason = await XdsStatus(f"http://127.0.0.1:{port}").wait_applied({CDS_FILE: "c"}, None, 0.2)
    assert reason is not None
    assert reason.startswith("Envoy did not apply the new config within 0.2s (Envoy's admin")


# --- the Reloader ------------------------------------------------------------------------------


class Setup:
    """A config file, its gateway, a Reloader and the fake Envoy admin it talks to."""

    def __init__(self, tmp: Path, envoy_port: int) -> None:
        self.path = tmp / "gateway.yaml"
        self.xds = tmp / "xds"
        self.base = data(
            envoy_admin={"address": "127.0.0.1", "port": envoy_port},
            reload={"xds_directory": str(self.xds), "envoy_apply_timeout_seconds": 2},
        )
        self.write(self.base)
        self.gateways = LiveGateways(Gateway(load_config(self.path)))
        self.reloader = Reloader(self.path, self.gateways)

    def write(self, config: Json) -> None:
        self.path.write_text(yaml.safe_dump(config), encoding="utf-8")

    def changed(self) -> Json:
        config = copy.deepcopy(self.base)
        config["models"].append({"name": "three", "targets": [{"provider": "b", "model": "x"}]})
        return config

    def envoy_files(self) -> dict[str, str]:
        return {p.name: p.read_text(encoding="utf-8") for p in self.xds.iterdir()}


@pytest.fixture
async def setup(tmp_path: Path, envoy_admin: tuple[FakeEnvoyAdmin, int]) -> AsyncIterator[Setup]:
    fake, port = envoy_admin
    made = Setup(tmp_path, port)
    assert await made.reloader.write_envoy_files() == [CDS_FILE, RDS_FILE, LDS_FILE]
    fake.versions = {f.name: f.version for f in xds_files([made.gateways.current.config])}
    yield made
    await made.reloader.stop()
    await made.reloader.checks.stop()


async def eventually(check: Callable[[], bool], timeout: float = 60) -> None:
    """Wait until `check()` holds (each reload writes Envoy's files in a child process)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def apply_when_written(fake: FakeEnvoyAdmin, setup: Setup, seen: list[Any]) -> None:
    """The fake Envoy applies whatever is in the directory, noting what the processor did."""

    def on_stats() -> None:
        versions = {}
        for name, text in setup.envoy_files().items():
            versions[name] = yaml.safe_load(text)["version_info"]
        fake.versions = versions
        seen.append((setup.gateways.pending, setup.gateways.current))

    fake.on_stats = on_stats


async def test_a_reload_writes_both_configs_then_swaps_then_drops_the_old_one(
    setup: Setup, envoy_admin: tuple[FakeEnvoyAdmin, int]
) -> None:
    fake, _ = envoy_admin
    old = setup.gateways.current
    seen: list[Any] = []
    apply_when_written(fake, setup, seen)
    old.in_flight = 1  # a stream still open on the old config
    setup.write(setup.changed())
    result = await setup.reloader.reload("api")
    assert result is not None and result.result == "success", result
    assert result.changes == "models added: three"
    new = setup.gateways.current
    assert new is not old and "three" in new.models
    # While Envoy was applying the files, the new gateway was pending (answering the health
    # checks of its clusters) and the old one still in force.
    assert seen and all(pending is new and current is old for pending, current in seen)
    assert setup.gateways.retiring == [old]
    both = setup.envoy_files()[CDS_FILE]
    assert old.models["two"].route_id in both and new.models["three"].route_id in both
    # Once the old gateway's last stream ends, its routes and clusters go.
    old.in_flight = 0
    await eventually(lambda: not setup.gateways.retiring)
    await eventually(lambda: len(setup.reloader._tasks) == 0)  # the files are rewritten
    assert setup.envoy_files() == {f.name: f.text for f in xds_files([new.config])}
    metrics = new.metrics
    assert metrics.reloads.labels("success")._value.get() == 1
    assert metrics.config_last_reload_successful._value.get() == 1


async def test_a_broken_file_is_refused_logged_and_changes_nothing(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    before = setup.envoy_files()
    current = setup.gateways.current
    broken = setup.changed()
    broken["models"][-1]["targets"][0]["provider"] = "nope"
    broken["providers"][0]["base_url"] = "gopher://x"
    setup.write(broken)
    with caplog.at_level(logging.WARNING, logger="extproc.reload"):
        result = await setup.reloader.reload("signal")
    assert result is not None
    assert (result.result, result.trigger) == ("rejected", "signal")
    assert result.problems == (
        "providers.0.base_url: base_url must start with http:// or https://",
    )
    assert setup.gateways.current is current and setup.gateways.retiring == []
    assert setup.envoy_files() == before
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "config reload rejected (signal)" in record.getMessage()
    assert result.problems[0] in record.getMessage()
    assert current.metrics.reloads.labels("rejected")._value.get() == 1
    assert current.metrics.config_last_reload_successful._value.get() == 0


async def test_envoy_rejecting_the_files_fails_the_reload_and_puts_them_back(
    setup: Setup, envoy_admin: tuple[FakeEnvoyAdmin, int]
) -> None:
    fake, _ = envoy_admin
    before = setup.envoy_files()
    current = setup.gateways.current

    def reject() -> None:
        if setup.envoy_files() != before:
            fake.rejected = 1

    fake.on_stats = reject
    setup.write(setup.changed())
    result = await setup.reloader.reload("api")
    assert result is not None and result.result == "failed"
    assert result.problems == (f"Envoy rejected the new {CDS_FILE} (Envoy's log says why)",)
    assert setup.gateways.current is current and setup.gateways.pending is None
    assert setup.envoy_files() == before


async def test_the_watch_reloads_a_changed_file_but_not_a_rewritten_one(
    setup: Setup, envoy_admin: tuple[FakeEnvoyAdmin, int]
) -> None:
    fake, _ = envoy_admin
    apply_when_written(fake, setup, [])
    config = copy.deepcopy(setup.base)
    config["reload"]["watch_interval_seconds"] = 0.05
    setup.write(config)
    assert (await setup.reloader.reload("api")) is not None
    watch = asyncio.create_task(setup.reloader.watch())
    try:
        setup.write(config)  # same content, new mtime: nothing to do
        await asyncio.sleep(0.3)
        assert setup.reloader.reloads == 1
        changed = copy.deepcopy(config)
        changed["models"].pop()
        setup.write(changed)
        await eventually(
            lambda: setup.reloader.last is not None and setup.reloader.last.reload == 2
        )
        assert setup.reloader.last is not None
        assert (setup.reloader.last.trigger, setup.reloader.last.result) == ("file", "success")
        assert "two" not in setup.gateways.current.models
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)


async def test_the_watch_reloads_when_a_key_file_is_swapped_like_a_kubelet_secret_update(
    setup: Setup, envoy_admin: tuple[FakeEnvoyAdmin, int], tmp_path: Path
) -> None:
    fake, _ = envoy_admin
    apply_when_written(fake, setup, [])
    volume = SecretVolume(tmp_path / "client-keys")
    volume.update({"team-a": hash_key("old-key") + "\n"})
    config = copy.deepcopy(setup.base)
    config["auth"] = {"enabled": True}
    config["tenants"] = [{"name": "a", "api_key_sha256_file": str(volume.path("team-a"))}]
    config["reload"]["watch_interval_seconds"] = 0.05
    setup.write(config)
    assert (await setup.reloader.reload("api")) is not None

    def tenant(key: str) -> str:
        return setup.gateways.current.auth.authenticate(f"Bearer {key}").name

    def reloaded(number: int) -> bool:
        return setup.reloader.last is not None and setup.reloader.last.reload == number

    assert tenant("old-key") == "a"
    watch = asyncio.create_task(setup.reloader.watch())
    try:
        volume.update({"team-a": f"{hash_key('old-key')}\n{hash_key('new-key')}\n"})
        await eventually(lambda: reloaded(2))
        assert setup.reloader.last is not None
        assert (setup.reloader.last.trigger, setup.reloader.last.result) == ("file", "success")
        assert setup.reloader.last.changes == "tenants changed: a"
        assert tenant("new-key") == tenant("old-key") == "a"

        # A broken version is refused; the keys in force keep working.
        volume.update({"team-a": "sk-not-a-digest\n"})
        await eventually(lambda: reloaded(3))
        last = setup.reloader.last
        assert last is not None and (last.trigger, last.result) == ("file", "rejected")
        assert last.problems == (
            f"tenants.0.api_key_sha256_file: {volume.path('team-a')}: line 1: API key hashes "
            "must be 64 lower-case hex characters (use `extproc hash-key` to make one)",
        )
        assert tenant("new-key") == "a"

        # The old key removed: from the reload on it gets 401.
        volume.update({"team-a": hash_key("new-key") + "\n"})
        await eventually(lambda: reloaded(4))
        assert setup.reloader.last is not None and setup.reloader.last.result == "success"
        assert tenant("new-key") == "a"
        with pytest.raises(GatewayError) as info:
            tenant("old-key")
        assert info.value.status == 401
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
    # The same content swapped in again (a kubelet resync) is no reason to reload.
    volume.update({"team-a": hash_key("new-key") + "\n"})
    assert await setup.reloader.reload("file", only_if_changed=True) is None


# --- the admin endpoints -----------------------------------------------------------------------


async def test_admin_reload_endpoints_and_health_of_a_pending_gateways_targets(
    setup: Setup, envoy_admin: tuple[FakeEnvoyAdmin, int]
) -> None:
    fake, _ = envoy_admin
    apply_when_written(fake, setup, [])
    app = make_admin_app(
        AdminState(), setup.gateways.current.metrics, setup.gateways, reloader=setup.reloader
    )
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as http:
            async with http.get(f"{url}/reload") as response:
                assert (await response.json())["result"] is None
            pending = gateway(setup.changed(), previous=setup.gateways.current)
            new_target = pending.models["three"].targets[0].id
            check = {"Host": new_target}
            async with http.get(f"{url}/breaker/health", headers=check) as response:
                assert response.status == 404
            setup.gateways.pending = pending
            async with http.get(f"{url}/breaker/health", headers=check) as response:
                assert response.status == 200
            setup.gateways.pending = None

            setup.write({"providers": "not a list"})
            async with http.post(f"{url}/reload") as response:
                assert response.status == 422
                body = await response.json()
                assert body["result"] == "rejected" and body["problems"]
            setup.write(setup.changed())
            async with http.post(f"{url}/reload") as response:
                assert response.status == 200
                assert (await response.json())["changes"] == "models added: three"
            async with http.get(f"{url}/reload") as response:
                body = await response.json()
                assert (body["result"], body["reload"], body["trigger"]) == ("success", 2, "api")
                assert body["config"] == str(setup.path)
    finally:
        await runner.cleanup()


# --- writing Envoy's files ---------------------------------------------------------------------


async def test_envoy_files_are_rendered_only_when_their_inputs_are_new(tmp_path: Path) -> None:
    writer = EnvoyFilesWriter()
    first = parse_config(data(reload={"xds_directory": str(tmp_path)}))
    tenants_only = data(reload={"xds_directory": str(tmp_path)}, auth={"enabled": True})
    tenants_only["tenants"] = [{"name": "t", "api_key_sha256": ["c" * 64]}]
    second = data(reload={"xds_directory": str(tmp_path)})
    second["models"].pop()
    later = parse_config(second)

    written = await writer.write([first])
    assert written.written == [CDS_FILE, RDS_FILE, LDS_FILE] and writer.renders == 1
    assert written.versions == {f.name: f.version for f in xds_files([first])}
    assert (await writer.write([first])).written == []
    assert (await writer.write([parse_config(tenants_only), first])).written == []
    # A reload's files, with those for after the drain rendered in the same child process.
    both = await writer.write([later, first], later=[[later]])
    assert both.written == [CDS_FILE, RDS_FILE, LDS_FILE] and writer.renders == 2
    after_drain = await writer.write([later])
    assert after_drain.written == [CDS_FILE, RDS_FILE, LDS_FILE] and writer.renders == 2
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        f.name: f.text for f in xds_files([later])
    }


async def test_a_directory_that_cannot_be_written_is_an_envoy_files_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    config = parse_config(data(reload={"xds_directory": str(blocked / "xds")}))
    with pytest.raises(EnvoyFilesError, match="cannot write"):
        await EnvoyFilesWriter().write([config])


def test_a_config_survives_the_trip_to_the_renderer_process() -> None:
    from tests.unit.test_envoy_xds import config_data

    for config in (parse_config(data()), parse_config(config_data())):
        again = parse_config(config.model_dump(mode="json"))
        assert again == config
        assert xds_files([again]) == xds_files([config])
