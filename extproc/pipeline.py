"""Per-request decisions, one method per ext_proc phase, with no gRPC in sight.

A `RequestPipeline` lives for one HTTP request (one ext_proc stream). Each phase
returns an action: `Continue` (with mutations and routing metadata) or
`Respond` (an immediate answer). `server.py` turns actions into protobuf.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.auth import Tenant, forbid_model
from extproc.errors import GatewayError, bad_request
from extproc.providers import Endpoint
from extproc.providers.base import ProviderAdapter, RequestContext, ResponseMode
from extproc.providers.errors import malformed_response
from extproc.runtime import Gateway, ModelRoute, Target
from extproc.validation import (
    check_chat_request,
    check_embeddings_request,
    check_model_id,
    check_timeout,
    parse_json_body,
    payload_too_large,
)

TIMEOUT_HEADER = "x-gateway-timeout"
UPSTREAM_TIME_HEADER = "x-envoy-upstream-service-time"
RESPONSE_ERROR = "error"  # response_mode while a provider error body is buffered
JSON_HEADERS = {"content-type": "application/json"}
# Marks answers written by the processor, so Envoy's local-reply rewriting
# (meant for Envoy's own errors) leaves them alone.
ORIGIN_HEADER = "x-gateway-error"
METADATA_NAMESPACE = "gw"

_POST_ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
}
_HEALTH_PATHS = frozenset({"/health", "/healthz"})


@dataclass(slots=True)
class Continue:
    """Let the request go on, optionally changed and routed."""

    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)
    body: bytes | None = None
    metadata: dict[str, Any] | None = None
    clear_route_cache: bool = False
    # How Envoy should send this response's body (set in the response headers phase).
    mode_override: ResponseMode | None = None


@dataclass(slots=True)
class Respond:
    """Answer the client now, without calling a provider."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    details: str = ""

    @classmethod
    def error(cls, error: GatewayError) -> Respond:
        """An OpenAI-style error answer."""
        headers = {**JSON_HEADERS, ORIGIN_HEADER: error.code, **error.headers}
        return cls(error.status, error.body(), headers, details=error.code)

    @classmethod
    def json(cls, status: int, payload: Any) -> Respond:
        """A JSON answer."""
        return cls(status, orjson.dumps(payload), dict(JSON_HEADERS))


Action = Continue | Respond


class RequestPipeline:
    """The decisions for one HTTP request, across its ext_proc phases."""

    __slots__ = (
        "adapter",
        "body_buffer",
        "client_envoy_headers",
        "endpoint",
        "finished",
        "gateway",
        "header_timeout",
        "model",
        "response_headers",
        "response_mode",
        "response_status",
        "started",
        "status",
        "target",
        "tenant",
    )

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.started = time.monotonic()
        self.tenant: Tenant | None = None
        self.endpoint: Endpoint | None = None
        self.header_timeout: float | None = None
        self.model = ""
        self.target: Target | None = None
        self.status: int | None = None
        self.finished = False
        self.client_envoy_headers: list[str] = []
        self.adapter: ProviderAdapter | None = None
        self.response_mode: ResponseMode | str | None = None
        self.response_status = 0
        self.response_headers: dict[str, str] = {}
        self.body_buffer = bytearray()

    # -- request headers -------------------------------------------------

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        """Route by path, authenticate, apply header-level limits."""
        method = headers.get(":method", "")
        path = headers.get(":path", "").split("?", 1)[0]
        if path in _HEALTH_PATHS:
            return Respond.json(200, {"status": "ok"})
        endpoint = _POST_ENDPOINTS.get(path)
        if endpoint is not None:
            if method != "POST":
                raise _method_not_allowed(method, path, "POST")
            self.tenant = self.gateway.auth.authenticate(headers.get("authorization"))
            self.endpoint = endpoint
            self._check_length(headers.get("content-length"))
            # x-envoy-* headers steer Envoy's router (timeouts, retries): only the
            # gateway may set them, so any a client sent are dropped upstream.
            self.client_envoy_headers = [h for h in headers if h.startswith("x-envoy-")]
            raw_timeout = headers.get(TIMEOUT_HEADER)
            if raw_timeout is not None:
                self.header_timeout = check_timeout(raw_timeout, f"the {TIMEOUT_HEADER} header")
            if end_of_stream:
                raise bad_request("invalid_json", "request body is required")
            return Continue()
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                raise _method_not_allowed(method, path, "GET")
            self.tenant = self.gateway.auth.authenticate(headers.get("authorization"))
            return self._models(path)
        raise GatewayError(404, "unknown_url", f"unknown URL: {method} {path[:200]}")

    def _check_length(self, content_length: str | None) -> None:
        if content_length is None:
            return
        try:
            length = int(content_length)
        except ValueError:
            raise bad_request("invalid_request", "content-length is not a number") from None
        if length > self.gateway.max_body_bytes:
            raise payload_too_large(self.gateway.max_body_bytes)

    def _models(self, path: str) -> Respond:
        tenant = self.tenant
        assert tenant is not None
        visible = [m for m in self.gateway.models.values() if tenant.may_use(m.name)]
        if path == "/v1/models":
            return Respond.json(
                200, {"object": "list", "data": [self._model_entry(m) for m in visible]}
            )
        wanted = path.removeprefix("/v1/models/")
        for model in visible:
            if model.name == wanted:
                return Respond.json(200, self._model_entry(model))
        raise _model_not_found(wanted)

    def _model_entry(self, model: ModelRoute) -> dict[str, Any]:
        return {
            "id": model.name,
            "object": "model",
            "created": self.gateway.created,
            "owned_by": model.owned_by,
        }

    # -- request body ----------------------------------------------------

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Action:
        """Parse, validate, authorize the model, pick a target, translate, route."""
        gateway = self.gateway
        endpoint = self.endpoint
        tenant = self.tenant
        if endpoint is None or tenant is None:
            # Body without a routed header phase: nothing we can safely do.
            raise bad_request("invalid_request", "unexpected request body")
        if len(body) > gateway.max_body_bytes:
            raise payload_too_large(gateway.max_body_bytes)
        if not body:
            raise bad_request("invalid_json", "request body is required")
        parsed = parse_json_body(body, gateway.max_json_depth)
        model_name = check_model_id(parsed)
        route = gateway.models.get(model_name)
        if route is None:
            raise _model_not_found(model_name)
        if not tenant.may_use(model_name):
            raise forbid_model(tenant, model_name)
        self.model = model_name
        expected = "chat" if endpoint is Endpoint.CHAT else "embeddings"
        if route.kind != expected:
            raise bad_request(
                "invalid_model_kind",
                f"model '{model_name}' serves {route.kind}, not {expected}",
                "model",
            )
        if endpoint is Endpoint.CHAT:
            check_chat_request(parsed)
        else:
            check_embeddings_request(parsed)
        timeout = self.header_timeout
        body_changed = False
        if "timeout" in parsed:
            timeout = check_timeout(parsed.pop("timeout"), "the timeout field")
            body_changed = True
        if timeout is None:
            timeout = gateway.default_timeout

        target = route.choose()
        self.target = target
        cap = target.provider.timeout_seconds
        if cap is not None and timeout > cap:
            timeout = cap
        options = parsed.get("stream_options")
        context = RequestContext(
            endpoint=endpoint,
            client_model=model_name,
            upstream_model=target.upstream_model,
            stream=parsed.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            default_max_tokens=route.default_max_tokens,
        )
        adapter = target.adapter()
        adapter.context = context
        self.adapter = adapter
        upstream = adapter.request(context, parsed, body_changed)
        action = Continue(
            set_headers=upstream.set_headers,
            remove_headers=upstream.remove_headers,
            body=upstream.body,
            metadata={
                METADATA_NAMESPACE: {
                    "provider": target.provider.name,
                    "model": model_name,
                    "upstream_model": target.upstream_model,
                }
            },
            clear_route_cache=True,
        )
        headers = action.set_headers
        headers[":path"] = upstream.path
        headers["x-envoy-upstream-rq-timeout-ms"] = str(max(1, int(timeout * 1000)))
        if upstream.body is not None:
            headers["content-length"] = str(len(upstream.body))
        remove = action.remove_headers
        # The processor may need to read the provider's body (translation, error
        # mapping), so it must arrive uncompressed.
        remove.append("accept-encoding")
        remove.append(TIMEOUT_HEADER)
        remove.extend(h for h in self.client_envoy_headers if h not in headers)
        return action

    # -- response --------------------------------------------------------

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        """Decide how the response body is handled: untouched, buffered or streamed."""
        try:
            status = int(headers.get(":status", "0"))
        except ValueError:
            status = 0
        adapter = self.adapter
        # Envoy's own local replies (timeouts, connect failures) carry no upstream
        # service time and are already OpenAI-shaped by local_reply_config.
        from_provider = UPSTREAM_TIME_HEADER in headers
        if adapter is None or not from_provider:
            self.record(status)
            return Continue()
        mode = adapter.response_mode(status, headers)
        if mode is ResponseMode.PASSTHROUGH:
            self.record(status)
            return Continue()
        self.response_status = status
        self.response_headers = headers
        if not 200 <= status < 300:
            self.response_mode = RESPONSE_ERROR
            if end_of_stream:
                return self.fail(adapter.response_error(status, headers, b""))
            # Buffer the error body; its answer replaces the whole response.
            return Continue(mode_override=ResponseMode.BUFFERED)
        self.response_mode = mode
        changes = adapter.response_headers(status, headers)
        self.record(status)
        if end_of_stream:
            raise malformed_response(adapter.provider.name, "an empty response body")
        return Continue(
            set_headers=changes.set_headers,
            remove_headers=changes.remove_headers,
            mode_override=mode,
        )

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        """Translate the provider's body (whole or chunk by chunk), or map its error."""
        adapter = self.adapter
        mode = self.response_mode
        if adapter is None or mode is None:
            return Continue()
        if mode == RESPONSE_ERROR:
            if not end_of_stream:
                self.body_buffer += chunk
                return Continue(body=b"")
            body = bytes(self.body_buffer) + chunk
            return self.fail(
                adapter.response_error(self.response_status, self.response_headers, body)
            )
        if mode is ResponseMode.BUFFERED:
            if not end_of_stream:
                # Envoy sends a BUFFERED body in one message; be safe if it does not.
                self.body_buffer += chunk
                return Continue(body=b"")
            body = bytes(self.body_buffer) + chunk
            translated = adapter.response_body(body, True)
            return Continue(body=translated, set_headers={"content-length": str(len(translated))})
        return Continue(body=adapter.response_body(chunk, end_of_stream))

    def record(self, status: int) -> None:
        """Count this request once, with its final status."""
        if self.finished:
            return
        self.finished = True
        self.status = status
        provider = self.target.provider.name if self.target is not None else ""
        seconds = time.monotonic() - self.started
        self.gateway.metrics.observe(self.model, provider, status, seconds)

    def fail(self, error: GatewayError) -> Respond:
        """Turn a GatewayError into the answer, and count it."""
        self.gateway.metrics.errors.labels(error.code).inc()
        if self.finished and self.status != error.status:
            # Already counted at response headers (translated 2xx that then failed).
            self.finished = False
        self.record(error.status)
        return Respond.error(error)


def _method_not_allowed(method: str, path: str, allowed: str) -> GatewayError:
    return GatewayError(
        405,
        "method_not_allowed",
        f"{method[:16]} is not allowed on {path[:200]}; use {allowed}",
        headers={"allow": allowed},
    )


def _model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404, "model_not_found", f"the model '{model[:256]}' does not exist", "model"
    )
