"""Envoy's config for the gateway, rendered from the validated gateway config.

Owns the mapping GatewayConfig -> Envoy v3 config (typed `envoy_data_plane` messages, dumped as
proto-JSON/YAML for `extproc render-envoy` and the processor). It decides nothing per request and
never reads credentials: provider keys stay in the processor.

Two parts: the bootstrap (`build_bootstrap`) holds only what cannot change without restarting
Envoy — node, admin, the processor's cluster, the runtime layers — and tells Envoy to read its
listener, routes and clusters from files in `reload.xds_directory` (`xds.py`), which the
processor rewrites on a reload. `build_static_bootstrap` is the same config in one static file,
for `envoy --mode validate` (which never reads dynamic files) and tests.

Topology (same-request failover across providers):

- The downstream ext_proc filter validates and authenticates the request and names its model by
  writing dynamic metadata `gw.route = <route id>` (`config.model_route_ids`); one route per model
  matches that metadata and sends the request to the model's cluster.
- One cluster per model; its endpoints are the model's targets, grouped into Envoy priorities by
  `config.target_priority` (renumbered 0..k, as Envoy wants) and weighted by `target.weight`. Each
  endpoint carries `gw.target = <target id>` (`config.target_id`) as metadata.
- The route's retry policy retries 5xx, resets, connect failures and 429s (honouring
  `Retry-After`), moving to another host and, with `previous_priorities`, to the next priority.
- In each cluster of a model with several targets, ext_proc also runs as an upstream filter, once
  per attempt; it receives the attempt's target id as the request attribute
  `UPSTREAM_TARGET_ATTRIBUTE` and translates the request for that target's provider. A one-target
  model's request is translated by the downstream filter (`config.inline_translation`).
- Breakers: Envoy health-checks every endpoint against the processor's admin server
  (`GET /breaker/health`, `Host: <target id>`, answered 200 or 503), so an open breaker takes the
  target out of load balancing; for models with several targets, outlier detection ejects targets
  on consecutive 5xx as a backstop.
  The panic threshold is 0: with no healthy target the request fails with 503.

TLS is per endpoint (`transport_socket_matches` keyed by provider), so one model may mix https and
plain-http providers; the health checks use no TLS match and go out in plaintext. The cluster's
HTTP protocol is one choice for all its endpoints (`cluster_protocol`): HTTP/2 when every target's
provider asks for `http2`, else HTTP/1.1 (also for `auto`: Envoy's ALPN-negotiating `auto_config`
rejects a cluster with any plaintext transport socket, and the health checks need one).

With `resilience.processor_failure_open` true and the processor down, requests pass both ext_proc
filters unprocessed; with no metadata set, the `processor_failed_open` route sends `/v1/...`
requests to `resilience.fail_open_model`'s cluster (keyless OpenAI-compatible backends only).
Only a processor failing between the downstream and the upstream phase of one request lets that
attempt go out untranslated and without provider credentials (the upstream filter fails open too).
"""

from __future__ import annotations

import warnings
from typing import Any as JsonAny

from pydantic.warnings import PydanticDeprecationWarning

from extproc.config.schema import GatewayConfig
from extproc.config.topology import model_route_ids

# envoy_data_plane's generated models use a pydantic idiom deprecated since pydantic 2.12; the
# warning fires once, as the classes are created on import, and is theirs to fix. Every module of
# this package imports them; importing any of them runs this first, so all load silenced here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=PydanticDeprecationWarning)
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapDynamicResources,
        BootstrapStaticResources,
        LayeredRuntime,
        RuntimeLayer,
        RuntimeLayerAdminLayer,
    )
    from envoy_data_plane.envoy.config.core.v3 import Node
    from envoy_data_plane.google.protobuf import Struct

    from extproc.bootstrap.clusters import cluster_protocol, extproc_cluster, model_clusters
    from extproc.bootstrap.common import (
        GENERATED_HEADER,
        socket_address,
        to_json_dict,
        to_yaml,
    )
    from extproc.bootstrap.listener import listener
    from extproc.bootstrap.routes import route_config
    from extproc.bootstrap.sources import CDS_FILE, LDS_FILE, RDS_FILE, file_source
    from extproc.bootstrap.xds import XdsFile, buffer_limit, write_xds_files, xds_files
    from extproc.config.schema import BUFFER_HEADROOM_BYTES

NODE_ID = "llm-gateway"


def render_bootstrap(config: GatewayConfig) -> dict[str, JsonAny]:
    """Return Envoy's v3 Bootstrap for `config` as a proto-JSON dict (field names)."""
    return to_json_dict(build_bootstrap(config))


def render_yaml(config: GatewayConfig) -> str:
    """Return Envoy's bootstrap for `config` as YAML, headed by a do-not-edit comment."""
    return to_yaml(render_bootstrap(config))


def render_static_bootstrap(config: GatewayConfig) -> dict[str, JsonAny]:
    """Return the static form (`build_static_bootstrap`) as a proto-JSON dict."""
    return to_json_dict(build_static_bootstrap(config))


def render_static_yaml(config: GatewayConfig) -> str:
    """Return the static form as YAML, headed by a do-not-edit comment."""
    return to_yaml(render_static_bootstrap(config))


def build_bootstrap(config: GatewayConfig) -> Bootstrap:
    """The typed Bootstrap: listener and clusters from LDS/CDS files Envoy watches."""
    directory = config.reload.xds_directory
    return Bootstrap(
        node=Node(id=NODE_ID, cluster=NODE_ID),
        admin=Admin(address=socket_address(config.envoy_admin.address, config.envoy_admin.port)),
        static_resources=BootstrapStaticResources(clusters=[extproc_cluster(config.processor)]),
        dynamic_resources=BootstrapDynamicResources(
            lds_config=file_source(directory, LDS_FILE),
            cds_config=file_source(directory, CDS_FILE),
        ),
        layered_runtime=_layered_runtime(),
    )


def build_static_bootstrap(config: GatewayConfig) -> Bootstrap:
    """The same listener, routes and clusters as static resources of one Bootstrap."""
    route_ids = model_route_ids(config)
    limit = buffer_limit(config)
    return Bootstrap(
        node=Node(id=NODE_ID, cluster=NODE_ID),
        admin=Admin(address=socket_address(config.envoy_admin.address, config.envoy_admin.port)),
        static_resources=BootstrapStaticResources(
            listeners=[listener(config, limit, inline_routes=route_config(config, route_ids))],
            clusters=[extproc_cluster(config.processor), *model_clusters(config, route_ids, limit)],
        ),
        layered_runtime=_layered_runtime(),
    )


# Envoy runtime flags the gateway depends on (a static layer), plus an admin layer so an operator
# can still change runtime values through Envoy's admin `/runtime_modify`.
RUNTIME_FLAGS: dict[str, JsonAny] = {
    # Envoy half-closes each ext_proc stream and waits (up to 1 s) for the processor's status
    # instead of resetting the stream when the HTTP request ends. Without it, a reset that wins
    # the race against the processor's closing status makes grpc.aio leak ~80 bytes of native
    # memory per call (grpc/grpc#43360): the processor's RSS grew ~50 bytes per request.
    "envoy.reloadable_features.ext_proc_graceful_grpc_close": True,
}


def _layered_runtime() -> LayeredRuntime:
    return LayeredRuntime(
        layers=[
            RuntimeLayer(name="gateway", static_layer=Struct.from_dict(RUNTIME_FLAGS)),
            RuntimeLayer(name="admin", admin_layer=RuntimeLayerAdminLayer()),
        ]
    )


__all__ = [
    "BUFFER_HEADROOM_BYTES",
    "CDS_FILE",
    "GENERATED_HEADER",
    "LDS_FILE",
    "RDS_FILE",
    "RUNTIME_FLAGS",
    "XdsFile",
    "build_bootstrap",
    "build_static_bootstrap",
    "cluster_protocol",
    "render_bootstrap",
    "render_static_bootstrap",
    "render_static_yaml",
    "render_yaml",
    "write_xds_files",
    "xds_files",
]
