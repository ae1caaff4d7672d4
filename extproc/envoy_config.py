"""Envoy bootstrap for the gateway, rendered from the validated gateway config.

Owns the mapping GatewayConfig -> Envoy v3 `Bootstrap` (typed `envoy_data_plane` messages, dumped as
proto-JSON/YAML for `extproc render-envoy`). It decides nothing per request and never reads
credentials: provider keys stay in the processor.

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

import ipaddress
import json
import warnings
from collections.abc import Iterable
from datetime import timedelta
from typing import Any as JsonAny
from typing import cast

import yaml
from betterproto2 import Casing
from pydantic.warnings import PydanticDeprecationWarning

from extproc.config import (
    GatewayConfig,
    HttpProtocol,
    ModelConfig,
    ProcessorConfig,
    ProviderConfig,
    ResilienceConfig,
    inline_translation,
    model_route_ids,
    target_id,
    target_priority,
)
from extproc.errors import ERROR_TYPES, NOT_SENT_REPLIES

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
        ResponseFlagFilter,
        StatusCodeFilter,
    )
    from envoy_data_plane.envoy.config.bootstrap.v3 import (
        Admin,
        Bootstrap,
        BootstrapStaticResources,
        LayeredRuntime,
        RuntimeLayer,
        RuntimeLayerAdminLayer,
    )
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
    from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutationRules
    from envoy_data_plane.envoy.config.core.v3 import (
        Address,
        DataSource,
        GrpcService,
        GrpcServiceEnvoyGrpc,
        HeaderValue,
        HeaderValueOption,
        HeaderValueOptionHeaderAppendAction,
        HealthCheck,
        HealthCheckHttpHealthCheck,
        Http1ProtocolOptions,
        Http2ProtocolOptions,
        Metadata,
        Node,
        Pipe,
        RoutingPriority,
        RuntimeUInt32,
        SocketAddress,
        SubstitutionFormatString,
        TransportSocket,
    )
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        EndpointHealthCheckConfig,
        LbEndpoint,
        LocalityLbEndpoints,
    )
    from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
    from envoy_data_plane.envoy.config.route.v3 import (
        DirectResponseAction,
        RetryPolicy,
        RetryPolicyRateLimitedRetryBackOff,
        RetryPolicyResetHeader,
        RetryPolicyResetHeaderFormat,
        RetryPolicyRetryBackOff,
        RetryPolicyRetryHostPredicate,
        RetryPolicyRetryPriority,
        Route,
        RouteAction,
        RouteConfiguration,
        RouteMatch,
        VirtualHost,
    )
    from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
    from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
        ExternalProcessor,
        HeaderForwardingRules,
        MetadataOptions,
        MetadataOptionsMetadataNamespaces,
        ProcessingMode,
        ProcessingModeBodySendMode,
        ProcessingModeHeaderSendMode,
    )
    from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
    from envoy_data_plane.envoy.extensions.filters.http.upstream_codec.v3 import UpstreamCodec
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
        HttpConnectionManager,
        HttpConnectionManagerCodecType,
        HttpFilter,
        LocalReplyConfig,
        ResponseMapper,
    )
    from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import (
        PreviousHostsPredicate,
    )
    from envoy_data_plane.envoy.extensions.retry.priority.previous_priorities.v3 import (
        PreviousPrioritiesConfig,
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
        HttpProtocolOptionsExplicitHttpConfig,
    )
    from envoy_data_plane.envoy.type.matcher.v3 import (
        ListStringMatcher,
        MetadataMatcher,
        MetadataMatcherPathSegment,
        StringMatcher,
        ValueMatcher,
    )
    from envoy_data_plane.envoy.type.v3 import Percent
    from envoy_data_plane.google.protobuf import Any, Struct

NODE_ID = "llm-gateway"
LISTENER_NAME = "gateway"
ROUTE_CONFIG_NAME = "gateway_routes"
EXTPROC_CLUSTER = "extproc"
# Dynamic metadata namespace the processor writes and routes read, and the key naming the model's
# route id (`config.model_route_ids`; also the model's cluster name).
METADATA_NAMESPACE = "gw"
ROUTE_METADATA_KEY = "route"
# Endpoint metadata (same namespace) naming the target (`config.target_id`).
TARGET_METADATA_KEY = "target"
# The upstream ext_proc filter asks for this attribute; it arrives in
# `ProcessingRequest.attributes["envoy.filters.http.ext_proc"]` under this exact key, as a string
# value holding the attempt's target id (seen on Envoy 1.40, first message of each attempt).
UPSTREAM_TARGET_ATTRIBUTE = (
    f"xds.upstream_host_metadata.filter_metadata['{METADATA_NAMESPACE}']['{TARGET_METADATA_KEY}']"
)
# Envoy health-checks each target here on the processor's admin server, `Host: <target id>`;
# 200 lets the target take traffic, 503 (breaker open) takes it out of load balancing.
HEALTH_CHECK_PATH = "/breaker/health"
HEALTH_CHECK_TIMEOUT = timedelta(seconds=1)
OUTLIER_INTERVAL = timedelta(seconds=10)
# Endpoint metadata namespace Envoy matches `transport_socket_matches` against, and our key in it.
TRANSPORT_SOCKET_MATCH_NAMESPACE = "envoy.transport_socket_match"
TLS_MATCH_KEY = "tls"
# Health checks go to the processor's plain-HTTP admin server even for https targets: their match
# criteria name no TLS match, so they use the cluster's default (plaintext) transport socket.
HEALTH_CHECK_MATCH_CRITERIA = {"gateway_health_check": True}
RETRY_ON = "5xx,reset,connect-failure,retriable-status-codes"
RETRIABLE_STATUS_CODES = (429,)
RETRY_AFTER_HEADER = "retry-after"
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 3
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
UPSTREAM_CODEC_FILTER = "envoy.filters.http.upstream_codec"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_REACHED_ON_LOOPBACK = frozenset({"0.0.0.0", "::", "localhost"})
_LOOPBACK = "127.0.0.1"
_YAML_WIDTH = 1 << 16  # keep long JSON bodies on one line


class _ProtoFieldNames:
    """A betterproto2 "casing" that keeps the proto field names, which the models already use.

    `Casing.SNAKE` re-cases them and mangles names with digits (`consecutive_5xx` becomes
    `consecutive_5_xx`, which Envoy rejects); `to_dict` only ever calls its casing on a name.
    """

    def __call__(self, name: str) -> str:
        return name


_PROTO_FIELD_NAMES = cast(Casing, _ProtoFieldNames())


def render_bootstrap(config: GatewayConfig) -> dict[str, JsonAny]:
    """Return the complete Envoy v3 Bootstrap for `config` as a proto-JSON dict (field names)."""
    data: dict[str, JsonAny] = build_bootstrap(config).to_dict(casing=_PROTO_FIELD_NAMES)
    return data


def render_yaml(config: GatewayConfig) -> str:
    """Return the Envoy bootstrap for `config` as YAML, headed by a do-not-edit comment."""
    body = yaml.safe_dump(render_bootstrap(config), sort_keys=False, width=_YAML_WIDTH)
    return GENERATED_HEADER + body


def build_bootstrap(config: GatewayConfig) -> Bootstrap:
    """Build the typed Bootstrap message for `config` (what `render_bootstrap` serialises)."""
    buffer_limit = config.limits.max_body_bytes + BUFFER_HEADROOM_BYTES
    route_ids = model_route_ids(config)
    providers = {p.name: p for p in config.providers}
    return Bootstrap(
        node=Node(id=NODE_ID, cluster=NODE_ID),
        admin=Admin(address=_socket_address(config.envoy_admin.address, config.envoy_admin.port)),
        static_resources=BootstrapStaticResources(
            listeners=[_listener(config, route_ids, buffer_limit)],
            clusters=[
                _extproc_cluster(config.processor),
                *(
                    _model_cluster(config, model, route_ids[model.name], providers, buffer_limit)
                    for model in config.models
                ),
                *_fail_open_clusters(config, route_ids, providers, buffer_limit),
            ],
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


FAIL_OPEN_CLUSTER = "fail_open"


def _fail_open_clusters(
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
    cluster = _model_cluster(config, model, route_ids[name], providers, buffer_limit)
    cluster.name = FAIL_OPEN_CLUSTER
    cluster.load_assignment.cluster_name = FAIL_OPEN_CLUSTER
    cluster.health_checks = []
    options = _model_http_options(
        config, cluster_protocol(providers[t.provider] for t in model.targets), per_attempt=False
    )
    cluster.typed_extension_protocol_options = _protocol_options(options)
    return [cluster]


# --- listener ---------------------------------------------------------------------------------


def _listener(config: GatewayConfig, route_ids: dict[str, str], buffer_limit: int) -> Listener:
    downstream_ext_proc = _ext_proc(config.processor, config.resilience)
    downstream_ext_proc.metadata_options = MetadataOptions(
        receiving_namespaces=MetadataOptionsMetadataNamespaces(untyped=[METADATA_NAMESPACE])
    )
    hcm = HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        stream_idle_timeout=STREAM_IDLE_TIMEOUT,
        # Streamed completions may run for minutes; per-route timeouts bound each request.
        request_timeout=timedelta(0),
        route_config=_route_config(config, route_ids),
        http_filters=[
            HttpFilter(name=EXTPROC_FILTER, typed_config=Any.pack(downstream_ext_proc)),
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


def _ext_proc(processor: ProcessorConfig, resilience: ResilienceConfig) -> ExternalProcessor:
    """The ext_proc filter settings shared by the downstream and the upstream filter."""
    timeout = timedelta(milliseconds=processor.message_timeout_ms)
    return ExternalProcessor(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=EXTPROC_CLUSTER), timeout=timeout
        ),
        failure_mode_allow=resilience.processor_failure_open,
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
        # `:path` and `authorization` are mutable by default; `:authority`/`host` need
        # allow_all_routing, and `x-envoy-upstream-rq-timeout-ms` (the per-request timeout the
        # processor sets) needs allow_envoy. Rejected mutations are counted, not fatal.
        mutation_rules=HeaderMutationRules(
            allow_all_routing=True, allow_envoy=True, disallow_is_error=False
        ),
        # Headers the processor never reads stay out of its messages (they are still
        # forwarded as usual): SDK telemetry costs ~5 % of the processor's and Envoy's CPU.
        forward_rules=HeaderForwardingRules(
            disallowed_headers=ListStringMatcher(
                patterns=[StringMatcher(prefix=p) for p in NOT_SENT_TO_PROCESSOR_PREFIXES]
                + [StringMatcher(exact=h) for h in NOT_SENT_TO_PROCESSOR]
            )
        ),
    )


# Request and response headers the processor never reads, kept out of its ext_proc messages.
# Reading one of these in the processor means removing it here first (it would arrive empty).
NOT_SENT_TO_PROCESSOR_PREFIXES = (
    "x-stainless-",  # OpenAI / Anthropic SDK telemetry (~11 headers per SDK request)
    "openai-",  # OpenAI response metadata (openai-organization, openai-processing-ms, ...)
    "cf-",  # Cloudflare response metadata in front of several providers
)
# (Not `accept`: the processor removes a client's `accept` when it must, see attempt.py.)
NOT_SENT_TO_PROCESSOR = (
    "user-agent",
    "set-cookie",
    "strict-transport-security",
    "alt-svc",
)


def _upstream_ext_proc(
    processor: ProcessorConfig, resilience: ResilienceConfig
) -> ExternalProcessor:
    """ext_proc in a model cluster: runs once per attempt, told which target the attempt uses."""
    upstream = _ext_proc(processor, resilience)
    upstream.request_attributes = [UPSTREAM_TARGET_ATTRIBUTE]
    return upstream


# --- routes -----------------------------------------------------------------------------------


def _route_config(config: GatewayConfig, route_ids: dict[str, str]) -> RouteConfiguration:
    routes = [
        _model_route(
            route_ids[model.name], config.limits.default_timeout_seconds, config.resilience
        )
        for model in config.models
    ]
    fail_open = config.resilience.fail_open_model
    if config.resilience.processor_failure_open and fail_open is not None:
        routes.append(_fail_open_route(route_ids[fail_open], config))
    routes.append(_fallback_route())
    return RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[VirtualHost(name=LISTENER_NAME, domains=["*"], routes=routes)],
    )


def _model_route(route_id: str, default_timeout: float, resilience: ResilienceConfig) -> Route:
    selected = MetadataMatcher(
        filter=METADATA_NAMESPACE,
        path=[MetadataMatcherPathSegment(key=ROUTE_METADATA_KEY)],
        value=ValueMatcher(string_match=StringMatcher(exact=route_id)),
    )
    return Route(
        name=f"model_{route_id}",
        match=RouteMatch(prefix="/", dynamic_metadata=[selected]),
        route=RouteAction(
            cluster=route_id,
            # Each endpoint's hostname is its provider's authority.
            auto_host_rewrite=True,
            # Overridden per request by the processor (x-envoy-upstream-rq-timeout-ms).
            timeout=timedelta(seconds=default_timeout),
            retry_policy=_retry_policy(resilience),
        ),
    )


def _retry_policy(resilience: ResilienceConfig) -> RetryPolicy:
    idle = resilience.per_try_idle_timeout_seconds
    return RetryPolicy(
        per_try_idle_timeout=timedelta(seconds=idle) if idle is not None else None,
        retry_on=RETRY_ON,
        retriable_status_codes=list(RETRIABLE_STATUS_CODES),
        num_retries=resilience.max_retries,
        retry_back_off=RetryPolicyRetryBackOff(
            base_interval=timedelta(milliseconds=resilience.retry_base_interval_ms),
            max_interval=timedelta(milliseconds=resilience.retry_max_interval_ms),
        ),
        # A 429 with Retry-After waits that long (up to the cap) instead of the back-off.
        rate_limited_retry_back_off=RetryPolicyRateLimitedRetryBackOff(
            reset_headers=[
                RetryPolicyResetHeader(
                    name=RETRY_AFTER_HEADER, format=RetryPolicyResetHeaderFormat.SECONDS
                )
            ],
            max_interval=timedelta(seconds=resilience.max_rate_limited_wait_seconds),
        ),
        # Each retry moves to the next priority (the next provider of the model's chain) ...
        retry_priority=RetryPolicyRetryPriority(
            name=PREVIOUS_PRIORITIES,
            typed_config=Any.pack(PreviousPrioritiesConfig(update_frequency=1)),
        ),
        # ... and to a host not tried yet within a priority of several targets.
        retry_host_predicate=[
            RetryPolicyRetryHostPredicate(
                name=PREVIOUS_HOSTS, typed_config=Any.pack(PreviousHostsPredicate())
            )
        ],
        host_selection_retry_max_attempts=HOST_SELECTION_RETRY_MAX_ATTEMPTS,
    )


def _fail_open_route(route_id: str, config: GatewayConfig) -> Route:
    # Reached only when the processor failed open (no metadata was set): the request goes
    # unprocessed to the fail-open model's targets, with the normal retry policy.
    return Route(
        name="processor_failed_open",
        match=RouteMatch(prefix="/v1/"),
        route=RouteAction(
            cluster=FAIL_OPEN_CLUSTER,
            auto_host_rewrite=True,
            timeout=timedelta(seconds=config.limits.default_timeout_seconds),
            retry_policy=_retry_policy(config.resilience),
        ),
    )


def _fallback_route() -> Route:
    # Only reached when the processor neither answered nor selected a model: a bug or a processor
    # that failed open, not a client error. The marker header keeps local_reply_config from
    # replacing the body.
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
# Last: a catch-all for Envoy's own 500s.
_LOCAL_REPLY_500 = (500, "internal_error", "internal gateway error")


def _local_reply_config() -> LocalReplyConfig:
    """Rewrite Envoy's own local replies; leave replies that carry the marker header untouched.

    Rewritten replies get the marker too: the downstream filter then knows them for Envoy's
    (inline attempts must not take them for a provider's answer, see attempt.py).
    """
    ext_proc_failed = _cel_filter(
        f"response.code_details.startsWith('{EXT_PROC_ERROR_DETAILS_PREFIX}')"
    )
    mappers = [
        # First match wins, and a mapper that sets nothing leaves the reply as it is.
        ResponseMapper(filter=_cel_filter(f"'{GATEWAY_ERROR_HEADER}' in response.headers")),
        _error_mapper(
            AccessLogFilter(and_filter=AndFilter(filters=[_status_filter(504), ext_proc_failed])),
            "the gateway processor did not answer in time",
            "timeout_error",
            "processor_timeout",
        ),
        _error_mapper(
            ext_proc_failed,
            "the gateway processor is unavailable",
            "service_unavailable",
            "processor_unavailable",
            status=503,
        ),
    ]
    for flag, (code, message) in NOT_SENT_REPLIES.items():
        mappers.append(_error_mapper(_flag_filter(flag), message, ERROR_TYPES[503], code))
    for status, code, message in (*_LOCAL_REPLY_ERRORS, _LOCAL_REPLY_500):
        mappers.append(_error_mapper(_status_filter(status), message, ERROR_TYPES[status], code))
    return LocalReplyConfig(mappers=mappers)


def _error_mapper(
    match: AccessLogFilter, message: str, error_type: str, code: str, status: int | None = None
) -> ResponseMapper:
    mapper = ResponseMapper(
        filter=match,
        body_format_override=_json_body(message, error_type, code),
        headers_to_add=[_header(GATEWAY_ERROR_HEADER, code)],
    )
    if status is not None:
        mapper.status_code = status
    return mapper


def _cel_filter(expression: str) -> AccessLogFilter:
    # AccessLogFilter.header_filter only sees request headers; a CEL expression also sees the
    # local reply's response headers (an ImmediateResponse's headers are set before mappers run)
    # and its response code details.
    cel = ExpressionFilter(expression=expression)
    return AccessLogFilter(
        extension_filter=ExtensionFilter(name=CEL_FILTER, typed_config=Any.pack(cel))
    )


def _flag_filter(flag: str) -> AccessLogFilter:
    return AccessLogFilter(response_flag_filter=ResponseFlagFilter(flags=[flag]))


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
        load_assignment=ClusterLoadAssignment(
            cluster_name=EXTPROC_CLUSTER,
            endpoints=[
                LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=address))])
            ],
        ),
        typed_extension_protocol_options=_protocol_options(
            HttpProtocolOptions(
                explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                    http2_protocol_options=Http2ProtocolOptions()
                )
            )
        ),
    )


def _model_cluster(
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
    any_dns = any(not _is_ip(p.host) for p in targets)
    inline = inline_translation(len(targets))
    return Cluster(
        name=route_id,
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
        typed_extension_protocol_options=_protocol_options(
            _model_http_options(config, protocol, per_attempt=not inline)
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
    health_address = _socket_address(
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
                    address=_socket_address(provider.host, provider.port),
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
    config: GatewayConfig, protocol: HttpProtocol, per_attempt: bool
) -> HttpProtocolOptions:
    """HTTP settings of a model cluster; `per_attempt`: run the upstream ext_proc filter."""
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
    return HttpProtocolOptions(
        explicit_http_config=explicit,
        http_filters=[
            HttpFilter(
                name=EXTPROC_FILTER,
                typed_config=Any.pack(_upstream_ext_proc(config.processor, config.resilience)),
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
            alpn_protocols=_alpn(protocol),
        ),
    )
    if not is_ip:  # SNI carries host names only (RFC 6066)
        context.sni = host
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=Any.pack(context))


# --- small helpers ----------------------------------------------------------------------------


def _protocol_options(options: HttpProtocolOptions) -> dict[str, Any]:
    return {HTTP_PROTOCOL_OPTIONS: Any.pack(options)}


def _reachable(bind_address: str) -> str:
    """Where Envoy reaches a server bound to `bind_address` (wildcards mean loopback)."""
    return _LOOPBACK if bind_address in _REACHED_ON_LOOPBACK else bind_address


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
    "HEALTH_CHECK_PATH",
    "METADATA_NAMESPACE",
    "ROUTE_METADATA_KEY",
    "TARGET_METADATA_KEY",
    "UPSTREAM_TARGET_ATTRIBUTE",
    "build_bootstrap",
    "cluster_protocol",
    "render_bootstrap",
    "render_yaml",
]
