"""Hot reload of the whole gateway: the processor's tables and Envoy's listener, routes, clusters.

A reload (the config file or a key file it refers to changed, SIGHUP, or `POST /reload`) runs,
one at a time:

1. load and validate the file exactly as `extproc check-config` does (`load_config`, credentials
   resolved), and refuse changes that need a restart (`config.changes.restart_problems`);
2. build the new `Gateway` (breakers and provider health carried over);
3. write Envoy's files with the routes and clusters of the new config AND of every config still
   live (rendered by a child process, `envoy_files.py`), and wait until Envoy has applied them,
   new clusters warmed;
4. put the new gateway in force: new ext_proc streams use it, streams already open keep theirs;
5. in the background, once an old gateway has no stream left (or after `reload.drain_seconds`),
   drop it and write the files without its routes and clusters.

Anything refused or failing leaves the running config serving (failed: the files are put back),
counts `gateway_config_reloads_total{result}` and logs one WARNING line naming every problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from extproc.config.changes import change_summary, restart_problems
from extproc.config.key_files import files_digest, files_stamp, watched_files
from extproc.config.loading import ConfigError, LoadedConfig, load_config
from extproc.gateway import Gateway, LiveGateways
from extproc.server.envoy_admin import envoy_admin_url
from extproc.server.envoy_files import EnvoyFilesError, EnvoyFilesWriter
from extproc.server.health_checks import ProviderChecks
from extproc.server.xds_status import XdsStatus

log = logging.getLogger("extproc.reload")

_DRAIN_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class ReloadResult:
    """How one reload ended: `success`, `rejected` (the file, or a restart-only change) or
    `failed` (valid, but not applied)."""

    result: str
    trigger: str
    problems: tuple[str, ...] = ()
    changes: str = ""
    envoy_files: tuple[str, ...] = ()  # Envoy's files it rewrote (none: Envoy had nothing new)
    at: float = field(default_factory=time.time)
    reload: int = 0  # 1 for the first reload of this process, 2 for the next, ...

    def to_json(self) -> dict[str, Any]:
        """The result as the admin endpoint shows it."""
        return {
            "result": self.result,
            "trigger": self.trigger,
            "problems": list(self.problems),
            "changes": self.changes,
            "envoy_files": list(self.envoy_files),
            "at": self.at,
            "reload": self.reload,
        }


class Reloader:
    """Reloads the config file into `gateways` and Envoy's files; one reload at a time."""

    def __init__(
        self, path: Path, gateways: LiveGateways, checks: ProviderChecks | None = None
    ) -> None:
        self.path = path
        self.gateways = gateways
        self.checks = checks or ProviderChecks()
        self.envoy_files = EnvoyFilesWriter()
        self.last: ReloadResult | None = None
        self.reloads = 0
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        # What the last reload (or the start) read: the config file and the key files it
        # refers to, their `stat` (polled) and their content (compared when that changed).
        self._watched, self._stamp, self._digest = _note(path)
        metrics = gateways.current.metrics
        metrics.config_last_reload_success.set(time.time())
        metrics.config_last_reload_successful.set(1)

    # -- start and stop --------------------------------------------------------------------

    async def write_envoy_files(self) -> list[str]:
        """Write Envoy's files for the live configs (at start: the one in force); the names of
        the files that changed. Raises EnvoyFilesError."""
        files = await self.envoy_files.write([g.config for g in self.gateways.all()])
        return files.written

    def start(self) -> None:
        """At start: write Envoy's files for the config in force (Envoy may still run on an
        older version of the file), in the background, before any reload."""
        task = asyncio.get_running_loop().create_task(self._initial_write())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _initial_write(self) -> None:
        async with self._lock:
            try:
                written = await self.write_envoy_files()
            except EnvoyFilesError as exc:
                log.error("cannot write Envoy's config files: %s (Envoy keeps what it has)", exc)
                return
            if written:
                log.info("wrote Envoy's %s", ", ".join(written))

    async def stop(self) -> None:
        """Stop the background drains (at shutdown; Envoy's files stay as they are)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- triggers --------------------------------------------------------------------------

    async def watch(self) -> None:
        """Poll the file and the key files it refers to (`api_key_file`,
        `aws_credentials_file`, `api_key_sha256_file`) every `reload.watch_interval_seconds`
        (of the config in force) and reload when the content of any changed; runs until
        cancelled."""
        while True:
            interval = self.gateways.current.config.reload.watch_interval_seconds
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval <= 0:
                continue
            if files_stamp(self._watched) != self._stamp:
                await self.reload("file", only_if_changed=True)

    def reload_soon(self, trigger: str) -> None:
        """Start a reload from a signal handler (it runs after any reload in progress)."""
        task = asyncio.get_running_loop().create_task(self.reload(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, trigger: str, only_if_changed: bool = False) -> ReloadResult | None:
        """Reload the file now (after any reload in progress); never raises.

        `only_if_changed`: do nothing (None) when the files' content is the one the last
        reload (or the start) read, e.g. a file touched or rewritten with the same content.
        """
        async with self._lock:
            if only_if_changed:
                self._stamp = files_stamp(self._watched)
                if files_digest(self._watched) == self._digest:
                    return None
            self.reloads += 1
            try:
                result = await self._reload(trigger)
            except Exception as exc:  # a bug, not a bad file: keep serving, say so
                log.exception("config reload (%s) failed unexpectedly", trigger)
                result = ReloadResult("failed", trigger, (f"internal error: {exc!r}",))
            result = dataclasses.replace(result, trigger=trigger, reload=self.reloads)
            self._record(result)
            self.last = result
            return result

    # -- one reload --------------------------------------------------------------------------

    async def _reload(self, trigger: str) -> ReloadResult:
        # Noted before reading, so that a file changing while it loads is reloaded again (the
        # YAML is parsed for the list of files: off the event loop).
        self._watched, self._stamp, self._digest = await asyncio.to_thread(_note, self.path)
        try:
            loaded = await asyncio.to_thread(load_config, self.path)
        except ConfigError as exc:
            return ReloadResult("rejected", trigger, tuple(exc.problems))
        for warning in loaded.warnings:
            log.warning("config reload (%s): %s: %s", trigger, self.path, warning)
        running = self.gateways.current
        problems = restart_problems(running.config, loaded.config)
        if problems:
            return ReloadResult("rejected", trigger, tuple(problems))
        changes = change_summary(running.config, loaded.config)
        gateway = Gateway(loaded, previous=running)
        self.gateways.pending = gateway  # answers the health checks of its new clusters
        try:
            failure, written = await self._apply_to_envoy([gateway, *self.gateways.all()], loaded)
        finally:
            self.gateways.pending = None  # no await before the swap below
        if failure is not None:
            await self._restore_envoy_files()
            return ReloadResult("failed", trigger, (failure,), changes, tuple(written))
        old = self.gateways.swap(gateway)
        access_log = loaded.config.telemetry.access_log  # the telemetry is the processor's
        gateway.telemetry.access_log = access_log.enabled
        gateway.telemetry.include_content = access_log.include_content
        self.checks.restart(gateway)
        self._drain_later(old, loaded.config.reload.drain_seconds)
        return ReloadResult("success", trigger, (), changes, tuple(written))

    async def _apply_to_envoy(
        self, live: list[Gateway], loaded: LoadedConfig
    ) -> tuple[str | None, list[str]]:
        """Write the files for `live` (the new gateway first) and wait until Envoy applied
        them: (None on success, else why not; the files written). Nothing to wait for when no
        file changed."""
        config = loaded.config
        envoy = XdsStatus(envoy_admin_url(config))
        before: dict[str, int] | None
        try:
            before = (await envoy.xds_state()).rejected
        except (aiohttp.ClientError, OSError, TimeoutError):
            before = None  # Envoy unreachable: wait_applied says so in time
        try:
            # Also rendered now: the files without the old config, for when it has drained.
            files = await self.envoy_files.write([g.config for g in live], later=[[config]])
        except EnvoyFilesError as exc:
            return f"cannot write Envoy's files in {config.reload.xds_directory}: {exc}", []
        if not files.written:
            return None, []
        timeout = config.reload.envoy_apply_timeout_seconds
        return await envoy.wait_applied(files.versions, before, timeout), files.written

    async def _restore_envoy_files(self) -> None:
        """Put back the files of the configs still live (after a failed reload)."""
        try:
            await self.write_envoy_files()
        except EnvoyFilesError as exc:
            log.error("cannot put Envoy's files back: %s", exc)

    def _drain_later(self, old: Gateway, grace: float) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(old, grace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, old: Gateway, grace: float) -> None:
        """Once `old` has no stream left (or after `grace`), drop its routes and clusters."""
        deadline = time.monotonic() + grace
        while old.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        async with self._lock:
            if old.in_flight > 0:
                log.warning(
                    "config reload: %d stream(s) of the previous config still open after "
                    "%.0fs; removing its routes and clusters anyway",
                    old.in_flight,
                    grace,
                )
            self.gateways.retire(old)
            try:
                await self.write_envoy_files()
            except EnvoyFilesError as exc:
                log.error("cannot remove the previous config from Envoy's files: %s", exc)
            self._forget_retired_labels(old)

    def _forget_retired_labels(self, old: Gateway) -> None:
        """Remove breaker gauges of targets no live gateway has any more."""
        live = set().union(*(g.breakers.targets() for g in self.gateways.all()))
        gauge = old.metrics.breaker_state
        for target in old.breakers.targets() - live:
            with contextlib.suppress(KeyError):
                gauge.remove(target)

    def _record(self, result: ReloadResult) -> None:
        metrics = self.gateways.current.metrics
        metrics.reloads.labels(result.result).inc()
        metrics.config_last_reload_successful.set(1 if result.result == "success" else 0)
        if result.result == "success":
            metrics.config_last_reload_success.set(result.at)
            log.info("config reloaded from %s (%s): %s", self.path, result.trigger, result.changes)
            return
        log.warning(
            "config reload %s (%s), the running config keeps serving: %s: %d problem(s): %s",
            result.result,
            result.trigger,
            self.path,
            len(result.problems),
            "; ".join(result.problems),
        )


def _note(path: Path) -> tuple[tuple[Path, ...], tuple[object, ...], str]:
    """The files to watch for the config at `path`, their `stat` stamp and content digest."""
    watched = watched_files(path)
    return watched, files_stamp(watched), files_digest(watched)
