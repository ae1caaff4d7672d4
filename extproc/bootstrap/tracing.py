"""Envoy's tracing: the connection manager's OpenTelemetry tracer and its collector cluster.

Rendered only when `telemetry.tracing.enabled`; without it the bootstrap has no tracing block
and no collector cluster at all. Envoy continues a client's `traceparent`, samples new requests
at the configured ratio, spawns a span per upstream attempt and, for each ext_proc call, a
child span whose context it sends the processor in the gRPC metadata (the processor's spans
hang from it, `extproc.telemetry.tracing`).
"""

from __future__ import annotations

from datetime import timedelta

from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import (
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Http2ProtocolOptions,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManagerTracing,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any

from extproc.bootstrap.common import is_ip, protocol_options, socket_address
from extproc.config.schema import TracingConfig

COLLECTOR_CLUSTER = "opentelemetry_collector"
OPENTELEMETRY_TRACER = "envoy.tracers.opentelemetry"
EXPORT_TIMEOUT = timedelta(seconds=2)
COLLECTOR_CONNECT_TIMEOUT = timedelta(seconds=1)


def envoy_service_name(tracing: TracingConfig) -> str:
    """The `service.name` of Envoy's spans (the processor's is `tracing.service_name`)."""
    return f"{tracing.service_name}-envoy"


def hcm_tracing(tracing: TracingConfig) -> HttpConnectionManagerTracing | None:
    """The connection manager's `tracing` block (None when tracing is off)."""
    if not tracing.enabled:
        return None
    tracer = OpenTelemetryConfig(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=COLLECTOR_CLUSTER), timeout=EXPORT_TIMEOUT
        ),
        service_name=envoy_service_name(tracing),
    )
    return HttpConnectionManagerTracing(
        # New traces (and continued ones whose client asked for sampling) at this ratio; a
        # client's `traceparent` that says "not sampled" is honoured.
        random_sampling=Percent(value=tracing.sampling_ratio * 100),
        # A span per upstream attempt: failover shows as one span per try, with its status.
        spawn_upstream_span=True,
        provider=TracingHttp(name=OPENTELEMETRY_TRACER, typed_config=Any.pack(tracer)),
    )


def collector_clusters(tracing: TracingConfig) -> list[Cluster]:
    """The OTLP gRPC collector's cluster (HTTP/2), or none when tracing is off."""
    if not tracing.enabled:
        return []
    host, port = tracing.host_port
    return [
        Cluster(
            name=COLLECTOR_CLUSTER,
            type=ClusterDiscoveryType.STATIC if is_ip(host) else ClusterDiscoveryType.STRICT_DNS,
            connect_timeout=COLLECTOR_CONNECT_TIMEOUT,
            load_assignment=ClusterLoadAssignment(
                cluster_name=COLLECTOR_CLUSTER,
                endpoints=[
                    LocalityLbEndpoints(
                        lb_endpoints=[
                            LbEndpoint(endpoint=Endpoint(address=socket_address(host, port)))
                        ]
                    )
                ],
            ),
            typed_extension_protocol_options=protocol_options(
                HttpProtocolOptions(
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=Http2ProtocolOptions()
                    )
                )
            ),
        )
    ]
