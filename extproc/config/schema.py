"""The configuration schema: pydantic models of the YAML file and the checks across sections.

Every field is validated when the config loads (`loading.py`), never per request: the processor
turns the validated config into plain lookup tables (`extproc.gateway`).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    """Base model: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderType(StrEnum):
    """Wire APIs the gateway knows about."""

    OPENAI = "openai"
    AZURE = "azure"
    VLLM = "vllm"
    OLLAMA = "ollama"
    TOGETHER = "together"
    ANTHROPIC = "anthropic"
    GOOGLE = "google"
    BEDROCK = "bedrock"


class HttpProtocol(StrEnum):
    """Upstream HTTP protocol choice for a provider cluster."""

    AUTO = "auto"  # ALPN (h2, then http/1.1) for https; HTTP/1.1 for http
    HTTP1 = "http1"
    HTTP2 = "http2"


class ProviderHealthCheck(_Strict):
    """Optional active health check of a provider, run by the processor."""

    path: Annotated[str, Field(pattern=r"^/")]  # appended to base_url, e.g. "/models"
    interval_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 10.0
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 2.0
    unhealthy_threshold: Annotated[int, Field(ge=1, le=100)] = 2
    healthy_threshold: Annotated[int, Field(ge=1, le=100)] = 1


class ProviderConfig(_Strict):
    """One upstream provider: where it is, how to authenticate, how long to wait."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    type: ProviderType
    base_url: str
    api_key_env: str | None = None
    api_key_file: Path | None = None
    api_version: str | None = Field(
        default=None, description="Azure only: the `api-version` query parameter."
    )
    anthropic_version: str | None = Field(
        default=None, description="Anthropic only: the `anthropic-version` header (2023-06-01)."
    )
    aws_region: str | None = Field(default=None, description="Bedrock only: the SigV4 region.")
    aws_access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    aws_secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    aws_session_token_env: str = "AWS_SESSION_TOKEN"
    aws_credentials_file: Path | None = Field(
        default=None, description="Bedrock only: an AWS shared-credentials file instead of env."
    )
    aws_profile: str = "default"
    # Upper bound for any request to this provider (None: only the 600 s rule applies).
    timeout_seconds: Annotated[float | None, Field(gt=0, le=600)] = None
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    http_protocol: HttpProtocol = HttpProtocol.AUTO
    # GET base_url + path every interval; while it fails, the provider's targets get no
    # traffic (their breakers are left alone). Sent with the provider's API key, if any.
    health_check: ProviderHealthCheck | None = None

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError("base_url must start with http:// or https://")
        if not parts.hostname:
            raise ValueError("base_url must name a host")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not carry a query or fragment")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not carry credentials; use api_key_env or api_key_file")
        try:
            parts.port  # noqa: B018 - raises on an invalid port
        except ValueError as exc:
            raise ValueError(f"base_url has an invalid port: {exc}") from None
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_type_specifics(self) -> ProviderConfig:
        if self.api_key_env and self.api_key_file:
            raise ValueError("set at most one of api_key_env and api_key_file")
        has_key = bool(self.api_key_env or self.api_key_file)
        kind = self.type.value
        needs_key = (ProviderType.AZURE, ProviderType.ANTHROPIC, ProviderType.GOOGLE)
        if self.type in needs_key and not has_key:
            raise ValueError(f"{kind} providers need api_key_env or api_key_file")
        if self.type is ProviderType.AZURE:
            if not self.api_version:
                raise ValueError("azure providers need api_version (e.g. '2024-10-21')")
        elif self.api_version is not None:
            raise ValueError("api_version is only valid for azure providers")
        if self.anthropic_version is not None and self.type is not ProviderType.ANTHROPIC:
            raise ValueError("anthropic_version is only valid for anthropic providers")
        if self.type is ProviderType.BEDROCK:
            if not self.aws_region:
                raise ValueError("bedrock providers need aws_region (e.g. 'us-east-1')")
            if has_key:
                raise ValueError(
                    "bedrock providers sign requests with AWS credentials (SigV4): use "
                    "aws_credentials_file or the aws_*_env variables, not api_key_env/file"
                )
        elif self.aws_region is not None or self.aws_credentials_file is not None:
            raise ValueError("aws_region and aws_credentials_file are only valid for bedrock")
        return self

    @property
    def scheme(self) -> str:
        """`http` or `https`."""
        return urlsplit(self.base_url).scheme

    @property
    def host(self) -> str:
        """Host name of the base URL (no port)."""
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        """Port of the base URL, defaulting by scheme."""
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def authority(self) -> str:
        """The `Host` header value the provider expects."""
        parts = urlsplit(self.base_url)
        return parts.netloc.rsplit("@", 1)[-1]

    @property
    def base_path(self) -> str:
        """Path prefix of the base URL, without a trailing slash ('' for none)."""
        return urlsplit(self.base_url).path.rstrip("/")


class Price(_Strict):
    """A target's price, in `governance.currency` per million tokens."""

    input_per_million: Annotated[float, Field(ge=0, le=1_000_000)] = 0.0
    output_per_million: Annotated[float, Field(ge=0, le=1_000_000)] = 0.0
    # Prompt tokens the provider served from its cache (None: charged as input).
    cached_input_per_million: Annotated[float | None, Field(ge=0, le=1_000_000)] = None


class RateLimits(_Strict):
    """Limits on one scope (a tenant, a key, a model, a tenant on a model); unset: no limit.

    Requests and tokens are counted over a sliding 60-second window (no 60 s ever admits more);
    tokens are input + output, reserved at admission and settled to the reported usage.
    """

    requests_per_minute: Annotated[int | None, Field(ge=1, le=10_000_000)] = None
    tokens_per_minute: Annotated[int | None, Field(ge=1, le=10_000_000_000)] = None
    concurrent_requests: Annotated[int | None, Field(ge=1, le=1_000_000)] = None

    @property
    def any(self) -> bool:
        """True when at least one limit is set."""
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.concurrent_requests is not None
        )


class Budget(_Strict):
    """A spend limit per calendar day or month (UTC), in currency or in tokens."""

    limit: Annotated[float, Field(gt=0, le=1e12)]
    unit: Literal["currency", "tokens"] = "currency"
    period: Literal["day", "month"] = "month"


def _unique_budgets(budgets: list[Budget]) -> list[Budget]:
    seen = {(b.unit, b.period) for b in budgets}
    if len(seen) != len(budgets):
        raise ValueError("at most one budget per unit and period")
    return budgets


Budgets = Annotated[list[Budget], AfterValidator(_unique_budgets)]


class TargetConfig(_Strict):
    """One place a model can be served: a provider and its name for the model."""

    provider: str
    model: Annotated[str, Field(min_length=1, max_length=256)]
    weight: Annotated[int, Field(ge=1, le=10000)] = 1
    # Lower is tried first; targets of equal priority share traffic by weight.
    # Default: the target's position in the list (0, 1, 2, ...).
    priority: Annotated[int | None, Field(ge=0, le=100)] = None
    # What this target's tokens cost (usage accounting and spend budgets); None: nothing.
    price: Price | None = None


POLICY_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"


class PolicyConfig(_Strict):
    """One policy applied to requests: which one (by name), its options, how it may fail."""

    # The policy's name: a built-in, or an entry point of the `llm_gateway.policies` group.
    policy: Annotated[str, Field(pattern=POLICY_NAME_PATTERN)]
    # How metrics and logs name this use of it (default: `policy`); unique within its list.
    id: Annotated[str | None, Field(pattern=NAME_PATTERN)] = None
    # Checked against the policy's own options model when the config loads.
    options: dict[str, Any] = Field(default_factory=dict)
    # A policy that raises, overruns its deadline or answers nonsense: refuse the request
    # (503 `policy_unavailable`) or let it go on as if the policy had allowed it.
    on_error: Literal["deny", "allow"] = "deny"
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 250

    @property
    def policy_id(self) -> str:
        """The name this use of the policy goes by: `id`, else the policy's name."""
        return self.id or self.policy


class ModelConfig(_Strict):
    """A model name clients send and the targets that can serve it (chosen by weight)."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    targets: Annotated[list[TargetConfig], Field(min_length=1)]
    kind: Literal["chat", "embeddings"] = "chat"
    owned_by: str = "llm-gateway"
    # max_tokens sent to APIs that require one (Anthropic) when the client sets none.
    default_max_tokens: Annotated[int, Field(ge=1, le=128_000)] = 4096
    # Output tokens reserved at admission when the request sets no max_tokens (token limits and
    # budgets); None: `default_max_tokens`. Settled to the real usage when the answer ends.
    reserve_output_tokens: Annotated[int | None, Field(ge=0, le=128_000)] = None
    # Limits on this model across every tenant.
    limits: RateLimits = RateLimits()
    # Policies for requests to this model (after the gateway's and the tenant's).
    policies: list[PolicyConfig] = Field(default_factory=list)
    # Cache this model's deterministic answers; None: as `cache.enabled` says.
    cache: bool | None = None


# Model fields only the processor reads (governance, policies, cache): they never change
# Envoy's routes.
PROCESSOR_ONLY_MODEL_FIELDS: dict[str, Any] = {
    "reserve_output_tokens": True,
    "limits": True,
    "policies": True,
    "cache": True,
    "targets": {"__all__": {"price"}},
}


KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
# A key without an `id` is known by the start of its SHA-256 digest (public in the config).
DEFAULT_KEY_ID_LENGTH = 12


def _check_digest(value: str) -> str:
    if not SHA256_PATTERN.match(value):
        raise ValueError(
            "API key hashes must be 64 lower-case hex characters "
            "(use `extproc hash-key` to make one)"
        )
    return value


KeyDigest = Annotated[str, AfterValidator(_check_digest)]


class KeyConfig(_Strict):
    """One API key of a tenant, with what applies to it on top of its tenant's rules."""

    sha256: KeyDigest
    # Short, non-secret name of the key in logs, metrics and `/usage` (default: the first 12
    # characters of `sha256`). Keep it when rotating the key, to keep its history together.
    id: Annotated[str | None, Field(pattern=KEY_ID_PATTERN)] = None
    # After this instant the key is refused (401). Needs a time zone (e.g. 2027-01-01T00:00:00Z).
    expires_at: datetime | None = None
    # Models this key may use, within its tenant's (None: all of the tenant's).
    allowed_models: list[str] | None = None
    limits: RateLimits = RateLimits()
    budgets: Budgets = Field(default_factory=list)

    @property
    def key_id(self) -> str:
        """The key's id: `id`, else the first characters of its digest."""
        return self.id or self.sha256[:DEFAULT_KEY_ID_LENGTH]

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z")
        return value


class TenantConfig(_Strict):
    """A caller: its API keys (hashed), the models it may use, its limits and budgets."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    # Plain key hashes (ids default to their first 12 characters); `keys` for more per key.
    api_key_sha256: list[KeyDigest] = Field(default_factory=list)
    # More plain key hashes, one a line, from a file (a mounted Kubernetes Secret): read at
    # start-up and by every reload, and watched like the config file.
    api_key_sha256_file: Path | None = None
    keys: list[KeyConfig] = Field(default_factory=list)
    allowed_models: list[str] = Field(default_factory=lambda: ["*"])
    limits: RateLimits = RateLimits()
    # Limits of this tenant on one model (tenant x model), by model name.
    model_limits: dict[str, RateLimits] = Field(default_factory=dict)
    budgets: Budgets = Field(default_factory=list)
    # Policies for this tenant's requests (after the gateway's, before the model's).
    policies: list[PolicyConfig] = Field(default_factory=list)

    # (line number, digest) of each digest read from `api_key_sha256_file` when the config
    # loaded (`extproc.config.key_files`); not a field of the YAML file.
    _file_digests: tuple[tuple[int, str], ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _need_a_key(self) -> TenantConfig:
        if not self.api_key_sha256 and not self.keys and self.api_key_sha256_file is None:
            raise ValueError(
                "a tenant needs at least one key (api_key_sha256, api_key_sha256_file or keys)"
            )
        return self

    def with_file_digests(self, digests: tuple[tuple[int, str], ...]) -> TenantConfig:
        """A copy of the tenant holding the (line number, digest) pairs read from its file."""
        copy = self.model_copy()
        copy._file_digests = digests
        return copy

    @property
    def file_digests(self) -> tuple[tuple[int, str], ...]:
        """The (line number, digest) pairs read from `api_key_sha256_file` (none: not read)."""
        return self._file_digests

    def all_keys(self) -> list[KeyConfig]:
        """Every key of the tenant: `keys`, then the plain hashes (of the config, then of the
        file) as keys without extras."""
        digests = [*self.api_key_sha256, *(digest for _, digest in self._file_digests)]
        return [*self.keys, *(KeyConfig(sha256=digest) for digest in digests)]


class AuthConfig(_Strict):
    """Client authentication switch."""

    enabled: bool = True
    # Tenant used for every request when auth is disabled (local development).
    anonymous_tenant: Annotated[str, Field(pattern=NAME_PATTERN)] = "anonymous"


# The largest `processor.max_in_flight` allowed: Envoy's processor cluster takes more streams
# than that (each request may hold two: its own and its attempt's), so the processor's own
# limit, with its 503 `overloaded`, is the one that applies.
MAX_IN_FLIGHT_LIMIT = 100_000

# The largest `limits.max_body_bytes` allowed (the processor's gRPC message limit is set from it
# at start, so a reload may raise the body limit up to here).
MAX_BODY_BYTES_LIMIT = 64 * 1024 * 1024
# Headroom above max_body_bytes so a body at the limit still fits Envoy's buffers and reaches
# the processor, which rejects anything larger with its own error.
BUFFER_HEADROOM_BYTES = 1024 * 1024


class LimitsConfig(_Strict):
    """Request bounds enforced before anything reaches a provider."""

    max_body_bytes: Annotated[int, Field(ge=1024, le=MAX_BODY_BYTES_LIMIT)] = 10 * 1024 * 1024
    max_json_depth: Annotated[int, Field(ge=4, le=512)] = 64
    default_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 120.0

    @property
    def buffer_bytes(self) -> int:
        """Envoy's per-connection buffer limit (listener and provider clusters): the body
        limit plus headroom. Also the largest response body the processor asks Envoy to
        buffer: a whole answer larger than this is never buffered (docs/architecture.md,
        "Oversized answers")."""
        return self.max_body_bytes + BUFFER_HEADROOM_BYTES


def _ip_literal(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            "must be an IP address such as 127.0.0.1 or 0.0.0.0 (Envoy binds IPs, not names)"
        ) from None
    return value


IpAddress = Annotated[str, AfterValidator(_ip_literal)]


class ResilienceConfig(_Strict):
    """Breakers, retries and capacity: how the gateway rides out failing providers."""

    # Circuit breaker per target (provider + upstream model).
    breaker_consecutive_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    breaker_failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    breaker_window_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    breaker_min_requests: Annotated[int, Field(ge=1, le=100000)] = 20
    breaker_open_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    breaker_half_open_probes: Annotated[int, Field(ge=1, le=100)] = 1
    # How often Envoy asks the processor which targets may take traffic.
    health_check_interval_ms: Annotated[int, Field(ge=50, le=60000)] = 500
    # Envoy retries (same request, next target): attempts after the first.
    max_retries: Annotated[int, Field(ge=0, le=5)] = 2
    # A model with several targets whose first priority has one target: its first attempt
    # is translated by the downstream filter, with no per-attempt ext_proc stream unless Envoy
    # retries or sends it elsewhere (docs/architecture.md, "The lead target"). False: every
    # attempt is translated by the upstream filter.
    inline_first_attempt: bool = True
    retry_base_interval_ms: Annotated[int, Field(ge=1, le=10000)] = 100
    retry_max_interval_ms: Annotated[int, Field(ge=1, le=60000)] = 400
    # Give up on one attempt after this long and try the next target (None: only the
    # request timeout applies). It bounds the whole attempt, streamed body included.
    per_try_timeout_seconds: Annotated[float | None, Field(gt=0, le=600)] = None
    # Cut an attempt that sends nothing for this long (a stalled stream); also before the
    # first byte, so keep it above the slowest time to first token (None: off).
    per_try_idle_timeout_seconds: Annotated[float | None, Field(gt=0, le=600)] = None
    # Longest Retry-After a provider 429 may make Envoy wait before retrying.
    max_rate_limited_wait_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Capacity per model: requests waiting for a connection, and in flight.
    max_pending_requests: Annotated[int, Field(ge=1, le=100000)] = 100
    max_requests: Annotated[int, Field(ge=1, le=1000000)] = 1000
    # Processor down or slow: answer 503 (false, the default) or let requests through
    # unprocessed (true) to `fail_open_model`'s targets: no auth, no validation, no
    # translation, no credentials. Only for keyless, OpenAI-compatible internal backends.
    processor_failure_open: bool = False
    fail_open_model: str | None = None


class ListenerConfig(_Strict):
    """The Envoy listener applications call."""

    address: IpAddress = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080


class EnvoyAdminConfig(_Strict):
    """Envoy's own admin interface (keep it on loopback)."""

    address: IpAddress = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9901


class ProcessorConfig(_Strict):
    """Where the ext_proc service listens and how Envoy talks to it."""

    unix_socket: Path | None = Path("/tmp/llm-gateway/extproc.sock")
    tcp_address: str | None = None  # "127.0.0.1:50051"
    admin_address: str = "127.0.0.1"
    admin_port: Annotated[int, Field(ge=1, le=65535)] = 9090
    message_timeout_ms: Annotated[int, Field(ge=10, le=60000)] = 2000
    shutdown_grace_seconds: Annotated[float, Field(ge=0, le=600)] = 30.0
    # `/readyz` is ready only while Envoy's admin (`envoy_admin`) answers LIVE too; off for a
    # processor whose Envoy runs where that address does not reach.
    ready_requires_envoy: bool = True
    # uvloop measured about 20 % less processor CPU per request than asyncio's default loop
    # (docs/performance.md); "asyncio" is the fallback if uvloop misbehaves somewhere.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Admission control: requests this processor processes at once (streams to a provider
    # included); the next one is answered 503 `overloaded` with Retry-After at once.
    max_in_flight: Annotated[int, Field(ge=1, le=MAX_IN_FLIGHT_LIMIT)] = 1000
    # Also shed new requests while the event loop runs this late (None: off).
    max_loop_lag_ms: Annotated[int | None, Field(ge=10, le=60000)] = None

    @field_validator("tcp_address")
    @classmethod
    def _check_tcp(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("tcp_address must look like HOST:PORT")
        return value

    @model_validator(mode="after")
    def _need_one(self) -> ProcessorConfig:
        if self.unix_socket is None and self.tcp_address is None:
            raise ValueError("set unix_socket, tcp_address or both")
        return self


class ReloadConfig(_Strict):
    """Hot reload: where Envoy's dynamic config lives and how the processor follows the file."""

    # Envoy reads its listener, routes and clusters from files here (LDS, RDS, CDS), watching the
    # directory; `render-envoy --xds-dir` writes the first ones and the processor rewrites them on
    # every start and reload. Both Envoy and the processor must see the same directory.
    xds_directory: Path = Path("/tmp/llm-gateway/xds")
    # Poll the config file, and the key files it refers to, this often and reload when the
    # content of any changed (0: no polling; SIGHUP and `POST /reload` still reload).
    watch_interval_seconds: Annotated[float, Field(ge=0, le=3600)] = 2.0
    # How long a reload waits for Envoy to apply the new files before giving up (the old config
    # keeps serving, the files are put back).
    envoy_apply_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    # After a reload, the old config's routes and clusters stay in Envoy until the requests it
    # began have finished, or at most this long.
    drain_seconds: Annotated[float, Field(ge=0, le=3600)] = 30.0


class AccessLogConfig(_Strict):
    """One JSON line per request, at its end, on the processor's standard output."""

    enabled: bool = True
    # Prompt and completion text in the line: off unless explicitly enabled (never keys).
    include_content: bool = False


class TracingConfig(_Strict):
    """Traces over OTLP gRPC from Envoy and the processor, one trace per request (off by default).

    Both export to `endpoint` (a collector or agent, plaintext gRPC). Envoy samples new requests
    at `sampling_ratio`; the processor follows Envoy's decision (parent-based) and applies the
    ratio itself only to streams Envoy did not trace.
    """

    enabled: bool = False
    # The collector's OTLP gRPC receiver, HOST:PORT (a name Envoy resolves by DNS, or an IP).
    endpoint: str = "127.0.0.1:4317"
    # Share of requests traced, 0..1 (Envoy's `random_sampling`, the processor's ratio sampler).
    sampling_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    # `service.name` of the processor's spans; Envoy's spans carry "<service_name>-envoy".
    service_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")] = (
        "llm-gateway"
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("endpoint must look like HOST:PORT (OTLP gRPC, e.g. 127.0.0.1:4317)")
        if "/" in host or " " in host:
            raise ValueError("endpoint is HOST:PORT, not a URL")
        return value

    @property
    def host_port(self) -> tuple[str, int]:
        """The endpoint's host (IPv6 without brackets) and port."""
        host, _, port = self.endpoint.rpartition(":")
        return host.strip("[]"), int(port)


class TelemetryConfig(_Strict):
    """What the processor reports: logs, token accounting, traces (metrics in their section)."""

    # Level of the processor's own log (stderr); the access log is separate.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # `json`: one JSON object per log line (for log pipelines); `text`: human-readable.
    log_format: Literal["text", "json"] = "text"
    access_log: AccessLogConfig = AccessLogConfig()
    # Read pass-through (OpenAI-compatible) answers to count their tokens: whole answers are
    # buffered, streams read chunk by chunk as they pass (and asked for their usage). Costs
    # processor CPU per request (`make bench`, "accounting"); translated answers are always read.
    usage_accounting: bool = True
    tracing: TracingConfig = TracingConfig()
    # Policy tags counted in gateway_tagged_requests_total{tag,value} (others reach only the
    # access log): a short list, since each tag's values become label values.
    metric_tags: Annotated[
        list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]], Field(max_length=10)
    ] = Field(default_factory=list)


class RedisConfig(_Strict):
    """The Redis that replicas share limits, budgets and usage through."""

    # redis://[user@]HOST:PORT/DB (or rediss:// for TLS). Put a password in `url_env`'s
    # variable, never in this file.
    url: str | None = None
    # Name of an environment variable holding the whole URL (takes precedence over `url`).
    url_env: str | None = None
    # Prefix of every key; the `{...}` hash tag keeps them on one Redis Cluster slot.
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,32}$")] = "llmgw"
    # Per command (connect included): past it the request uses local limits (or is refused).
    timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 250
    # After a failure, use local limits for this long before trying Redis again.
    retry_seconds: Annotated[float, Field(gt=0, le=300)] = 1.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        if parts.password:
            raise ValueError("url must not carry a password; put the whole URL in url_env")
        return value


class GovernanceConfig(_Strict):
    """Where rate limits, budgets and usage totals are kept, and what happens when that fails."""

    # `memory`: in this processor (one replica); `redis`: shared by every replica.
    backend: Literal["memory", "redis"] = "memory"
    redis: RedisConfig = RedisConfig()
    # Redis unreachable: `local` keeps serving on this processor's own limits (a metric and a
    # log line say so); `deny` answers 503 rate_limiter_unavailable.
    on_redis_failure: Literal["local", "deny"] = "local"
    # The currency of prices and currency budgets (a label only).
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    # Prompt estimate at admission: text characters per token (ASCII text; other text counts
    # one token per `non_ascii_chars_per_token` characters).
    chars_per_token: Annotated[float, Field(gt=0, le=100)] = 4.0
    non_ascii_chars_per_token: Annotated[float, Field(gt=0, le=100)] = 1.0

    @model_validator(mode="after")
    def _redis_needs_url(self) -> GovernanceConfig:
        if self.backend == "redis" and not (self.redis.url or self.redis.url_env):
            raise ValueError("backend redis needs redis.url or redis.url_env")
        return self


class CacheConfig(_Strict):
    """The response cache: deterministic answers served again without calling a provider."""

    # Off by default; `models[].cache` turns it on or off per model.
    enabled: bool = False
    # memory: this replica's own LRU; redis: shared by every replica (`governance.redis`).
    backend: Literal["memory", "redis"] = "memory"
    ttl_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 300.0
    # Answers larger than this are never stored (the body is read up to this size).
    max_entry_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # memory backend: the LRU's bound, in bytes of keys and answers.
    max_bytes: Annotated[int, Field(ge=64 * 1024, le=64 * 1024**3)] = 64 * 1024 * 1024
    # How long identical requests wait for the one in flight to fill the entry before going to
    # the provider themselves, and how long a filler's lock lives if it never lets go.
    wait_seconds: Annotated[float, Field(ge=0, le=600)] = 30.0
    lock_ttl_seconds: Annotated[float, Field(gt=0, le=3600)] = 120.0


class GatewayConfig(_Strict):
    """The whole gateway configuration file."""

    listener: ListenerConfig = ListenerConfig()
    envoy_admin: EnvoyAdminConfig = EnvoyAdminConfig()
    processor: ProcessorConfig = ProcessorConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    providers: Annotated[list[ProviderConfig], Field(min_length=1)]
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    tenants: list[TenantConfig] = Field(default_factory=list)
    reload: ReloadConfig = ReloadConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    governance: GovernanceConfig = GovernanceConfig()
    cache: CacheConfig = CacheConfig()
    # Policies for every request (before the tenant's and the model's).
    policies: list[PolicyConfig] = Field(default_factory=list)


def reference_problems(config: GatewayConfig) -> list[str]:
    """Problems across sections (names, references, ports); each starts with its path."""
    problems: list[str] = []
    provider_names = [p.name for p in config.providers]
    problems += _duplicates("providers", provider_names)
    problems += _duplicates("models", [m.name for m in config.models])
    problems += _duplicates("tenants", [t.name for t in config.tenants])
    known = set(provider_names)
    for i, model in enumerate(config.models):
        for j, target in enumerate(model.targets):
            if target.provider not in known:
                problems.append(
                    f"models.{i}.targets.{j}.provider: unknown provider '{target.provider}'"
                )
    problems += _tenant_problems(config)
    if config.auth.enabled and not config.tenants:
        problems.append("tenants: auth is enabled but no tenant is configured")
    problems += _port_clashes(config)
    problems += _fail_open_problems(config)
    for where, policies in policy_lists(config):
        problems += _duplicates(where, [p.policy_id for p in policies])
    if config.cache.backend == "redis" and not (
        config.governance.redis.url or config.governance.redis.url_env
    ):
        problems.append("cache.backend: redis needs governance.redis.url or url_env")
    return problems


def policy_lists(config: GatewayConfig) -> list[tuple[str, list[PolicyConfig]]]:
    """Every policy list of the config, with its path."""
    lists = [("policies", config.policies)]
    lists += [(f"tenants.{i}.policies", t.policies) for i, t in enumerate(config.tenants)]
    lists += [(f"models.{i}.policies", m.policies) for i, m in enumerate(config.models)]
    return [(where, policies) for where, policies in lists if policies]


def _key_rules(key: KeyConfig) -> tuple[object, ...]:
    return (key.allowed_models, key.limits, key.budgets)


def _tenant_problems(config: GatewayConfig) -> list[str]:
    model_names = {m.name for m in config.models}
    owner: dict[str, str] = {}
    problems: list[str] = []

    def unknown(where: str, names: list[str]) -> None:
        problems.extend(
            f"{where}: unknown model '{name}'"
            for name in names
            if name != "*" and name not in model_names
        )

    for i, tenant in enumerate(config.tenants):
        unknown(f"tenants.{i}.allowed_models", tenant.allowed_models)
        unknown(f"tenants.{i}.model_limits", list(tenant.model_limits))
        places = [(f"keys.{k}", key.sha256) for k, key in enumerate(tenant.keys)]
        places += [(f"api_key_sha256.{k}", d) for k, d in enumerate(tenant.api_key_sha256)]
        places += [(f"api_key_sha256_file: line {n}", d) for n, d in tenant.file_digests]
        for where, digest in places:
            if digest in owner:
                holder = "this tenant" if owner[digest] == tenant.name else f"'{owner[digest]}'"
                problems.append(f"tenants.{i}.{where}: key already used by {holder}")
            owner.setdefault(digest, tenant.name)
        # Keys sharing an id are one key being rotated: they share its limits and budgets, so
        # they must agree on them.
        by_id: dict[str, KeyConfig] = {}
        for key in tenant.all_keys():
            key_id = key.key_id
            first = by_id.setdefault(key_id, key)
            if first.sha256 != key.sha256 and _key_rules(first) != _key_rules(key):
                problems.append(
                    f"tenants.{i}.keys: keys sharing the id '{key_id}' must have the same "
                    "allowed_models, limits and budgets (they are one key being rotated)"
                )
        for k, key in enumerate(tenant.keys):
            if key.allowed_models is not None:
                unknown(f"tenants.{i}.keys.{k}.allowed_models", key.allowed_models)
    return problems


_FAIL_OPEN_TYPES = (
    ProviderType.OPENAI,
    ProviderType.VLLM,
    ProviderType.OLLAMA,
    ProviderType.TOGETHER,
)


def _fail_open_problems(config: GatewayConfig) -> list[str]:
    resilience = config.resilience
    if not resilience.processor_failure_open:
        if resilience.fail_open_model is not None:
            return ["resilience.fail_open_model: only used with processor_failure_open: true"]
        return []
    if resilience.fail_open_model is None:
        return [
            "resilience.fail_open_model: processor_failure_open needs the model whose targets "
            "take unprocessed requests while the processor is down"
        ]
    model = next((m for m in config.models if m.name == resilience.fail_open_model), None)
    if model is None:
        return [f"resilience.fail_open_model: unknown model '{resilience.fail_open_model}'"]
    providers = {p.name: p for p in config.providers}
    problems = []
    for target in model.targets:
        provider = providers.get(target.provider)
        if provider is not None and (
            provider.type not in _FAIL_OPEN_TYPES or provider.api_key_env or provider.api_key_file
        ):
            problems.append(
                f"resilience.fail_open_model: target provider '{provider.name}' must be a keyless "
                "OpenAI-compatible backend (requests reach it unprocessed when failing open)"
            )
    return problems


def _port_clashes(config: GatewayConfig) -> list[str]:
    sockets: list[tuple[str, str, int]] = [
        ("listener", config.listener.address, config.listener.port),
        ("envoy_admin", config.envoy_admin.address, config.envoy_admin.port),
        ("processor.admin_port", config.processor.admin_address, config.processor.admin_port),
    ]
    if config.processor.tcp_address:
        host, _, port_text = config.processor.tcp_address.rpartition(":")
        sockets.append(("processor.tcp_address", host.strip("[]"), int(port_text)))
    wildcard = {"0.0.0.0", "::"}
    problems = []
    for i, (name, address, port) in enumerate(sockets):
        for other, other_address, other_port in sockets[:i]:
            same_host = address == other_address or bool(wildcard & {address, other_address})
            if port == other_port and port != 0 and same_host:
                problems.append(f"{name}: port {port} is already used by {other}")
    return problems


def _duplicates(where: str, names: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for name in names:
        if name in seen:
            out.append(f"{where}: duplicate name '{name}'")
        seen.add(name)
    return out
