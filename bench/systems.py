"""What the benchmark starts, and the scenarios (`Target`s) those processes serve.

The gateway is one `extproc.dev.stack.GatewayStack` (the fake provider as its own process, the
processor at log level WARNING, its Envoy) on ONE config holding every benchmarked model. Plain
Envoy (listener -> router -> one static cluster, no ext_proc) and the floor (the same Envoy plus
an ext_proc filter answered by `floor_processor.py`) are built here on the stack's primitives.
Everything started is tracked by the caller's `ProcessGroup`. Measuring is not done here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from bench.progress import log
from extproc.bootstrap import RUNTIME_FLAGS
from extproc.decisions.auth import hash_key
from extproc.dev.redis_server import RedisServer
from extproc.dev.stack import (
    FakeProcess,
    GatewayStack,
    ProcessGroup,
    free_port,
    free_ports,
    loopback_sections,
)

ROOT = Path(__file__).resolve().parent.parent
FLOOR_PROCESSOR = ROOT / "bench" / "floor_processor.py"

CLIENT_KEY = "sk-bench-client"
RBAC_KEY = "sk-bench-rbac-client"
RBAC_UNLIMITED_KEY = "sk-bench-rbac-unlimited-client"
NO_POLICIES_KEY = "sk-bench-rbac-no-policies-client"
# The all-features tenant's built-in policies (allowing or modifying every bench request).
POLICIES: list[dict[str, Any]] = [
    {"policy": "prompt_guard", "options": {"email": "redact", "card": "redact", "phone": "redact"}},
    {"policy": "max_tokens", "options": {"cap": 1024}},
    {"policy": "system_prompt", "options": {"text": "You are the benchmark's assistant."}},
    {"policy": "tags", "options": {"tags": {"app": "bench"}}},
]
UPSTREAM_ENV = {"BENCH_OPENAI_KEY": "sk-bench-upstream", "BENCH_ANTHROPIC_KEY": "sk-ant-bench"}
STREAM_EVENTS = 200
# ~200 tokens of 4 characters: each of the 200 stream events carries 4 characters.
REPLY = ("lorem ipsum dolor sit amet " * 30)[:800]

MODEL_PASSTHROUGH = "bench-passthrough"
MODEL_ANTHROPIC = "bench-anthropic"
MODEL_ALL = "bench-all"
MODEL_ALL_UPSTREAM = "bench-all-upstream"
# MODEL_ALL again, with no limits and no prices: for the all-features row without governance.
MODEL_ALL_UNLIMITED = "bench-all-unlimited"
# The pass-through model's target with the response cache on (requests at temperature 0).
MODEL_CACHED = "bench-cached"

PLAIN = "plain-envoy"
PASSTHROUGH = "gateway-passthrough"
ANTHROPIC = "gateway-anthropic"
# All features, with limits (RPM, TPM, concurrency per tenant, key, model, tenant x model), a
# daily spend budget and prices, kept in the processor's memory.
ALL_FEATURES = "gateway-all-features"
# The same request on a second processor and Envoy whose limits live in the bench's own
# redis-server; and on the first processor from a tenant, to a model, that no limit applies to:
# what governance costs, in memory and on Redis, by difference.
ALL_FEATURES_REDIS = "gateway-all-features, limits on Redis"
ALL_FEATURES_UNLIMITED = "gateway-all-features, no limits"
# The all-features request from a tenant with the same limits but none of the policies (prompt
# guard, max_tokens cap, tags, a system prompt): what the policies cost, by difference.
ALL_FEATURES_NO_POLICIES = "gateway-all-features, no policies"
# A deterministic pass-through request answered from the response cache (after the first).
CACHE_HIT = "gateway-cache-hit"
# The same pass-through request on processors with less telemetry: what usage accounting
# (reading the answer for its tokens) and the access log cost, by difference.
PASSTHROUGH_UNREAD = "gateway-passthrough, usage accounting off"
PASSTHROUGH_QUIET = "gateway-passthrough, accounting and access log off"
# The all-features request on a processor and Envoy with tracing on (every request sampled,
# exported to a do-nothing collector): what tracing costs, by difference.
ALL_FEATURES_TRACED = "gateway-all-features, tracing on"
ANTHROPIC_REFERENCE = "plain-envoy, Anthropic wire (reference)"
# Envoy + a do-nothing Python ext_proc server (bench/floor_processor.py): the floor.
FLOOR = "floor: Envoy + empty Python ext_proc"


# --- configurations --------------------------------------------------------------------------


def gateway_config(fake: str, workdir: Path) -> dict[str, Any]:
    """ONE gateway config serving every gateway scenario from the same fake.

    Governance (in memory) applies to the all-features tenant and model only. Its limits are
    real rules, checked and settled on every request, but far above what the bench sends: it
    never gets a 429, a 1 MB prompt (~260 000 tokens) included.
    """
    check = {"path": "/models", "interval_seconds": 1}
    limits = {
        "requests_per_minute": 10_000_000,
        "tokens_per_minute": 10_000_000_000,
        "concurrent_requests": 10_000,
    }
    price = {"input_per_million": 2.5, "output_per_million": 10.0}
    config = loopback_sections(workdir)
    config["processor"]["shutdown_grace_seconds"] = 2
    return {
        **config,
        "auth": {"enabled": True},
        "providers": [
            {
                "name": "p-openai",
                "type": "openai",
                "base_url": f"{fake}/v1",
                "api_key_env": "BENCH_OPENAI_KEY",
            },
            {
                "name": "p-anthropic",
                "type": "anthropic",
                "base_url": f"{fake}/anthropic/v1",
                "api_key_env": "BENCH_ANTHROPIC_KEY",
            },
            # All features: two health-checked providers, a cross-provider failover chain.
            {
                "name": "p-primary",
                "type": "openai",
                "base_url": f"{fake}/v1",
                "api_key_env": "BENCH_OPENAI_KEY",
                "health_check": check,
            },
            {
                "name": "p-secondary",
                "type": "anthropic",
                "base_url": f"{fake}/anthropic/v1",
                "api_key_env": "BENCH_ANTHROPIC_KEY",
                "health_check": check,
            },
        ],
        "models": [
            # Client model == upstream model: the body is forwarded byte for byte.
            {
                "name": MODEL_PASSTHROUGH,
                "targets": [{"provider": "p-openai", "model": MODEL_PASSTHROUGH}],
            },
            {
                "name": MODEL_ANTHROPIC,
                "targets": [{"provider": "p-anthropic", "model": "claude-bench"}],
            },
            # Model rewrite (body re-serialized), failover to another provider type, prices,
            # a limit on the model across tenants.
            {
                "name": MODEL_ALL,
                "targets": [
                    {"provider": "p-primary", "model": MODEL_ALL_UPSTREAM, "price": price},
                    {"provider": "p-secondary", "model": "claude-bench", "price": price},
                ],
                "limits": limits,
            },
            {
                "name": MODEL_CACHED,
                "targets": [{"provider": "p-openai", "model": MODEL_PASSTHROUGH}],
                "cache": True,
            },
            # The same without governance: no limits and no prices.
            {
                "name": MODEL_ALL_UNLIMITED,
                "targets": [
                    {"provider": "p-primary", "model": MODEL_ALL_UPSTREAM},
                    {"provider": "p-secondary", "model": "claude-bench"},
                ],
            },
        ],
        "tenants": [
            {"name": "bench", "api_key_sha256": [hash_key(CLIENT_KEY)]},
            # RBAC and every kind of limit: tenant, key, tenant x model, a daily spend budget.
            {
                "name": "bench-rbac",
                "keys": [{"sha256": hash_key(RBAC_KEY), "id": "bench-rbac-key", "limits": limits}],
                "allowed_models": [MODEL_PASSTHROUGH, MODEL_ALL],
                "limits": limits,
                "model_limits": {MODEL_ALL: limits},
                "budgets": [{"limit": 1e12, "unit": "currency", "period": "day"}],
                "policies": POLICIES,
            },
            # The same limits, no policies.
            {
                "name": "bench-rbac-no-policies",
                "keys": [
                    {
                        "sha256": hash_key(NO_POLICIES_KEY),
                        "id": "bench-no-policies-key",
                        "limits": limits,
                    }
                ],
                "allowed_models": [MODEL_PASSTHROUGH, MODEL_ALL],
                "limits": limits,
                "model_limits": {MODEL_ALL: limits},
                "budgets": [{"limit": 1e12, "unit": "currency", "period": "day"}],
            },
            # RBAC alone: no limit applies to this tenant's requests to MODEL_ALL_UNLIMITED.
            {
                "name": "bench-rbac-unlimited",
                "api_key_sha256": [hash_key(RBAC_UNLIMITED_KEY)],
                "allowed_models": [MODEL_PASSTHROUGH, MODEL_ALL_UNLIMITED],
            },
        ],
        "governance": {"backend": "memory"},
    }


def lean_config(fake: str, workdir: Path, access_log: bool) -> dict[str, Any]:
    """The pass-through model alone, usage accounting off (and the access log, if asked)."""
    config = gateway_config(fake, workdir)
    config["providers"] = [p for p in config["providers"] if p["name"] == "p-openai"]
    config["models"] = [m for m in config["models"] if m["name"] == MODEL_PASSTHROUGH]
    config["tenants"] = [t for t in config["tenants"] if t["name"] == "bench"]
    config["telemetry"] = {"usage_accounting": False, "access_log": {"enabled": access_log}}
    return config


def plain_bootstrap(
    listen_port: int,
    admin_port: int,
    fake_port: int,
    ext_proc_socket: Path | None = None,
    processing_mode: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal Envoy: listener -> router -> one STATIC cluster (the fake).

    With `ext_proc_socket`, an ext_proc filter before the router sends the gateway's
    pass-through phases (request headers, buffered request body, response headers) to the
    server on that unix socket: the floor scenario, with the same Envoy runtime flags as the
    gateway's bootstrap (Envoy waits for the server's closing status instead of resetting).
    `processing_mode` changes those phases (`bench/phases.py` sends fewer).
    """

    def address(port: int) -> dict[str, Any]:
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "plain",
        "codec_type": "AUTO",
        "route_config": {
            "name": "plain",
            "virtual_hosts": [
                {
                    "name": "fake",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "fake", "timeout": "120s"}}
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    clusters: list[dict[str, Any]] = [
        {
            "name": "fake",
            "type": "STATIC",
            "connect_timeout": "5s",
            "load_assignment": {
                "cluster_name": "fake",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(fake_port)}}]}],
            },
        }
    ]
    runtime: dict[str, Any] = {}
    if ext_proc_socket is not None:
        hcm["http_filters"].insert(0, _floor_ext_proc_filter(processing_mode or {}))
        clusters.append(_floor_ext_proc_cluster(ext_proc_socket))
        runtime = {
            "layered_runtime": {"layers": [{"name": "gateway", "static_layer": RUNTIME_FLAGS}]}
        }
    return {
        **runtime,
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "plain",
                    "address": address(listen_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _floor_ext_proc_filter(processing_mode: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3."
            "ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": "floor_ext_proc"}, "timeout": "2s"},
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "response_header_mode": "SEND",
                "response_body_mode": "NONE",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
                **processing_mode,
            },
            "message_timeout": "2s",
        },
    }


def _floor_ext_proc_cluster(socket_path: Path) -> dict[str, Any]:
    return {
        "name": "floor_ext_proc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "floor_ext_proc",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(socket_path)}}}}]}
            ],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    }


# --- the running system ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One scenario: where to send which request, and which processes serve it."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    envoy_pid: int | None  # None: no Envoy in front (the LiteLLM proxy row)
    processor_pid: int | None
    # The redis-server holding this scenario's limits (None: limits, if any, in memory).
    redis_pid: int | None = None
    # Its Envoy's admin interface, for the ext_proc counters (`envoy_stats`).
    envoy_admin: str | None = None


@dataclass
class System:
    """The processes of one run and the scenarios they serve."""

    fake_pid: int
    processor_pid: int
    targets: dict[str, Target]
    anthropic_plain: Target  # plain Envoy straight to the fake's Messages API (reference)
    fake_url: str = ""


def chat_body(
    model: str, content: str = "hello", *, stream: bool = False, temperature: float | None = None
) -> bytes:
    """The benchmark's chat completion request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
    }
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def anthropic_body(content: str = "hello", *, stream: bool = False) -> bytes:
    """An Anthropic Messages request, for plain Envoy's reference stream."""
    body: dict[str, Any] = {
        "model": "claude-bench",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


@dataclass(frozen=True)
class Endpoint:
    """A started Envoy: its listener and the processes serving it (for CPU readings)."""

    url: str
    envoy_pid: int
    processor_pid: int | None
    redis_pid: int | None = None
    envoy_admin: str | None = None

    def target(self, name: str, path: str, body: bytes, headers: dict[str, str]) -> Target:
        """A scenario on this Envoy."""
        return Target(
            name,
            self.url + path,
            body,
            headers,
            self.envoy_pid,
            self.processor_pid,
            self.redis_pid,
            self.envoy_admin,
        )


def bench_fake(workdir: Path) -> FakeProcess:
    """The fake provider as its own process: zero latency, 200-event streams (not started)."""
    args = ("--stream-chunk-count", str(STREAM_EVENTS), "--reply", REPLY)
    return FakeProcess(workdir / "fake.log", *args)


class SharedFake:
    """An already running fake, for a second stack (started and stopped by the first)."""

    def __init__(self, fake: FakeProcess) -> None:
        self._fake = fake

    @property
    def base_url(self) -> str:
        """The shared fake's base URL."""
        return self._fake.base_url

    def start(self) -> None:
        """Nothing: the first stack started it."""

    def stop(self) -> None:
        """Nothing: the first stack stops it."""


def start_lean_gateway(
    children: ProcessGroup, workdir: Path, fake: FakeProcess, access_log: bool
) -> GatewayStack[SharedFake]:
    """A second processor and Envoy on `lean_config`, sharing the running fake."""
    workdir.mkdir()
    return start_stack(
        children,
        workdir,
        lambda fake_url: lean_config(fake_url, workdir, access_log),
        SharedFake(fake),
    )


def start_traced_gateway(
    children: ProcessGroup, workdir: Path, fake: FakeProcess
) -> GatewayStack[SharedFake]:
    """A second processor and Envoy on `gateway_config` with tracing on (ratio 1.0), sharing
    the running fake, exporting to a do-nothing OTLP collector process."""
    workdir.mkdir()
    port = free_port()
    argv = [sys.executable, "-m", "extproc.dev.otlp_collector", "--port", str(port), "--discard"]
    children.spawn(argv, workdir / "collector.log")

    def config(fake_url: str) -> dict[str, Any]:
        data = gateway_config(fake_url, workdir)
        tracing = {"enabled": True, "endpoint": f"127.0.0.1:{port}", "sampling_ratio": 1.0}
        data["telemetry"] = {**data.get("telemetry", {}), "tracing": tracing}
        return data

    return start_stack(children, workdir, config, SharedFake(fake))


def start_redis_gateway(
    children: ProcessGroup, workdir: Path, fake: FakeProcess
) -> tuple[GatewayStack[SharedFake], RedisServer]:
    """A second processor and Envoy on `gateway_config` with governance on Redis (a throwaway
    redis-server started here, tracked by `children`), sharing the running fake."""
    workdir.mkdir()
    redis = children.add(RedisServer(workdir / "redis")).start()

    def config(fake_url: str) -> dict[str, Any]:
        data = gateway_config(fake_url, workdir)
        data["governance"] = {"backend": "redis", "redis": {"url": redis.url}}
        return data

    return start_stack(children, workdir, config, SharedFake(fake)), redis


def start_gateway(children: ProcessGroup, workdir: Path) -> GatewayStack[FakeProcess]:
    """The fake, the processor (log level WARNING) and its Envoy, on `gateway_config`."""
    return start_stack(
        children, workdir, lambda fake_url: gateway_config(fake_url, workdir), bench_fake(workdir)
    )


F = TypeVar("F", FakeProcess, SharedFake)


def start_stack(
    children: ProcessGroup,
    workdir: Path,
    config: Callable[[str], dict[str, Any]],
    fake: F,
    envoy_name: str = "gateway-envoy",
) -> GatewayStack[F]:
    """A processor (log level WARNING, the bench's upstream keys) and its Envoy on `config`,
    started and tracked by `children` (as `soak.py` and `chaos.py` start theirs too)."""
    gateway = children.add(
        GatewayStack(
            workdir,
            config,
            fake,
            processor_env=UPSTREAM_ENV,
            processor_log_level="WARNING",
            envoy_name=envoy_name,
        )
    )
    return gateway.start()


def start_plain_envoy(
    children: ProcessGroup, workdir: Path, fake_port: int, name: str = "plain"
) -> Endpoint:
    """Envoy alone (`plain_bootstrap`) in front of the fake."""
    port, admin_port = free_ports(2)
    path = workdir / f"{name}-envoy.yaml"
    path.write_text(yaml.safe_dump(plain_bootstrap(port, admin_port, fake_port)), encoding="utf-8")
    envoy = children.start_envoy(path, workdir / f"{name}-envoy.log")
    return Endpoint(f"http://127.0.0.1:{port}", envoy.pid, None, envoy_admin=_admin(admin_port))


def start_floor(
    children: ProcessGroup,
    workdir: Path,
    fake_port: int,
    name: str = "floor",
    processing_mode: Mapping[str, str] | None = None,
    last_phase: str | None = None,
) -> Endpoint:
    """A do-nothing ext_proc server (`floor_processor.py`) and the plain Envoy calling it."""
    socket_path = workdir / f"{name}.sock"
    argv = [sys.executable, str(FLOOR_PROCESSOR), "--socket", str(socket_path)]
    argv += ["--last-phase", last_phase] if last_phase else []
    processor = children.spawn(argv, workdir / f"{name}-processor.log")
    port, admin_port = free_ports(2)
    bootstrap = plain_bootstrap(port, admin_port, fake_port, socket_path, processing_mode)
    path = workdir / f"{name}-envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap), encoding="utf-8")
    envoy = children.start_envoy(path, workdir / f"{name}-envoy.log")
    return Endpoint(
        f"http://127.0.0.1:{port}", envoy.pid, processor.pid, envoy_admin=_admin(admin_port)
    )


def _admin(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def start_system(children: ProcessGroup, workdir: Path) -> System:
    """Gateway (fake, processor, Envoy), plain Envoy, floor; returns once every scenario
    answers 200. Every process is tracked by `children`."""
    gateway = start_gateway(children, workdir)
    fake = gateway.fake
    log(f"fake provider (pid {fake.pid}) on {fake.base_url}, {STREAM_EVENTS}-event streams")
    assert gateway.processor is not None and gateway.envoy is not None
    processor_pid = gateway.processor.pid
    log(
        f"processor (pid {processor_pid}) and gateway Envoy (pid {gateway.envoy.pid}) "
        f"on {gateway.base_url}"
    )
    on_gateway = Endpoint(
        gateway.base_url, gateway.envoy.pid, processor_pid, envoy_admin=gateway.envoy_admin_url
    )

    lean = {}
    for name, access_log in ((PASSTHROUGH_UNREAD, True), (PASSTHROUGH_QUIET, False)):
        stack = start_lean_gateway(
            children, workdir / name.split(",")[1].strip().replace(" ", "-"), fake, access_log
        )
        assert stack.processor is not None and stack.envoy is not None
        lean[name] = Endpoint(
            stack.base_url, stack.envoy.pid, stack.processor.pid, envoy_admin=stack.envoy_admin_url
        )
        log(f"{name}: processor (pid {stack.processor.pid}) and Envoy on {stack.base_url}")

    on_redis, redis = start_redis_gateway(children, workdir / "limits-on-redis", fake)
    traced = start_traced_gateway(children, workdir / "tracing-on", fake)
    second = {}
    for name, stack, redis_pid in (
        (ALL_FEATURES_REDIS, on_redis, redis.proc.pid if redis.proc else None),
        (ALL_FEATURES_TRACED, traced, None),
    ):
        assert stack.processor is not None and stack.envoy is not None
        second[name] = Endpoint(
            stack.base_url, stack.envoy.pid, stack.processor.pid, redis_pid, stack.envoy_admin_url
        )
        log(f"{name}: processor (pid {stack.processor.pid}) on {stack.base_url}")
    log(f"redis-server (pid {second[ALL_FEATURES_REDIS].redis_pid}) on {redis.url}")

    plain = start_plain_envoy(children, workdir, fake.port)
    log(f"plain Envoy (pid {plain.envoy_pid}) on {plain.url}")
    floor = start_floor(children, workdir, fake.port)
    log(f"floor: empty Python ext_proc (pid {floor.processor_pid}) and its Envoy on {floor.url}")

    auth = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    chat = "/v1/chat/completions"
    targets = {
        PLAIN: plain.target(PLAIN, chat, chat_body(MODEL_PASSTHROUGH), auth),
        FLOOR: floor.target(FLOOR, chat, chat_body(MODEL_PASSTHROUGH), auth),
        PASSTHROUGH: on_gateway.target(PASSTHROUGH, chat, chat_body(MODEL_PASSTHROUGH), auth),
        **{
            name: endpoint.target(name, chat, chat_body(MODEL_PASSTHROUGH), auth)
            for name, endpoint in lean.items()
        },
        ANTHROPIC: on_gateway.target(ANTHROPIC, chat, chat_body(MODEL_ANTHROPIC), auth),
    }
    # A tenant with an explicit model list (RBAC) and a per-request timeout header; with no
    # limit that applies, then with limits in memory, on Redis, and with tracing on.
    rbac = {**auth, "Authorization": f"Bearer {RBAC_KEY}", "x-gateway-timeout": "30"}
    unlimited = {**rbac, "Authorization": f"Bearer {RBAC_UNLIMITED_KEY}"}
    targets[ALL_FEATURES_UNLIMITED] = on_gateway.target(
        ALL_FEATURES_UNLIMITED, chat, chat_body(MODEL_ALL_UNLIMITED), unlimited
    )
    targets[ALL_FEATURES] = on_gateway.target(ALL_FEATURES, chat, chat_body(MODEL_ALL), rbac)
    no_policies = {**rbac, "Authorization": f"Bearer {NO_POLICIES_KEY}"}
    targets[ALL_FEATURES_NO_POLICIES] = on_gateway.target(
        ALL_FEATURES_NO_POLICIES, chat, chat_body(MODEL_ALL), no_policies
    )
    targets[CACHE_HIT] = on_gateway.target(
        CACHE_HIT, chat, chat_body(MODEL_CACHED, temperature=0), auth
    )
    for name, endpoint in second.items():
        targets[name] = endpoint.target(name, chat, chat_body(MODEL_ALL), rbac)
    anthropic_plain = plain.target(
        ANTHROPIC_REFERENCE,
        "/anthropic/v1/messages",
        anthropic_body(),
        {"x-api-key": "sk-ant-bench", "anthropic-version": "2023-06-01", **auth},
    )
    for target in [*targets.values(), anthropic_plain]:
        wait_for_200(target)
    return System(fake.pid, processor_pid, targets, anthropic_plain, fake.base_url)


def wait_for_200(target: Target, timeout: float = 30) -> None:
    """Retry one request until it answers 200 (Envoy's first health checks take a moment)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.post(target.url, content=target.body, headers=target.headers)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{target.name} does not answer 200 ({last})")
