"""Envoy's listener, routes and clusters files on disk: replacing them, and knowing what they hold.

Shared by the renderer (`extproc.bootstrap.xds`, which makes the files) and the processor
(`extproc.server.envoy_files`, which writes files rendered for it), without the renderer's
heavy imports. Each file carries, after its do-not-edit line, a digest of everything it was
rendered from (`inputs_digest`): the configs' sections the renderer reads, and the renderer
itself. Files that carry the digest of the configs in force need not be rendered again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from extproc.config.schema import PROCESSOR_ONLY_MODEL_FIELDS, GatewayConfig
from extproc.contract import CDS_FILE, LDS_FILE, RDS_FILE

XDS_FILE_NAMES = (CDS_FILE, RDS_FILE, LDS_FILE)  # the order to write them in
INPUTS_PREFIX = "# inputs: "
# Sections only the processor reads: they never change Envoy's files.
_PROCESSOR_ONLY = frozenset({"auth", "tenants", "governance"})
# What the rendered files depend on besides the configs: the renderer's code and the libraries
# that serialise it.
_RENDERER = Path(__file__).parent
_RENDERER_SOURCES = ("bootstrap", "contract.py", "config/topology.py", "xds_files.py")
_RENDERER_LIBRARIES = ("envoy-data-plane", "betterproto2", "pyyaml")
_renderer_digest: str | None = None


@dataclass(frozen=True, slots=True)
class XdsFile:
    """One rendered file: its name in the xDS directory, its version and its text."""

    name: str
    version: str
    text: str


def inputs_digest(configs: Sequence[GatewayConfig]) -> str:
    """Digest of what the files for `configs` are rendered from (configs that differ only in
    processor-only sections, such as tenants and their keys, give the same digest)."""
    seen: list[object] = []
    for config in configs:
        exclude: dict[str, Any] = dict.fromkeys(_PROCESSOR_ONLY, True)
        exclude["models"] = {"__all__": PROCESSOR_ONLY_MODEL_FIELDS}
        dumped = config.model_dump(mode="json", exclude=exclude)
        if dumped not in seen:  # an older config that renders alike adds nothing
            seen.append(dumped)
    canonical = json.dumps([_renderer(), seen], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _renderer() -> str:
    global _renderer_digest
    if _renderer_digest is None:
        digest = hashlib.sha256()
        for name in _RENDERER_SOURCES:
            path = _RENDERER / name
            for source in sorted(path.glob("*.py")) if path.is_dir() else [path]:
                digest.update(source.name.encode() + b"\0" + source.read_bytes())
        for library in _RENDERER_LIBRARIES:
            try:
                digest.update(f"{library}=={metadata.version(library)}".encode())
            except metadata.PackageNotFoundError:
                digest.update(library.encode())
        _renderer_digest = digest.hexdigest()
    return _renderer_digest


def inputs_on_disk(directory: Path) -> str | None:
    """The inputs digest every file in `directory` carries (None: a file is missing, foreign,
    or the files disagree)."""
    found = set()
    for name in XDS_FILE_NAMES:
        try:
            with (directory / name).open(encoding="utf-8") as handle:
                head = [handle.readline(), handle.readline()]
        except (OSError, UnicodeDecodeError):
            return None
        line = next((x for x in head if x.startswith(INPUTS_PREFIX)), None)
        if line is None:
            return None
        found.add(line.removeprefix(INPUTS_PREFIX).strip())
    return found.pop() if len(found) == 1 else None


def write_xds_files(directory: Path, files: Sequence[XdsFile]) -> list[str]:
    """Replace each file whose text changed by an atomic rename, in order; returns their names.

    Envoy watches `directory` for entries moved into it and then re-reads all its files, so a
    file must never be seen half-written: each is written beside its final name and renamed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file in files:
        path = directory / file.name
        try:
            if path.read_text(encoding="utf-8") == file.text:
                continue
        except (OSError, UnicodeDecodeError):
            pass
        # A unique staging name: `render-envoy` in Envoy's container and the processor may
        # write the same directory at the same time (same content).
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=directory, prefix=f".{file.name}.", delete=False
        ) as staging:
            staging.write(file.text)
        os.chmod(staging.name, 0o644)  # Envoy may run as another user; nothing here is secret
        os.replace(staging.name, path)
        written.append(file.name)
    return written
