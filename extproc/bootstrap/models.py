"""The typed Envoy API models (`envoy-data-plane`) the renderer builds, imported in one place.

envoy_data_plane's generated models use a pydantic idiom deprecated since pydantic 2.12; the
warning fires once, as the classes are created on import, and is theirs to fix: it is silenced
here, for exactly these imports.
"""

from __future__ import annotations

import warnings

from pydantic.warnings import PydanticDeprecationWarning

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

__all__ = [
    "AccessLogFilter",
    "Address",
    "Admin",
    "AndFilter",
    "Any",
    "Bootstrap",
    "BootstrapStaticResources",
    "CertificateValidationContext",
    "CircuitBreakers",
    "CircuitBreakersThresholds",
    "Cluster",
    "ClusterCommonLbConfig",
    "ClusterDiscoveryType",
    "ClusterDnsLookupFamily",
    "ClusterLoadAssignment",
    "ClusterTransportSocketMatch",
    "CommonTlsContext",
    "ComparisonFilter",
    "ComparisonFilterOp",
    "DataSource",
    "DirectResponseAction",
    "Endpoint",
    "EndpointHealthCheckConfig",
    "ExpressionFilter",
    "ExtensionFilter",
    "ExternalProcessor",
    "Filter",
    "FilterChain",
    "GrpcService",
    "GrpcServiceEnvoyGrpc",
    "HeaderForwardingRules",
    "HeaderMutationRules",
    "HeaderValue",
    "HeaderValueOption",
    "HeaderValueOptionHeaderAppendAction",
    "HealthCheck",
    "HealthCheckHttpHealthCheck",
    "Http1ProtocolOptions",
    "Http2ProtocolOptions",
    "HttpConnectionManager",
    "HttpConnectionManagerCodecType",
    "HttpFilter",
    "HttpProtocolOptions",
    "HttpProtocolOptionsExplicitHttpConfig",
    "LayeredRuntime",
    "LbEndpoint",
    "ListStringMatcher",
    "Listener",
    "LocalReplyConfig",
    "LocalityLbEndpoints",
    "Metadata",
    "MetadataMatcher",
    "MetadataMatcherPathSegment",
    "MetadataOptions",
    "MetadataOptionsMetadataNamespaces",
    "Node",
    "OutlierDetection",
    "Percent",
    "Pipe",
    "PreviousHostsPredicate",
    "PreviousPrioritiesConfig",
    "ProcessingMode",
    "ProcessingModeBodySendMode",
    "ProcessingModeHeaderSendMode",
    "ResponseFlagFilter",
    "ResponseMapper",
    "RetryPolicy",
    "RetryPolicyRateLimitedRetryBackOff",
    "RetryPolicyResetHeader",
    "RetryPolicyResetHeaderFormat",
    "RetryPolicyRetryBackOff",
    "RetryPolicyRetryHostPredicate",
    "RetryPolicyRetryPriority",
    "Route",
    "RouteAction",
    "RouteConfiguration",
    "RouteMatch",
    "Router",
    "RoutingPriority",
    "RuntimeLayer",
    "RuntimeLayerAdminLayer",
    "RuntimeUInt32",
    "SocketAddress",
    "StatusCodeFilter",
    "StringMatcher",
    "Struct",
    "SubjectAltNameMatcher",
    "SubjectAltNameMatcherSanType",
    "SubstitutionFormatString",
    "TransportSocket",
    "UpstreamCodec",
    "UpstreamTlsContext",
    "ValueMatcher",
    "VirtualHost",
]
