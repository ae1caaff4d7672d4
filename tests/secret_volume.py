"""A directory laid out and updated as the kubelet does for a mounted Secret or ConfigMap.

The kubelet's atomic writer keeps each version in a timestamped directory
(`..2026_12_02_10_00_00.123`), points the symlink `..data` at the current one, and makes each
key a symlink `NAME -> ..data/NAME`. An update writes a new timestamped directory, swaps
`..data` by renaming a fresh symlink over it (atomic), adds and removes the key symlinks, and
deletes the old directory. Shared by the unit and end-to-end tests of key files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class SecretVolume:
    """A Secret volume in `directory`: `update` puts a new version of its keys in place."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.versions = 0

    def path(self, name: str) -> Path:
        """Where the processor reads key `name` (the symlink into `..data`)."""
        return self.directory / name

    def update(self, files: dict[str, str]) -> Path:
        """Swap in a new version holding exactly `files` (name -> content); its directory."""
        self.versions += 1
        version = f"..2026_12_02_10_00_{self.versions:02d}.{self.versions:03d}"
        fresh = self.directory / version
        fresh.mkdir()
        for name, content in files.items():
            (fresh / name).write_text(content, encoding="utf-8")
        data = self.directory / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        staging = self.directory / "..data_tmp"
        staging.symlink_to(version)
        os.rename(staging, data)  # the atomic swap
        for name in files:
            link = self.directory / name
            if not link.is_symlink():
                link.symlink_to(Path("..data") / name)
        for link in self.directory.iterdir():
            if link.is_symlink() and not link.name.startswith("..") and link.name not in files:
                link.unlink()
        if old is not None:
            shutil.rmtree(self.directory / old)
        return fresh
