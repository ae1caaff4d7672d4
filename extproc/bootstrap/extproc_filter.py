"""The ext_proc filter settings: the downstream filter and the per-attempt upstream filter.

Owns processing modes, timeouts, fail-open/closed, mutation rules, metadata namespaces and the
headers kept from the processor (`contract.NOT_SENT_TO_PROCESSOR*`).
"""

from __future__ import annotations

from datetime import timedelta

from envoy_data_plane.envoy.config.common.mutation_rules.v3 import HeaderMutationRules
from envoy_data_plane.envoy.config.core.v3 import GrpcService, GrpcServiceEnvoyGrpc
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    HeaderForwardingRules,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.type.matcher.v3 import ListStringMatcher, StringMatcher

from extproc.config.schema import (
    ProcessorConfig,
    ResilienceConfig,
)
from extproc.contract import (
    EXTPROC_CLUSTER,
    NOT_SENT_TO_PROCESSOR,
    NOT_SENT_TO_PROCESSOR_PREFIXES,
    UPSTREAM_TARGET_ATTRIBUTE,
)

EXTPROC_FILTER = "envoy.filters.http.ext_proc"


def ext_proc_filter(processor: ProcessorConfig, resilience: ResilienceConfig) -> ExternalProcessor:
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


def downstream_ext_proc_filter(
    processor: ProcessorConfig, resilience: ResilienceConfig
) -> ExternalProcessor:
    """ext_proc on the listener: response headers are skipped until the processor asks for them.

    Envoy answers a request it cannot parse (an HTTP/1 codec error: a bad method, header or
    framing) with a local reply that runs through the encoder filters; an ext_proc filter that
    sends response headers holds it for the processor while the connection is closed, so the
    client got no answer at all (envoy#29440). The processor's answer to request headers turns
    response headers on (`server.messages.REQUEST_HEADERS_MODE`), so every request it has seen
    is still followed to its end.
    """
    downstream = ext_proc_filter(processor, resilience)
    downstream.processing_mode.response_header_mode = ProcessingModeHeaderSendMode.SKIP
    return downstream


def upstream_ext_proc_filter(
    processor: ProcessorConfig, resilience: ResilienceConfig
) -> ExternalProcessor:
    """ext_proc in a model cluster: runs once per attempt, told which target the attempt uses.

    It is sent no request body: the processor answers the attempt's request headers with the
    body translated for its target (`CONTINUE_AND_REPLACE`), from the OpenAI body the
    downstream filter already read (`RequestRecord.attempt_body`), so an attempt costs two
    messages (request headers, response headers) instead of three.
    """
    upstream = ext_proc_filter(processor, resilience)
    upstream.request_attributes = [UPSTREAM_TARGET_ATTRIBUTE]
    upstream.processing_mode.request_body_mode = ProcessingModeBodySendMode.NONE
    return upstream
