"""Envoy's dynamic config as files: the listener (LDS), the routes (RDS) and the clusters (CDS).

Owns what goes into each file and how a file is replaced. The files are rendered from one or
more configs: the first is the one in force; the others are older configs a reload left behind,
whose routes and clusters stay until the requests they began have finished (the processor
decides when). Route ids change whenever what a model renders to changes
(`config.topology.model_route_id`), so an older config's route or cluster either is the current
one (same name, same content) or sits beside it under its own name.

Each file is a `DiscoveryResponse` whose `version_info` is a hash of its resources: Envoy
reports the version it applied (`*.version_text` stats), and identical content has an identical
version whoever rendered it (`render-envoy`, or the processor after a restart).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from betterproto2 import Message
from envoy_data_plane.envoy.config.route.v3 import Route
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryResponse
from envoy_data_plane.google.protobuf import Any

from extproc.bootstrap.clusters import model_clusters
from extproc.bootstrap.common import (
    BUFFER_HEADROOM_BYTES,
    FAIL_OPEN_CLUSTER,
    to_json_dict,
    to_yaml,
)
from extproc.bootstrap.listener import listener
from extproc.bootstrap.routes import model_routes, route_config
from extproc.bootstrap.sources import CDS_FILE, LDS_FILE, RDS_FILE
from extproc.config.schema import GatewayConfig
from extproc.config.topology import model_route_ids

_VERSION_LENGTH = 16


@dataclass(frozen=True, slots=True)
class XdsFile:
    """One rendered file: its name in the xDS directory, its version and its text."""

    name: str
    version: str
    text: str


def buffer_limit(config: GatewayConfig) -> int:
    """Envoy's per-connection buffer limit: the body limit plus headroom."""
    return config.limits.max_body_bytes + BUFFER_HEADROOM_BYTES


def xds_files(configs: Sequence[GatewayConfig]) -> tuple[XdsFile, XdsFile, XdsFile]:
    """The CDS, RDS and LDS files (in the order to write them) for `configs[0]`, plus every
    route and cluster of `configs[1:]` (older configs still draining) that it lacks."""
    current, *older = configs
    ids = model_route_ids(current)
    clusters = model_clusters(current, ids, buffer_limit(current))
    routes: list[Route] = []
    cluster_names = {c.name for c in clusters}
    route_names = {r.name for r in model_routes(current, ids)}
    for config in older:
        older_ids = model_route_ids(config)
        for cluster in model_clusters(config, older_ids, buffer_limit(config)):
            if cluster.name not in cluster_names and cluster.name != FAIL_OPEN_CLUSTER:
                clusters.append(cluster)
                cluster_names.add(cluster.name)
        for route in model_routes(config, older_ids):
            if route.name not in route_names:
                routes.append(route)
                route_names.add(route.name)
    return (
        _file(CDS_FILE, clusters),
        _file(RDS_FILE, [route_config(current, ids, retired=routes)]),
        _file(LDS_FILE, [listener(current, buffer_limit(current))]),
    )


def _file(name: str, resources: Sequence[Message]) -> XdsFile:
    packed = [to_json_dict(Any.pack(resource)) for resource in resources]
    canonical = json.dumps(packed, sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(canonical.encode()).hexdigest()[:_VERSION_LENGTH]
    response = to_json_dict(DiscoveryResponse(version_info=version))
    response["resources"] = packed
    return XdsFile(name, version, to_yaml(response))


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


__all__ = ["XdsFile", "buffer_limit", "write_xds_files", "xds_files"]
