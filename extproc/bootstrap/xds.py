"""Envoy's dynamic config as files: the listener (LDS), the routes (RDS) and the clusters (CDS).

Owns what goes into each file (`extproc.xds_files` replaces them on disk). The files are
rendered from one or more configs: the first is the one in force; the others are older configs
a reload left behind, whose routes and clusters stay until the requests they began have finished
(the processor decides when). Route ids change whenever what a model renders to changes
(`config.topology.model_route_id`), so an older config's route or cluster either is the current
one (same name, same content) or sits beside it under its own name.

Each file is a `DiscoveryResponse` whose `version_info` is a hash of its resources: Envoy
reports the version it applied (`*.version_text` stats), and identical content has an identical
version whoever rendered it (`render-envoy`, or the processor after a restart). Its second line
is a comment with the digest of its inputs (`xds_files.inputs_digest`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from betterproto2 import Message
from envoy_data_plane.envoy.config.route.v3 import Route
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryResponse
from envoy_data_plane.google.protobuf import Any

from extproc.bootstrap.clusters import model_clusters
from extproc.bootstrap.common import (
    FAIL_OPEN_CLUSTER,
    to_json_dict,
    to_yaml,
)
from extproc.bootstrap.listener import listener
from extproc.bootstrap.routes import model_routes, route_config
from extproc.bootstrap.sources import CDS_FILE, LDS_FILE, RDS_FILE
from extproc.config.schema import GatewayConfig
from extproc.config.topology import model_route_ids
from extproc.xds_files import INPUTS_PREFIX, XdsFile, inputs_digest, write_xds_files

_VERSION_LENGTH = 16


def buffer_limit(config: GatewayConfig) -> int:
    """Envoy's per-connection buffer limit: the body limit plus headroom."""
    return config.limits.buffer_bytes


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
    inputs = inputs_digest(configs)
    return (
        _file(CDS_FILE, clusters, inputs),
        _file(RDS_FILE, [route_config(current, ids, retired=routes)], inputs),
        _file(LDS_FILE, [listener(current, buffer_limit(current))], inputs),
    )


def _file(name: str, resources: Sequence[Message], inputs: str) -> XdsFile:
    packed = [to_json_dict(Any.pack(resource)) for resource in resources]
    canonical = json.dumps(packed, sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(canonical.encode()).hexdigest()[:_VERSION_LENGTH]
    response = to_json_dict(DiscoveryResponse(version_info=version))
    response["resources"] = packed
    header, body = to_yaml(response).split("\n", 1)
    return XdsFile(name, version, f"{header}\n{INPUTS_PREFIX}{inputs}\n{body}")


__all__ = ["XdsFile", "buffer_limit", "write_xds_files", "xds_files"]
