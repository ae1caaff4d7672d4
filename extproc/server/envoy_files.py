"""Writing Envoy's listener, routes and clusters files for the configs live in the processor.

The renderer (`extproc.bootstrap`, on envoy-data-plane's pydantic models) costs ~25 MB of memory
and seconds of CPU under the GIL for a large config: in the processor that would slow every
request in flight. So the processor never imports it. Files already rendered from the same
inputs are left alone (each carries the digest of its inputs, `extproc.xds_files`); files
rendered before are written from memory; anything else is rendered by `extproc write-xds` in a
child process, which can render the sets a reload will need later in the same run (the files
without the old config, once it has drained).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from extproc.config.schema import GatewayConfig
from extproc.xds_files import XdsFile, inputs_digest, inputs_on_disk, write_xds_files

WRITE_TIMEOUT_SECONDS = 120.0
_CACHED_SETS = 8


class EnvoyFilesError(Exception):
    """The files could not be rendered or written (the message says why)."""


@dataclass(frozen=True, slots=True)
class EnvoyFiles:
    """What a write did: each file's version, and the files that changed."""

    versions: dict[str, str]
    written: list[str]


class EnvoyFilesWriter:
    """Writes the files for a list of configs; remembers what it rendered (a few sets)."""

    def __init__(self, timeout: float = WRITE_TIMEOUT_SECONDS) -> None:
        self.timeout = timeout
        self.renders = 0  # child processes run so far
        self._rendered: dict[str, tuple[XdsFile, ...]] = {}

    async def write(
        self,
        configs: Sequence[GatewayConfig],
        later: Sequence[Sequence[GatewayConfig]] = (),
    ) -> EnvoyFiles:
        """Make the files in `configs[0].reload.xds_directory` those of `configs`; if they
        must be rendered, render the `later` sets in the same child process too."""
        directory = configs[0].reload.xds_directory
        digest = inputs_digest(configs)
        files = self._rendered.get(digest)
        if files is None and inputs_on_disk(directory) == digest:
            return EnvoyFiles({}, [])  # rendered from these inputs already (versions unread)
        if files is None:
            return await self._render([configs, *later])
        try:
            written = await asyncio.to_thread(write_xds_files, directory, files)
        except OSError as exc:
            raise EnvoyFilesError(f"cannot write {directory}: {exc.strerror or exc}") from None
        return EnvoyFiles({f.name: f.version for f in files}, written)

    async def _render(self, sets: Sequence[Sequence[GatewayConfig]]) -> EnvoyFiles:
        payload = orjson.dumps({"sets": [[c.model_dump(mode="json") for c in s] for s in sets]})
        self.renders += 1
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "extproc.cli",
            "write-xds",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(child.communicate(payload), self.timeout)
        except TimeoutError:
            child.kill()
            await child.wait()
            raise EnvoyFilesError(f"rendering took over {self.timeout:g}s") from None
        except asyncio.CancelledError:
            child.kill()
            await child.wait()
            raise
        if child.returncode != 0:
            reason = err.decode(errors="replace").strip().splitlines()
            raise EnvoyFilesError(reason[-1] if reason else f"exit status {child.returncode}")
        answer = orjson.loads(out)
        for configs, files in zip(sets, answer["sets"], strict=True):
            self._remember(inputs_digest(configs), tuple(XdsFile(**f) for f in files))
        first = answer["sets"][0]
        return EnvoyFiles({f["name"]: f["version"] for f in first}, list(answer["written"]))

    def _remember(self, digest: str, files: tuple[XdsFile, ...]) -> None:
        self._rendered.pop(digest, None)
        self._rendered[digest] = files
        while len(self._rendered) > _CACHED_SETS:
            del self._rendered[next(iter(self._rendered))]
