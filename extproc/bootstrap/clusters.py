"""Clusters: the processor's, and one per model with an endpoint per target.

Owns endpoints and priorities, per-endpoint TLS, the breaker health checks answered by the
processor, outlier detection, capacity limits and the per-attempt upstream filter chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from betterproto2 import Message
from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterCommonLbConfig,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
    ClusterTransportSocketMatch,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HealthCheck,
    HealthCheckHttpHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    Metadata,
    Pipe,
    RoutingPriority,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    EndpointHealthCheckConfig,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.extensions.filters.http.buffer.v3 import Buffer
from envoy_data_plane.envoy.extensions.filters.http.upstream_codec.v3 import UpstreamCodec
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpFilter
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any, Struct

from extproc.bootstrap.common import FAIL_OPEN_CLUSTER, is_ip, protocol_options, socket_address
from extproc.bootstrap.extproc_filter import EXTPROC_FILTER, upstream_ext_proc_filter
from extproc.bootstrap.lead import skipped_for_lead
from extproc.bootstrap.tracing import collector_clusters
from extproc.config.schema import (
    MAX_IN_FLIGHT_LIMIT,
    GatewayConfig,
    HttpProtocol,
    ModelConfig,
    ProcessorConfig,
    ProviderConfig,
    ResilienceConfig,
)
from extproc.config.topology import (
    inline_translation,
    model_lead,
    model_stat_name,
    target_id,
    target_priority,
)
from extproc.contract import (
    EXTPROC_CLUSTER,
    HEALTH_CHECK_PATH,
    METADATA_NAMESPACE,
    TARGET_METADATA_KEY,
)

HEALTH_CHECK_TIMEOUT = timedelta(seconds=1)
OUTLIER_INTERVAL = timedelta(seconds=10)
# Endpoint metadata namespace Envoy matches `transport_socket_matches` against, and our key in it.
TRANSPORT_SOCKET_MATCH_NAMESPACE = "envoy.transport_socket_match"
TLS_MATCH_KEY = "tls"
# Health checks go to the processor's plain-HTTP admin server even for https targets: their match
# criteria name no TLS match, so they use the cluster's default (plaintext) transport socket.
HEALTH_CHECK_MATCH_CRITERIA = {"gateway_health_check": True}
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
EXTPROC_CONNECT_TIMEOUT = timedelta(seconds=1)
UPSTREAM_CODEC_FILTER = "envoy.filters.http.upstream_codec"
BUFFER_FILTER = "envoy.filters.http.buffer"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
_REACHED_ON_LOOPBACK = frozenset({"0.0.0.0", "::", "localhost"})
_LOOPBACK = "127.0.0.1"


def model_clusters(
    config: GatewayConfig, route_ids: dict[str, str], buffer_limit: int
) -> list[Cluster]:
    """One cluster per model (named by its route id), then the fail-open cluster and the trace
    collector's, if any."""
    providers = {p.name: p for p in config.providers}
    return [
        *(
            model_cluster(config, model, route_ids[model.name], providers, buffer_limit)
            for model in config.models
        ),
        *fail_open_clusters(config, route_ids, providers, buffer_limit),
        *collector_clusters(config.telemetry.tracing),
    ]


def fail_open_clusters(
    config: GatewayConfig,
    route_ids: dict[str, str],
    providers: dict[str, ProviderConfig],
    buffer_limit: int,
) -> list[Cluster]:
    """The fail-open model's targets without the processor: no health checks, no upstream
    ext_proc (both need the processor, which is down whenever this cluster is used)."""
    name = config.resilience.fail_open_model
    if not config.resilience.processor_failure_open or name is None:
        return []
    model = next(m for m in config.models if m.name == name)
    cluster = model_cluster(config, model, route_ids[name], providers, buffer_limit)
    cluster.name = FAIL_OPEN_CLUSTER
    cluster.alt_stat_name = FAIL_OPEN_CLUSTER
    cluster.load_assignment.cluster_name = FAIL_OPEN_CLUSTER
    cluster.health_checks = []
    options = _model_http_options(
        config, cluster_protocol(providers[t.provider] for t in model.targets), per_attempt=False
    )
    cluster.typed_extension_protocol_options = protocol_options(options)
    return [cluster]


# Streams Envoy opens to the processor at once: above what `processor.max_in_flight` admits.
EXTPROC_MAX_STREAMS = 4 * MAX_IN_FLIGHT_LIMIT


def extproc_cluster(processor: ProcessorConfig) -> Cluster:
    """The cluster through which Envoy reaches the processor: HTTP/2, unix socket or TCP."""
    if processor.unix_socket is not None:
        address = Address(pipe=Pipe(path=str(processor.unix_socket)))
        discovery = ClusterDiscoveryType.STATIC
    else:
        assert processor.tcp_address is not None  # ProcessorConfig guarantees one of the two
        host, _, port = processor.tcp_address.rpartition(":")
        host = host.strip("[]")
        address = socket_address(host, int(port))
        discovery = ClusterDiscoveryType.STATIC if is_ip(host) else ClusterDiscoveryType.STRICT_DNS
    return Cluster(
        name=EXTPROC_CLUSTER,
        type=discovery,
        connect_timeout=EXTPROC_CONNECT_TIMEOUT,
        load_assignment=ClusterLoadAssignment(
            cluster_name=EXTPROC_CLUSTER,
            endpoints=[
                LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=address))])
            ],
        ),
        typed_extension_protocol_options=protocol_options(
            HttpProtocolOptions(
                explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                    http2_protocol_options=Http2ProtocolOptions()
                )
            )
        ),
        # Envoy's default (1024 streams) would refuse streams before the processor's own
        # `max_in_flight` does, and without an OpenAI-style answer.
        circuit_breakers=CircuitBreakers(
            thresholds=[
                CircuitBreakersThresholds(
                    priority=RoutingPriority.DEFAULT,
                    max_pending_requests=EXTPROC_MAX_STREAMS,
                    max_requests=EXTPROC_MAX_STREAMS,
                )
            ]
        ),
    )


def model_cluster(
    config: GatewayConfig,
    model: ModelConfig,
    route_id: str,
    providers: dict[str, ProviderConfig],
    buffer_limit: int,
) -> Cluster:
    """The model's cluster: one endpoint per target, grouped into priorities."""
    targets = [providers[t.provider] for t in model.targets]
    distinct: dict[str, ProviderConfig] = {p.name: p for p in targets}
    resilience = config.resilience
    protocol = cluster_protocol(targets)
    any_dns = any(not is_ip(p.host) for p in targets)
    inline = inline_translation(len(targets))
    lead = model_lead(config, model)
    return Cluster(
        name=route_id,
        # The route id changes when the model's config does; its stats keep the model's name.
        alt_stat_name=model_stat_name(model.name),
        type=ClusterDiscoveryType.STRICT_DNS if any_dns else ClusterDiscoveryType.STATIC,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=timedelta(seconds=max(p.connect_timeout_seconds for p in targets)),
        per_connection_buffer_limit_bytes=buffer_limit,
        common_lb_config=ClusterCommonLbConfig(
            # No panic routing: with every target unhealthy the request fails (503) instead of
            # going to a target whose breaker is open.
            healthy_panic_threshold=Percent(value=0),
            # Apply health changes (breaker opened or closed) at once, not batched for 1 s.
            update_merge_window=timedelta(0),
        ),
        load_assignment=_model_load_assignment(config, model, route_id, targets),
        transport_socket_matches=[
            ClusterTransportSocketMatch(
                name=f"tls_{p.name}",
                match=Struct.from_dict({TLS_MATCH_KEY: p.name}),
                transport_socket=_upstream_tls(p, protocol),
            )
            for p in distinct.values()
            if p.scheme == "https"
        ],
        health_checks=[_breaker_health_check(resilience)],
        outlier_detection=None if inline else _outlier_detection(resilience),
        circuit_breakers=CircuitBreakers(
            thresholds=[
                CircuitBreakersThresholds(
                    priority=RoutingPriority.DEFAULT,
                    max_pending_requests=resilience.max_pending_requests,
                    max_requests=resilience.max_requests,
                    max_retries=max(3, resilience.max_requests // 10),
                )
            ]
        ),
        typed_extension_protocol_options=protocol_options(
            _model_http_options(
                config,
                protocol,
                per_attempt=not inline,
                lead=target_id(route_id, lead) if lead is not None else None,
            )
        ),
    )


def _outlier_detection(resilience: ResilienceConfig) -> OutlierDetection:
    """Per-try ejection, a backstop for models with several targets.

    Not for one-target models: their breaker (fed once per request by the downstream filter)
    is the only mechanism, so clients get its fast 503 with Retry-After, `/breakers` tells the
    truth, and it recovers through half-open probes. Ejecting their only endpoint would answer
    Envoy's 503 instead, while the breaker still read closed.
    """
    return OutlierDetection(
        consecutive_5xx=resilience.breaker_consecutive_failures,
        consecutive_gateway_failure=resilience.breaker_consecutive_failures,
        interval=OUTLIER_INTERVAL,
        base_ejection_time=timedelta(seconds=resilience.breaker_open_seconds),
        max_ejection_percent=100,
    )


def _model_load_assignment(
    config: GatewayConfig, model: ModelConfig, route_id: str, targets: list[ProviderConfig]
) -> ClusterLoadAssignment:
    # Envoy wants priorities contiguous from 0: renumber the distinct configured ones in order.
    configured = [target_priority(t, i) for i, t in enumerate(model.targets)]
    level = {value: rank for rank, value in enumerate(sorted(set(configured)))}
    groups: list[list[LbEndpoint]] = [[] for _ in level]
    health_address = socket_address(
        _reachable(config.processor.admin_address), config.processor.admin_port
    )
    for index, (target, provider) in enumerate(zip(model.targets, targets, strict=True)):
        tid = target_id(route_id, index)
        filter_metadata = {METADATA_NAMESPACE: Struct.from_dict({TARGET_METADATA_KEY: tid})}
        if provider.scheme == "https":
            filter_metadata[TRANSPORT_SOCKET_MATCH_NAMESPACE] = Struct.from_dict(
                {TLS_MATCH_KEY: provider.name}
            )
        groups[level[configured[index]]].append(
            LbEndpoint(
                endpoint=Endpoint(
                    address=socket_address(provider.host, provider.port),
                    # auto_host_rewrite sends this as :authority.
                    hostname=provider.authority,
                    health_check_config=EndpointHealthCheckConfig(
                        hostname=tid, address=health_address
                    ),
                ),
                load_balancing_weight=target.weight,
                metadata=Metadata(filter_metadata=filter_metadata),
            )
        )
    return ClusterLoadAssignment(
        cluster_name=route_id,
        endpoints=[
            LocalityLbEndpoints(priority=rank, lb_endpoints=group)
            for rank, group in enumerate(groups)
        ],
    )


def _breaker_health_check(resilience: ResilienceConfig) -> HealthCheck:
    interval = timedelta(milliseconds=resilience.health_check_interval_ms)
    return HealthCheck(
        timeout=HEALTH_CHECK_TIMEOUT,
        interval=interval,
        unhealthy_interval=interval,
        no_traffic_interval=interval,
        no_traffic_healthy_interval=interval,
        unhealthy_threshold=1,
        healthy_threshold=1,
        http_health_check=HealthCheckHttpHealthCheck(path=HEALTH_CHECK_PATH),
        transport_socket_match_criteria=Struct.from_dict(HEALTH_CHECK_MATCH_CRITERIA),
    )


def _model_http_options(
    config: GatewayConfig, protocol: HttpProtocol, per_attempt: bool, lead: str | None = None
) -> HttpProtocolOptions:
    """HTTP settings of a model cluster; `per_attempt`: run the upstream ext_proc filter,
    except for the first attempt when it goes to the `lead` target (`bootstrap/lead.py`)."""
    if protocol is HttpProtocol.HTTP2:
        explicit = HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    else:
        explicit = HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        )
    if not per_attempt:
        return HttpProtocolOptions(explicit_http_config=explicit)
    # The ext_proc answer that replaces the body drops `content-length` (Envoy's
    # CONTINUE_AND_REPLACE); buffering the (already buffered) body puts it back, so providers
    # get a sized body, not a chunked one.
    filters: list[tuple[str, Message]] = [
        (EXTPROC_FILTER, upstream_ext_proc_filter(config.processor, config.resilience)),
        (BUFFER_FILTER, Buffer(max_request_bytes=config.limits.buffer_bytes)),
    ]
    return HttpProtocolOptions(
        explicit_http_config=explicit,
        http_filters=[
            *(
                HttpFilter(name=name, typed_config=Any.pack(settings))
                if lead is None
                else skipped_for_lead(name, settings, lead)
                for name, settings in filters
            ),
            HttpFilter(name=UPSTREAM_CODEC_FILTER, typed_config=Any.pack(UpstreamCodec())),
        ],
    )


def cluster_protocol(providers: Iterable[ProviderConfig]) -> HttpProtocol:
    """The one HTTP protocol a model cluster speaks to all its targets: HTTP2 or HTTP1.

    HTTP/2 only when every target's provider asks for it, else HTTP/1.1, which every provider
    speaks. Envoy's ALPN choice (`auto_config`) is not available: it requires every transport
    socket of the cluster to support ALPN, and the breaker health checks need a plaintext one.
    """
    if all(p.http_protocol is HttpProtocol.HTTP2 for p in providers):
        return HttpProtocol.HTTP2
    return HttpProtocol.HTTP1


def _alpn(protocol: HttpProtocol) -> list[str]:
    return ["h2"] if protocol is HttpProtocol.HTTP2 else ["http/1.1"]


def _upstream_tls(provider: ProviderConfig, protocol: HttpProtocol) -> TransportSocket:
    host = provider.host
    literal = is_ip(host)
    # Envoy checks the chain against trusted_ca but checks the name only if told to.
    san = SubjectAltNameMatcher(
        san_type=SubjectAltNameMatcherSanType.IP_ADDRESS
        if literal
        else SubjectAltNameMatcherSanType.DNS,
        matcher=StringMatcher(exact=host),
    )
    context = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=CA_BUNDLE),
                match_typed_subject_alt_names=[san],
            ),
            alpn_protocols=_alpn(protocol),
        ),
    )
    if not literal:  # SNI carries host names only (RFC 6066)
        context.sni = host
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=Any.pack(context))


def _reachable(bind_address: str) -> str:
    """Where Envoy reaches a server bound to `bind_address` (wildcards mean loopback)."""
    return _LOOPBACK if bind_address in _REACHED_ON_LOOPBACK else bind_address
