"""Routes and retries: one route per model selected by the processor's dynamic metadata.

Owns the route table (model routes, the fail-open route, the fallback 503) and the retry policy
that moves a failed attempt to the next target.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from envoy_data_plane.envoy.config.core.v3 import DataSource
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
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.retry.priority.previous_priorities.v3 import (
    PreviousPrioritiesConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    MetadataMatcher,
    MetadataMatcherPathSegment,
    StringMatcher,
    ValueMatcher,
)
from envoy_data_plane.google.protobuf import Any

from extproc.bootstrap.common import (
    FAIL_OPEN_CLUSTER,
    LISTENER_NAME,
    header_option,
    openai_error_json,
)
from extproc.config.schema import (
    GatewayConfig,
    ResilienceConfig,
)
from extproc.config.topology import model_lead
from extproc.contract import (
    FAILED_OVER_4XX,
    GATEWAY_ERROR_HEADER,
    METADATA_NAMESPACE,
    ROUTE_CONFIG_NAME,
    ROUTE_METADATA_KEY,
)

RETRY_ON = "5xx,reset,connect-failure,retriable-status-codes"
RETRIABLE_STATUS_CODES = (429,)
RETRY_AFTER_HEADER = "retry-after"
HOST_SELECTION_RETRY_MAX_ATTEMPTS = 3
NO_ROUTE_CODE = "no_route"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def model_routes(config: GatewayConfig, route_ids: dict[str, str]) -> list[Route]:
    """One route per model, in config order, each selected by its route id in the metadata."""
    return [
        _model_route(
            route_ids[model.name],
            config.limits.default_timeout_seconds,
            config.resilience,
            lead=model_lead(config, model) is not None,
        )
        for model in config.models
    ]


def route_config(
    config: GatewayConfig, route_ids: dict[str, str], retired: Sequence[Route] = ()
) -> RouteConfiguration:
    """One route per model, then `retired` routes (models of older configs still draining after
    a reload), the fail-open route if configured, and the fallback 503."""
    routes = [*model_routes(config, route_ids), *retired]
    if config.resilience.processor_failure_open and config.resilience.fail_open_model:
        routes.append(_fail_open_route(config))
    routes.append(_fallback_route())
    return RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[
            VirtualHost(
                name=LISTENER_NAME,
                domains=["*"],
                routes=routes,
                # x-envoy-attempt-count: the lead's first attempt skips the upstream filters.
                include_request_attempt_count=True,
            )
        ],
    )


def _model_route(
    route_id: str, default_timeout: float, resilience: ResilienceConfig, lead: bool
) -> Route:
    """The route of one model; `lead`: its first attempt goes out untouched by the upstream
    filters (`bootstrap/lead.py`), so the provider statuses the gateway fails over on are
    retried as they come."""
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
            retry_policy=_retry_policy(resilience, lead),
        ),
    )


def _retry_policy(resilience: ResilienceConfig, lead: bool = False) -> RetryPolicy:
    idle = resilience.per_try_idle_timeout_seconds
    codes = sorted({*RETRIABLE_STATUS_CODES, *FAILED_OVER_4XX}) if lead else RETRIABLE_STATUS_CODES
    return RetryPolicy(
        per_try_idle_timeout=timedelta(seconds=idle) if idle is not None else None,
        retry_on=RETRY_ON,
        retriable_status_codes=list(codes),
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


def _fail_open_route(config: GatewayConfig) -> Route:
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
    body = openai_error_json(
        "no provider was selected for this request", "service_unavailable", NO_ROUTE_CODE
    )
    return Route(
        name="no_provider_selected",
        match=RouteMatch(prefix="/"),
        direct_response=DirectResponseAction(status=503, body=DataSource(inline_string=body)),
        response_headers_to_add=[
            header_option("content-type", "application/json"),
            header_option(GATEWAY_ERROR_HEADER, NO_ROUTE_CODE),
        ],
    )
