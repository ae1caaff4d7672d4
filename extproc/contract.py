"""Every name the processor and the rendered Envoy config must agree on, defined once.

Both sides import these: the renderer (`extproc.bootstrap`) writes them into Envoy's config, the
processor reads or writes them per request. Changing one here changes both; no copy exists.
Plain constants only: nothing here imports request-time or render-time code.
"""

from __future__ import annotations

from typing import Final

# -- dynamic metadata -----------------------------------------------------------------------
# The namespace the processor writes (listed in the downstream filter's
# `metadata_options.receiving_namespaces.untyped`) and the routes match on.
METADATA_NAMESPACE: Final = "gw"
# Key naming the model's route id (`config.topology.model_route_ids`, also its cluster's name);
# one route per model matches on it.
ROUTE_METADATA_KEY: Final = "route"
# Key carrying the client's model name (for Envoy's access logs).
MODEL_METADATA_KEY: Final = "model"
# Endpoint metadata key (same namespace) naming the target (`config.topology.target_id`).
TARGET_METADATA_KEY: Final = "target"

# -- attributes ------------------------------------------------------------------------------
# The upstream ext_proc filter asks for this attribute; it arrives in
# `ProcessingRequest.attributes["envoy.filters.http.ext_proc"]` under this exact key, as a string
# holding the attempt's target id (seen on Envoy 1.40, first message of each attempt).
UPSTREAM_TARGET_ATTRIBUTE: Final = (
    f"xds.upstream_host_metadata.filter_metadata['{METADATA_NAMESPACE}']['{TARGET_METADATA_KEY}']"
)

# -- headers ---------------------------------------------------------------------------------
# Envoy's router numbers each attempt of a request in this header (the virtual host's
# `include_request_attempt_count`): "1" for the first, which a lead target's model sends
# without the per-attempt filters (`bootstrap/lead.py`).
ATTEMPT_COUNT_HEADER: Final = "x-envoy-attempt-count"

# -- retries ---------------------------------------------------------------------------------
# The provider 4xx statuses the gateway answers with a 5xx (`providers.errors.provider_error`:
# 401/403 as `provider_auth_failed`, 408 as `provider_timeout`, the rest as `provider_error`),
# so they fail over to the next target. An upstream attempt rewrites them before Envoy's router
# decides on a retry; a lead target's first attempt has no upstream filter, so its route lists
# them as retriable instead (`tests/unit/test_envoy_config.py` checks the two agree).
FAILED_OVER_4XX: Final = (
    401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 414, 415, 416, 417, 418,
    421, 423, 424, 425, 426, 428, 431, 451,
)  # fmt: skip
# Marks an answer whose body is already an OpenAI-style error (value: its error code): the
# processor's ImmediateResponses, the fallback route, and every local reply Envoy's
# `local_reply_config` rewrote. The mappers leave marked replies alone; an inline attempt knows
# marked responses for Envoy's own, not a provider's.
GATEWAY_ERROR_HEADER: Final = "x-gateway-error"
# Set on responses by the attempt that produced them (the upstream filter for models with
# several targets), read by the downstream filter to label the request's metrics.
PROVIDER_HEADER: Final = "x-gateway-provider"
# The router's per-request timeouts the processor sets; the filters' mutation rules must allow
# `x-envoy-*` headers (`allow_envoy`), or Envoy drops them silently.
UPSTREAM_TIMEOUT_HEADER: Final = "x-envoy-upstream-rq-timeout-ms"
PER_TRY_TIMEOUT_HEADER: Final = "x-envoy-upstream-rq-per-try-timeout-ms"

# Request and response headers the processor never reads, kept out of its ext_proc messages
# (`forward_rules.disallowed_headers`; Envoy still forwards them). Reading one of these in the
# processor means removing it here first: it would arrive missing.
NOT_SENT_TO_PROCESSOR_PREFIXES: Final = (
    "x-stainless-",  # OpenAI / Anthropic SDK telemetry (~11 headers per SDK request)
    "openai-",  # OpenAI response metadata (openai-organization, openai-processing-ms, ...)
    "cf-",  # Cloudflare response metadata in front of several providers
)
# (Not `accept`: the processor removes a client's `accept` when it must.)
NOT_SENT_TO_PROCESSOR: Final = (
    "user-agent",
    "set-cookie",
    "strict-transport-security",
    "alt-svc",
)

# -- Envoy's dynamic config --------------------------------------------------------------------
# Files in `reload.xds_directory`: the renderer writes them, the processor asks Envoy (by the
# stats of each subscription) which version of each it applied.
LDS_FILE: Final = "lds.yaml"
CDS_FILE: Final = "cds.yaml"
RDS_FILE: Final = "rds.yaml"
# The listener's route configuration: the RDS subscription's stats are
# `http.<LISTENER_STAT_PREFIX>.rds.<route config>.*`.
ROUTE_CONFIG_NAME: Final = "gateway_routes"

# -- clusters and paths ----------------------------------------------------------------------
# The listener's name and its connection manager's stats prefix: the drain reads
# `http.<prefix>.downstream_rq_active` from Envoy's admin to know when in-flight requests ended.
LISTENER_STAT_PREFIX: Final = "gateway"
# The cluster through which Envoy reaches the processor.
EXTPROC_CLUSTER: Final = "extproc"
# Envoy health-checks each target here on the processor's admin server, `Host: <target id>`;
# 200 lets the target take traffic, 503 (breaker open) takes it out of load balancing.
HEALTH_CHECK_PATH: Final = "/breaker/health"

# -- Envoy's own replies ----------------------------------------------------------------------
# Envoy's 503s that mean no request reached a provider, by response flag: the code and message
# the local-reply mappers give them. An inline attempt that sees one of these codes does not
# count it against the target's breaker.
NOT_SENT_REPLIES: Final[dict[str, tuple[str, str]]] = {
    "UH": ("no_healthy_provider", "no provider of this model is healthy right now"),
    "UO": ("capacity_exceeded", "too many requests to this model are in flight; retry later"),
}
NOT_SENT_CODES: Final = frozenset(code for code, _ in NOT_SENT_REPLIES.values())
