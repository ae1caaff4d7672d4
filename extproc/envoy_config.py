"""Envoy bootstrap for the gateway, rendered from the validated gateway config.

Owns the mapping GatewayConfig -> Envoy v3 `Bootstrap` (typed `envoy_data_plane` messages, dumped as
proto-JSON/YAML for `extproc render-envoy`). It decides nothing per request and never reads
credentials: provider keys stay in the processor.
"""

from __future__ import annotations

import ipaddress
import json
import warnings
from datetime import timedelta
from typing import Any as JsonAny

import yaml
from betterproto2 import Casing
from pydantic.warnings import PydanticDeprecationWarning

from extproc.config import GatewayConfig, HttpProtocol, ProcessorConfig, ProviderConfig
from extproc.errors import ERROR_TYPES

# envoy_data_plane's generated models use a pydantic idiom deprecated since pydantic 2.12; the
# warning fires once, as the classes are created on import, and is theirs to fix.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=PydanticDeprecationWarning)
    from envoy_data_plane.envoy.config.accesslog.v3 import (
        AccessLogFilter,
        AndFilter,
        ComparisonFilter,
        ComparisonFilterOp,
        ExtensionFilter,
        StatusCodeFilter,
    )
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapStaticResources,
    )
    from envoy_data_plane.envoy.config.cluster.v3 import (
        Cluster,
        ClusterDiscoveryType,
        ClusterDnsLookupFamily,
    )
    from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutationRules
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        DataSource,
        GrpcService,
        GrpcServiceEnvoyGrpc,
        HeaderValue,
        HeaderValueOption,
        HeaderValueOptionHeaderAppendAction,
        Http1ProtocolOptions,
        Http2ProtocolOptions,
        Node,
        Pipe,
        RuntimeUInt32,
        SocketAddress,
        SubstitutionFormatString,
        TransportSocket,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        DirectResponseAction,
        Route,
        RouteAction,
        RouteConfiguration,
        RouteMatch,
        VirtualHost,
    )
    from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
    from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
        ExternalProcessor,
        MetadataOptions,
        MetadataOptionsMetadataNamespaces,
        ProcessingMode,
        ProcessingModeBodySendMode,
        ProcessingModeHeaderSendMode,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpConnectionManagerCodecType,
        HttpFilter,
        LocalReplyConfig,
        ResponseMapper,
    )
    from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
        CertificateValidationContext,
        CommonTlsContext,
        SubjectAltNameMatcher,
        SubjectAltNameMatcherSanType,
        UpstreamTlsContext,
    )
    from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
        HttpProtocolOptions,
        HttpProtocolOptionsAutoHttpConfig,
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.envoy.type.matcher.v3 import (
        MetadataMatcher,
        MetadataMatcherPathSegment,
        StringMatcher,
        ValueMatcher,
    )
    from envoy_data_plane.google.protobuf import Any

NODE_ID = "llm-gateway"
LISTENER_NAME = "gateway"
ROUTE_CONFIG_NAME = "gateway_routes"
EXTPROC_CLUSTER = "extproc"
# Dynamic metadata namespace the processor writes and routes read; key naming the provider.
METADATA_NAMESPACE = "gw"
PROVIDER_METADATA_KEY = "provider"
# Response header (any value; the processor puts its error code there) marking a local reply whose
# body is already an OpenAI-style error: the processor's ImmediateResponses and the fallback route.
# local_reply_config leaves those alone. Same name as `extproc.pipeline.ORIGIN_HEADER`.
GATEWAY_ERROR_HEADER = "x-gateway-error"
NO_ROUTE_CODE = "no_route"
# The ext_proc filter's own failures (processor unreachable, gRPC error, bad message) are local
# replies whose response code details start with this prefix; they default to status 500, and a
# per-message timeout answers 504.
EXT_PROC_ERROR_DETAILS_PREFIX = "ext_proc_error_"
# Headroom above max_body_bytes so a body at the limit still fits Envoy's buffers and reaches
# the processor, which rejects anything larger with its own error.
BUFFER_HEADROOM_BYTES = 1024 * 1024
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STREAM_IDLE_TIMEOUT = timedelta(seconds=300)
EXTPROC_CONNECT_TIMEOUT = timedelta(seconds=1)
GENERATED_HEADER = (
    "# Generated by `extproc render-envoy` from the gateway config; do not edit by hand.\n"
)

EXTPROC_FILTER = "envoy.filters.http.ext_proc"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
_YAML_WIDTH = 1 << 16  # keep long JSON bodies on one line


def render_bootstrap(config: GatewayConfig) -> dict[str, JsonAny]:
    """Return the complete Envoy v3 Bootstrap for `config` as a proto-JSON dict (snake_case)."""
    data: dict[str, JsonAny] = build_bootstrap(config).to_dict(casing=Casing.SNAKE)
    return data


def render_yaml(config: GatewayConfig) -> str:
    """Return the Envoy bootstrap for `config` as YAML, headed by a do-not-edit comment."""
    body = yaml.safe_dump(render_bootstrap(config), sort_keys=False, width=_YAML_WIDTH)
    return GENERATED_HEADER + body


def build_bootstrap(config: GatewayConfig) -> Bootstrap:
    """Build the typed Bootstrap message for `config` (what `render_bootstrap` serialises)."""
    buffer_limit = config.limits.max_body_bytes + BUFFER_HEADROOM_BYTES
    return Bootstrap(
        node=Node(id=NODE_ID, cluster=NODE_ID),
        admin=Admin(address=_socket_address(config.envoy_admin.address, config.envoy_admin.port)),
        static_resources=BootstrapStaticResources(
            listeners=[_listener(config, buffer_limit)],
            clusters=[
                _extproc_cluster(config.processor),
                *(_provider_cluster(p, buffer_limit) for p in config.providers),
            ],
        ),
    )


# --- listener ---------------------------------------------------------------------------------


def _listener(config: GatewayConfig, buffer_limit: int) -> Listener:
    hcm = HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        stream_idle_timeout=STREAM_IDLE_TIMEOUT,
        # Streamed completions may run for minutes; per-route timeouts bound each provider.
        request_timeout=timedelta(0),
        route_config=_route_config(config.providers, config.limits.default_timeout_seconds),
        http_filters=[
            HttpFilter(name=EXTPROC_FILTER, typed_config=Any.pack(_ext_proc(config.processor))),
            HttpFilter(name=ROUTER_FILTER, typed_config=Any.pack(Router())),
        ],
        local_reply_config=_local_reply_config(),
    )
    return Listener(
        name=LISTENER_NAME,
        address=_socket_address(config.listener.address, config.listener.port),
        per_connection_buffer_limit_bytes=buffer_limit,
        filter_chains=[FilterChain(filters=[Filter(name=HCM_FILTER, typed_config=Any.pack(hcm))])],
    )


def _ext_proc(processor: ProcessorConfig) -> ExternalProcessor:
    timeout = timedelta(milliseconds=processor.message_timeout_ms)
    return ExternalProcessor(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=EXTPROC_CLUSTER), timeout=timeout
        ),
        failure_mode_allow=False,
        message_timeout=timeout,
        max_message_timeout=timeout,
        allow_mode_override=True,
        processing_mode=ProcessingMode(
            request_header_mode=ProcessingModeHeaderSendMode.SEND,
            request_body_mode=ProcessingModeBodySendMode.BUFFERED,
            response_header_mode=ProcessingModeHeaderSendMode.SEND,
            response_body_mode=ProcessingModeBodySendMode.NONE,
            request_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
            response_trailer_mode=ProcessingModeHeaderSendMode.SKIP,
        ),
        metadata_options=MetadataOptions(
            receiving_namespaces=MetadataOptionsMetadataNamespaces(untyped=[METADATA_NAMESPACE])
        ),
        # `:path` and `authorization` are mutable by default; `:authority`/`host` need
        # allow_all_routing, and `x-envoy-upstream-rq-timeout-ms` (the per-request timeout the
        # processor sets) needs allow_envoy. Rejected mutations are counted, not fatal.
        mutation_rules=HeaderMutationRules(
            allow_all_routing=True, allow_envoy=True, disallow_is_error=False
        ),
    )


# --- routes -----------------------------------------------------------------------------------


def _route_config(providers: list[ProviderConfig], default_timeout: float) -> RouteConfiguration:
    routes = [_provider_route(p, default_timeout) for p in providers]
    routes.append(_fallback_route())
    return RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[VirtualHost(name=LISTENER_NAME, domains=["*"], routes=routes)],
    )


def _provider_route(provider: ProviderConfig, default_timeout: float) -> Route:
    selected = MetadataMatcher(
        filter=METADATA_NAMESPACE,
        path=[MetadataMatcherPathSegment(key=PROVIDER_METADATA_KEY)],
        value=ValueMatcher(string_match=StringMatcher(exact=provider.name)),
    )
    return Route(
        name=f"provider_{provider.name}",
        match=RouteMatch(prefix="/", dynamic_metadata=[selected]),
        route=RouteAction(
            cluster=provider.cluster_name,
            # Overridden per request by the processor (x-envoy-upstream-rq-timeout-ms).
            timeout=timedelta(seconds=provider.timeout_seconds or default_timeout),
            host_rewrite_literal=provider.authority,
        ),
    )


def _fallback_route() -> Route:
    # Only reached when the processor neither answered nor selected a provider: a bug, not a
    # client error. The marker header keeps local_reply_config from replacing the body.
    body = _openai_error(
        "no provider was selected for this request", "service_unavailable", NO_ROUTE_CODE
    )
    return Route(
        name="no_provider_selected",
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(status=503, body=DataSource(inline_string=body)),
        response_headers_to_add=[
            _header("content-type", "application/json"),
            _header(GATEWAY_ERROR_HEADER, NO_ROUTE_CODE),
        ],
    )


# --- local replies ----------------------------------------------------------------------------

# Envoy's own local replies (status, error type, error code, message), rewritten to OpenAI-style
# JSON. Each status appears once; the processor-specific mappers come before these.
_LOCAL_REPLY_ERRORS: tuple[tuple[int, str, str], ...] = (
    (413, "payload_too_large", "request body is too large"),
    (504, "provider_timeout", "the provider did not answer in time"),
    (408, "request_timeout", "the request was not received in time"),
    (503, "service_unavailable", "the provider is unavailable"),
    (502, "provider_error", "the provider returned an invalid response"),
    (404, "not_found", "not found"),
)


def _local_reply_config() -> LocalReplyConfig:
    """Rewrite Envoy's own local replies; leave replies that carry the marker header untouched."""
    ext_proc_failed = _cel_filter(
        f"response.code_details.startsWith('{EXT_PROC_ERROR_DETAILS_PREFIX}')"
    )
    mappers = [
        # First match wins, and a mapper that sets nothing leaves the reply as it is.
        ResponseMapper(filter=_cel_filter(f"'{GATEWAY_ERROR_HEADER}' in response.headers")),
        ResponseMapper(
            filter=AccessLogFilter(
                and_filter=AndFilter(filters=[_status_filter(504), ext_proc_failed])
            ),
            body_format_override=_json_body(
                "the gateway processor did not answer in time", "timeout_error", "processor_timeout"
            ),
        ),
        ResponseMapper(
            filter=ext_proc_failed,
            status_code=503,
            body_format_override=_json_body(
                "the gateway processor is unavailable",
                "service_unavailable",
                "processor_unavailable",
            ),
        ),
    ]
    for status, code, message in _LOCAL_REPLY_ERRORS:
        mappers.append(
            ResponseMapper(
                filter=_status_filter(status),
                body_format_override=_json_body(message, ERROR_TYPES[status], code),
            )
        )
    mappers.append(
        ResponseMapper(
            filter=_status_filter(500),
            body_format_override=_json_body(
                "internal gateway error", "server_error", "internal_error"
            ),
        )
    )
    return LocalReplyConfig(mappers=mappers)


def _cel_filter(expression: str) -> AccessLogFilter:
    # AccessLogFilter.header_filter only sees request headers; a CEL expression also sees the
    # local reply's response headers (an ImmediateResponse's headers are set before mappers run)
    # and its response code details.
    cel = ExpressionFilter(expression=expression)
    return AccessLogFilter(
        extension_filter=ExtensionFilter(name=CEL_FILTER, typed_config=Any.pack(cel))
    )


def _status_filter(status: int) -> AccessLogFilter:
    return AccessLogFilter(
        status_code_filter=StatusCodeFilter(
            comparison=ComparisonFilter(
                op=ComparisonFilterOp.EQ,
                value=RuntimeUInt32(
                    default_value=status, runtime_key=f"gateway.local_reply.status_{status}"
                ),
            )
        )
    )


def _json_body(message: str, error_type: str, code: str) -> SubstitutionFormatString:
    body = _openai_error(message, error_type, code)
    # The body is a fixed text format: a '%' would start a command operator.
    assert "%" not in body, body
    return SubstitutionFormatString(
        text_format_source=DataSource(inline_string=body), content_type="application/json"
    )


def _openai_error(message: str, error_type: str, code: str) -> str:
    error = {"message": message, "type": error_type, "param": None, "code": code}
    return json.dumps({"error": error}, separators=(",", ":"))


# --- clusters ---------------------------------------------------------------------------------


def _extproc_cluster(processor: ProcessorConfig) -> Cluster:
    if processor.unix_socket is not None:
        address = Address(pipe=Pipe(path=str(processor.unix_socket)))
        discovery = ClusterDiscoveryType.STATIC
    else:
        assert processor.tcp_address is not None  # ProcessorConfig guarantees one of the two
        host, _, port = processor.tcp_address.rpartition(":")
        host = host.strip("[]")
        address = _socket_address(host, int(port))
        discovery = ClusterDiscoveryType.STATIC if _is_ip(host) else ClusterDiscoveryType.STRICT_DNS
    return Cluster(
        name=EXTPROC_CLUSTER,
        type=discovery,
        connect_timeout=EXTPROC_CONNECT_TIMEOUT,
        load_assignment=_load_assignment(EXTPROC_CLUSTER, address),
        typed_extension_protocol_options=_protocol_options(
            HttpProtocolOptions(
                explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                    http2_protocol_options=Http2ProtocolOptions()
                )
            )
        ),
    )


def _provider_cluster(provider: ProviderConfig, buffer_limit: int) -> Cluster:
    is_ip = _is_ip(provider.host)
    cluster = Cluster(
        name=provider.cluster_name,
        type=ClusterDiscoveryType.STATIC if is_ip else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=timedelta(seconds=provider.connect_timeout_seconds),
        per_connection_buffer_limit_bytes=buffer_limit,
        load_assignment=_load_assignment(
            provider.cluster_name, _socket_address(provider.host, provider.port)
        ),
        typed_extension_protocol_options=_protocol_options(_provider_http_options(provider)),
    )
    if not is_ip:
        cluster.dns_lookup_family = ClusterDnsLookupFamily.V4_PREFERRED
    if provider.scheme == "https":
        cluster.transport_socket = _upstream_tls(provider)
    return cluster


def _provider_http_options(provider: ProviderConfig) -> HttpProtocolOptions:
    protocol = provider.http_protocol
    if protocol is HttpProtocol.AUTO and provider.scheme == "https":
        return HttpProtocolOptions(
            auto_config=HttpProtocolOptionsAutoHttpConfig(
                http_protocol_options=Http1ProtocolOptions(),
                http2_protocol_options=Http2ProtocolOptions(),
            )
        )
    if protocol is HttpProtocol.HTTP2:
        explicit = HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    else:  # HTTP1, or AUTO over plain http (no ALPN to negotiate with)
        explicit = HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        )
    return HttpProtocolOptions(explicit_http_config=explicit)


def _alpn(provider: ProviderConfig) -> list[str]:
    if provider.http_protocol is HttpProtocol.HTTP2:
        return ["h2"]
    if provider.http_protocol is HttpProtocol.HTTP1:
        return ["http/1.1"]
    return ["h2", "http/1.1"]


def _upstream_tls(provider: ProviderConfig) -> TransportSocket:
    host = provider.host
    is_ip = _is_ip(host)
    # Envoy checks the chain against trusted_ca but checks the name only if told to.
    san = SubjectAltNameMatcher(
        san_type=SubjectAltNameMatcherSanType.IP_ADDRESS
        if is_ip
        else SubjectAltNameMatcherSanType.DNS,
        matcher=StringMatcher(exact=host),
    )
    context = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=CA_BUNDLE),
                match_typed_subject_alt_names=[san],
            ),
            alpn_protocols=_alpn(provider),
        ),
    )
    if not is_ip:  # SNI carries host names only (RFC 6066)
        context.sni = host
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=Any.pack(context))


# --- small helpers ----------------------------------------------------------------------------


def _protocol_options(options: HttpProtocolOptions) -> dict[str, Any]:
    return {HTTP_PROTOCOL_OPTIONS: Any.pack(options)}


def _load_assignment(cluster_name: str, address: Address) -> ClusterLoadAssignment:
    return ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[
            LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=address))])
        ],
    )


def _socket_address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _header(name: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(
        header=HeaderValue(key=name, value=value),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = [
    "GATEWAY_ERROR_HEADER",
    "METADATA_NAMESPACE",
    "PROVIDER_METADATA_KEY",
    "build_bootstrap",
    "render_bootstrap",
    "render_yaml",
]
