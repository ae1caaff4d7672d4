"""Where Envoy reads its dynamic config: files in one directory it watches (LDS, CDS, RDS).

Owns the file names and the `ConfigSource` pointing at one of them. Envoy re-reads every file of
the directory whenever an entry is moved into it, so each file is replaced by an atomic rename
(`xds.write_xds_files`), never edited in place.
"""

from __future__ import annotations

from pathlib import Path

from envoy_data_plane.envoy.config.core.v3 import (
    ApiVersion,
    ConfigSource,
    PathConfigSource,
    WatchedDirectory,
)

from extproc.contract import CDS_FILE, LDS_FILE, RDS_FILE

__all__ = ["CDS_FILE", "LDS_FILE", "RDS_FILE", "file_source"]


def file_source(directory: Path, name: str) -> ConfigSource:
    """Envoy reads `directory/name` and re-reads it when anything is moved into `directory`."""
    return ConfigSource(
        path_config_source=PathConfigSource(
            path=str(directory / name), watched_directory=WatchedDirectory(path=str(directory))
        ),
        resource_api_version=ApiVersion.V3,
    )
