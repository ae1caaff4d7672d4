"""Per-attempt decisions: the upstream ext_proc filter, once per try of one request.

Envoy picks the target of each attempt (priority, weight, health) and tells us
which through the endpoint's `gw.target` metadata. We translate the (already
validated, OpenAI-shaped) request for that target, translate its answer back,
map its errors, and feed its outcome to the target's circuit breaker. Header
changes of an earlier attempt persist into later ones, so every attempt first
removes every credential header any provider type uses.

A model with one target has no upstream filter: its `RequestPipeline` runs the
same decisions inline (`inline=True`), once per request, and then also sees
Envoy's own replies, recognised by their `x-gateway-error` marker.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from extproc.contract import GATEWAY_ERROR_HEADER, NOT_SENT_CODES, PROVIDER_HEADER
from extproc.decisions.breaker import Admission
from extproc.errors import GatewayError
from extproc.gateway import Gateway, Target
from extproc.pipeline.actions import Continue, Respond
from extproc.providers.base import Endpoint, ProviderAdapter, RequestContext, ResponseMode
from extproc.providers.errors import malformed_response, retry_after_from

# Every header through which some provider type authenticates or is versioned.
CREDENTIAL_HEADERS = (
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "anthropic-version",
    "anthropic-beta",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "accept",
    "x-envoy-original-host",
)
_ERROR = "error"


class AttemptPipeline:
    """One attempt of one request to one target.

    Either its own upstream ext_proc stream (models with several targets: Envoy picks the
    target per attempt) or run inline by the downstream `RequestPipeline` (models with one
    target: every attempt goes to it, so the request is translated once, downstream).
    """

    __slots__ = (
        "adapter",
        "admitted_at",
        "body_buffer",
        "endpoint",
        "final_status",
        "gateway",
        "inline",
        "mode",
        "outcome",
        "probe",
        "response_headers",
        "status",
        "target",
    )

    def __init__(self, gateway: Gateway, target: Target, inline: bool = False) -> None:
        self.gateway = gateway
        self.target = target
        self.inline = inline
        # Not from :path: an earlier attempt may already have rewritten it. The
        # downstream filter checked that the endpoint matches the model's kind.
        route = target.route
        self.endpoint: Endpoint | None = None
        if route is not None:
            self.endpoint = Endpoint.CHAT if route.kind == "chat" else Endpoint.EMBEDDINGS
        self.adapter: ProviderAdapter | None = None
        self.probe = False
        self.admitted_at: float | None = None
        self.outcome: str | None = None
        self.status = 0
        self.mode: ResponseMode | str | None = None
        self.response_headers: dict[str, str] = {}
        self.body_buffer = bytearray()
        # The status the client gets, once known (after any error mapping).
        self.final_status: int | None = None

    # -- request ---------------------------------------------------------

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Continue:
        """Nothing to decide yet: the body carries the request."""
        return Continue()

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Continue | Respond:
        """Translate this attempt's request for its target, and take a breaker slot."""
        parsed = orjson.loads(body)  # validated by the downstream filter
        if not isinstance(parsed, dict):
            raise RuntimeError("attempt without a validated OpenAI request")
        return self.translate(parsed, False)

    def translate(self, parsed: dict[str, Any], body_changed: bool) -> Continue:
        """The changes that make the validated OpenAI request `parsed` this target's request."""
        target = self.target
        route = target.route
        if self.endpoint is None or route is None:
            raise RuntimeError("attempt without a routed model")
        options = parsed.get("stream_options")
        context = RequestContext(
            endpoint=self.endpoint,
            client_model=str(parsed.get("model", route.name)),
            upstream_model=target.upstream_model,
            stream=parsed.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            default_max_tokens=route.default_max_tokens,
        )
        adapter = target.adapter()
        adapter.context = context
        self.adapter = adapter
        upstream = adapter.request(context, parsed, body_changed)
        # Envoy routed here because health checks said the target may take
        # traffic; admission only decides whether this attempt is a probe.
        self.admitted_at = time.monotonic()
        self.probe = target.breaker.admit(self.admitted_at) is Admission.PROBE
        headers = upstream.set_headers
        headers[":path"] = upstream.path
        if upstream.body is not None:
            headers["content-length"] = str(len(upstream.body))
        remove = [h for h in CREDENTIAL_HEADERS if h not in headers]
        remove.extend(h for h in upstream.remove_headers if h not in headers and h not in remove)
        return Continue(set_headers=headers, remove_headers=remove, body=upstream.body)

    # -- response --------------------------------------------------------

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Continue:
        """Record the outcome; choose how the body is translated."""
        try:
            status = int(headers.get(":status", "0"))
        except ValueError:
            status = 0
        self.status = status
        tag = {PROVIDER_HEADER: self.target.provider.name}
        envoy_reply = headers.get(GATEWAY_ERROR_HEADER) if self.inline else None
        if envoy_reply is not None:
            # Not the provider's answer but Envoy's own, already in OpenAI form (inline
            # attempts see those; upstream filters never do). A timeout or a failed
            # connection counts against the target; no request sent at all does not.
            self.final_status = status
            if envoy_reply in NOT_SENT_CODES:
                self.outcome = "not_sent"
                if self.probe:
                    self.target.breaker.release_probe()
                return Continue()  # no provider was involved: no provider header
            self._record(status, headers)
            return Continue(set_headers=tag)
        self._record(status, headers)
        adapter = self.adapter
        if adapter is None:
            self.final_status = status
            return Continue(set_headers=tag)
        mode = adapter.response_mode(status, headers)
        if mode is ResponseMode.PASSTHROUGH:
            self.final_status = status
            return Continue(set_headers=tag)
        if not 200 <= status < 300:
            self.mode = _ERROR
            self.response_headers = headers
            if end_of_stream:
                return Continue(set_headers={**tag, **self._error_headers(b"")[0]})
            return Continue(set_headers=tag, mode_override=ResponseMode.BUFFERED)
        self.mode = mode
        changes = adapter.response_headers(status, headers)
        if end_of_stream:
            raise malformed_response(adapter.provider.name, "an empty response body")
        if mode is ResponseMode.STREAMED:
            self.final_status = status  # errors after this are events in the stream
        return Continue(
            set_headers={**tag, **changes.set_headers},
            remove_headers=changes.remove_headers,
            mode_override=mode,
        )

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Continue:
        """Translate the provider's body, whole or chunk by chunk, or rewrite its error."""
        adapter = self.adapter
        mode = self.mode
        if adapter is None or mode is None:
            return Continue()
        if mode is ResponseMode.STREAMED:
            return Continue(body=adapter.response_body(chunk, end_of_stream))
        if not end_of_stream:
            self.body_buffer += chunk  # BUFFERED arrives whole; be safe if it does not
            return Continue(body=b"")
        body = bytes(self.body_buffer) + chunk
        if mode == _ERROR:
            headers, error_body = self._error_headers(body)
            return Continue(set_headers=headers, body=error_body)
        try:
            translated = adapter.response_body(body, True)
        except GatewayError as error:
            self._count_failure_late(error)
            return Continue(
                set_headers=self._status_headers(error, error.body()), body=error.body()
            )
        self.final_status = self.status
        return Continue(body=translated, set_headers={"content-length": str(len(translated))})

    def _error_headers(self, body: bytes) -> tuple[dict[str, str], bytes]:
        """The provider's error as ours: status (retriable ones stay retriable) and body."""
        assert self.adapter is not None
        error = self.adapter.response_error(self.status, self.response_headers, body)
        payload = error.body()
        return self._status_headers(error, payload), payload

    def _status_headers(self, error: GatewayError, payload: bytes) -> dict[str, str]:
        self.gateway.metrics.error(error.code)
        self.final_status = error.status
        return {
            ":status": str(error.status),
            "content-type": "application/json",
            "content-length": str(len(payload)),
            **error.headers,
        }

    # -- outcome ---------------------------------------------------------

    def _record(self, status: int, headers: dict[str, str]) -> None:
        breaker = self.target.breaker
        now = time.monotonic()
        if status >= 500 or status == 0:
            breaker.record_failure(now, self.probe, f"HTTP {status}", admitted_at=self.admitted_at)
            self.outcome = "failure"
        elif status == 429:
            breaker.cool_down(now, float(retry_after_from(headers)))
            if self.probe:
                breaker.release_probe()
            self.outcome = "rate_limited"
        else:
            breaker.record_success(now, self.probe, admitted_at=self.admitted_at)
            self.outcome = "success" if status < 400 else "client_error"
        self._count()

    def _count_failure_late(self, error: GatewayError) -> None:
        """A 2xx whose body turned out to be garbage counts as a failure too."""
        if self.outcome == "success":
            self.target.breaker.record_failure(
                time.monotonic(), False, error.code, admitted_at=self.admitted_at
            )

    def _count(self) -> None:
        route = self.target.route
        self.gateway.metrics.attempt(
            route.name if route else "", self.target.provider.name, self.outcome or "unknown"
        )

    def fail(self, error: GatewayError) -> Respond:
        """An error before the attempt reached the provider: answer it directly."""
        self.gateway.metrics.error(error.code)
        return Respond.error(error)

    def finish(self) -> None:
        """The attempt's stream ended. Without an answer, an upstream-filter attempt is a
        failure (the provider reset it, or the client left: that filter cannot tell them apart).
        An inline attempt's stream is the client's own: provider resets and timeouts reach it
        as Envoy's marked replies, so ending without one means the client went away, which
        says nothing about the provider."""
        if self.adapter is None or self.outcome is not None:
            return
        if self.inline:
            if self.probe:
                self.target.breaker.release_probe()
            self.outcome = "client_gone"
        else:
            self.target.breaker.record_failure(
                time.monotonic(), self.probe, "no response", admitted_at=self.admitted_at
            )
            self.outcome = "no_response"
        self._count()
