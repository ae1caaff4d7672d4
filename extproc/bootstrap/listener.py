"""The listener applications call: HTTP connection manager, ext_proc filter, router.

Owns the listener and its filter chain; the filter settings are in `extproc_filter.py`, the
routes in `routes.py` (from RDS, or inline in the static form), the error rewriting in
`local_replies.py`.
"""

from __future__ import annotations

from datetime import timedelta

from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import RouteConfiguration
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    MetadataOptions,
    MetadataOptionsMetadataNamespaces,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
    Rds,
)
from envoy_data_plane.google.protobuf import Any

from extproc.bootstrap.common import LISTENER_NAME, socket_address
from extproc.bootstrap.extproc_filter import EXTPROC_FILTER, downstream_ext_proc_filter
from extproc.bootstrap.local_replies import local_reply_config
from extproc.bootstrap.sources import RDS_FILE, file_source
from extproc.bootstrap.tracing import hcm_tracing
from extproc.config.schema import (
    GatewayConfig,
)
from extproc.contract import METADATA_NAMESPACE, ROUTE_CONFIG_NAME

STREAM_IDLE_TIMEOUT = timedelta(seconds=300)
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"


def listener(
    config: GatewayConfig, buffer_limit: int, inline_routes: RouteConfiguration | None = None
) -> Listener:
    """The listener applications call, with its connection manager and filter chain.

    Its routes come from RDS (the file `RDS_FILE` in `reload.xds_directory`), so a change of
    routes leaves the listener and its connections alone; `inline_routes` embeds them instead
    (the static form, for `envoy --mode validate`).
    """
    downstream_ext_proc = downstream_ext_proc_filter(config.processor, config.resilience)
    downstream_ext_proc.metadata_options = MetadataOptions(
        receiving_namespaces=MetadataOptionsMetadataNamespaces(untyped=[METADATA_NAMESPACE])
    )
    hcm = HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        stream_idle_timeout=STREAM_IDLE_TIMEOUT,
        # Streamed completions may run for minutes; per-route timeouts bound each request.
        request_timeout=timedelta(0),
        route_config=inline_routes,
        rds=None
        if inline_routes is not None
        else Rds(
            route_config_name=ROUTE_CONFIG_NAME,
            config_source=file_source(config.reload.xds_directory, RDS_FILE),
        ),
        http_filters=[
            HttpFilter(name=EXTPROC_FILTER, typed_config=Any.pack(downstream_ext_proc)),
            HttpFilter(name=ROUTER_FILTER, typed_config=Any.pack(Router())),
        ],
        local_reply_config=local_reply_config(),
        tracing=hcm_tracing(config.telemetry.tracing),
    )
    return Listener(
        name=LISTENER_NAME,
        address=socket_address(config.listener.address, config.listener.port),
        per_connection_buffer_limit_bytes=buffer_limit,
        filter_chains=[FilterChain(filters=[Filter(name=HCM_FILTER, typed_config=Any.pack(hcm))])],
    )
