"""Per-request decisions, one method per ext_proc phase, with no gRPC in sight.

A `RequestPipeline` lives for one HTTP request (one ext_proc stream). Each phase
returns an action: `Continue` (with mutations and routing metadata) or
`Respond` (an immediate answer). `extproc.server.messages` turns actions into protobuf.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable
from typing import Any

from extproc.cache.key import CacheMode, cache_key, cache_mode
from extproc.cache.store import CachedAnswer, Lease
from extproc.contract import (
    GATEWAY_ERROR_HEADER,
    METADATA_NAMESPACE,
    MODEL_METADATA_KEY,
    PER_TRY_TIMEOUT_HEADER,
    PROVIDER_HEADER,
    ROUTE_METADATA_KEY,
    UPSTREAM_TIMEOUT_HEADER,
)
from extproc.decisions.auth import Tenant, forbid_model
from extproc.decisions.openai_request import Endpoint, ValidatedRequest
from extproc.decisions.overload import ShedReason
from extproc.decisions.validation import (
    check_model_id,
    check_timeout,
    parse_json_body,
    payload_too_large,
    validate,
)
from extproc.errors import GatewayError, bad_request
from extproc.gateway import Gateway, ModelRoute
from extproc.governance.governor import Reservation
from extproc.pipeline.actions import Action, Continue, Deferred, Respond
from extproc.pipeline.attempt import (
    BodyPlan,
    InlineAttempt,
    Outcome,
    answer_text,
    buffer_mode,
    response_status,
)
from extproc.pipeline.cached import CACHE_HEADER, CachePass
from extproc.policies.chain import PolicyChain, Subject
from extproc.providers.base import ResponseMode
from extproc.providers.helpers import serialize
from extproc.telemetry.record import RequestRecord, trace_id_from

TIMEOUT_HEADER = "x-gateway-timeout"

_POST_ENDPOINTS = {
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/embeddings": Endpoint.EMBEDDINGS,
}
_HEALTH_PATHS = frozenset({"/health", "/healthz"})
_MAX_REQUEST_ID = 128


class RequestPipeline:
    """The decisions for one HTTP request, across its ext_proc phases."""

    __slots__ = (
        "attempt",
        "cache",
        "client_headers",
        "endpoint",
        "finished",
        "gateway",
        "header_timeout",
        "limit_headers",
        "model",
        "new_request_id",
        "policy_headers",
        "provider",
        "raw_body",
        "reading",
        "record",
        "shed",
        "started",
        "tenant",
    )

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.started = time.monotonic()
        self.tenant: Tenant | None = None
        self.endpoint: Endpoint | None = None
        self.header_timeout: float | None = None
        self.model = ""
        self.finished = False
        self.client_headers: dict[str, str] = {}
        self.new_request_id = False
        # The request body as received, until it is routed.
        self.raw_body = b""
        self.provider = ""
        self.attempt: InlineAttempt | None = None
        # The response cache's part of this request (None: not cacheable).
        self.cache: CachePass | None = None
        # The answer's bytes as they pass, when the cache or a policy reads them.
        self.reading: bytearray | None = None
        # Headers the policies set for the provider.
        self.policy_headers: dict[str, str] = {}
        # OpenAI's x-ratelimit-* headers of the limits that applied, for the response.
        self.limit_headers: dict[str, str] = {}
        # What this request did, for metrics and the access log (none for health checks).
        self.record: RequestRecord | None = None
        # Set by the servicer when the processor is at capacity: answer 503 at once.
        self.shed: ShedReason | None = None

    # -- request headers -------------------------------------------------

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        """Route by path, authenticate, apply header-level limits."""
        method = headers.get(":method", "")
        path = headers.get(":path", "").split("?", 1)[0]
        if path in _HEALTH_PATHS:
            return Respond.json(200, {"status": "ok"})
        record = self.record = self.gateway.telemetry.new_record()
        record.started = self.started
        record.method = method[:16]
        record.path = path[:256]
        request_id = headers.get("x-request-id", "")
        record.request_id = request_id if len(request_id) <= _MAX_REQUEST_ID else ""
        record.trace_id = trace_id_from(headers.get("traceparent"))
        if self.shed is not None:
            # Before authentication, limits and the body: a shed request takes nothing.
            self.gateway.metrics.shed_requests.labels(self.shed.value).inc()
            raise _overloaded(self.shed)
        endpoint = _POST_ENDPOINTS.get(path)
        if endpoint is not None:
            if method != "POST":
                raise _method_not_allowed(method, path, "POST")
            self.tenant = tenant = self.gateway.auth.authenticate(headers.get("authorization"))
            record.tenant = tenant.name
            record.key_id = tenant.key_id
            record.operation = endpoint.value
            # A request id another request in flight has (or none) is replaced by a fresh one,
            # sent upstream: the attempts' streams find this request's record by it.
            self.new_request_id = not self.gateway.telemetry.records.open(record)
            self.endpoint = endpoint
            self._check_length(headers.get("content-length"))
            self.client_headers = headers
            raw_timeout = headers.get(TIMEOUT_HEADER)
            if raw_timeout is not None:
                self.header_timeout = check_timeout(raw_timeout, f"the {TIMEOUT_HEADER} header")
            if end_of_stream:
                raise bad_request("invalid_json", "request body is required")
            return Continue()
        if path == "/v1/models" or path.startswith("/v1/models/"):
            if method != "GET":
                raise _method_not_allowed(method, path, "GET")
            self.tenant = tenant = self.gateway.auth.authenticate(headers.get("authorization"))
            record.tenant = tenant.name
            record.key_id = tenant.key_id
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

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Action | Deferred:
        """Parse, validate, authorize the model, run the policies, then admit and route it
        (`_admit`); deferred while a policy or Redis answers."""
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
        self.raw_body = body
        model_name = check_model_id(parsed)
        route = gateway.models.get(model_name)
        if route is None:
            raise _model_not_found(model_name)
        if not tenant.may_use(model_name):
            raise forbid_model(tenant, model_name)
        self.model = model_name
        record = self.record
        if record is not None:
            record.model = model_name
        if route.endpoint is not endpoint:
            raise bad_request(
                "invalid_model_kind",
                f"model '{model_name}' serves {route.endpoint.value}, not {endpoint.value}",
                "model",
            )
        request = validate(endpoint, parsed, model_name)
        if record is not None:
            record.stream = request.stream
            if gateway.telemetry.include_content:
                record.content = {"request": _prompt(request.body)}
        if route.unsupported is not None:
            raise route.unsupported
        chain = gateway.policy_chain(tenant.name, model_name)
        if chain is None:
            return self._admit(route, request, len(body))
        if record is not None and chain.completion:
            record.policies = chain
        first = route.targets[0]
        subject = Subject(
            tenant.name,
            tenant.key_id,
            model_name,
            endpoint.value,
            first.provider.name,
            first.upstream_model,
            request.body,
            self.client_headers,
            self._switchable,
            record.request_id if record is not None else "",
        )
        if chain.inline:
            chain.run_now(subject)
            route, request = self._policed(subject, route, request)
            return self._admit(route, request, len(body))
        return Deferred(self._police(chain, subject, route, request, len(body)))

    async def _police(
        self,
        chain: PolicyChain,
        subject: Subject,
        route: ModelRoute,
        request: ValidatedRequest,
        size: int,
    ) -> Action:
        """Run a chain that awaits (async or threaded policies), then admit the request."""
        await chain.run(subject)
        route, request = self._policed(subject, route, request)
        action = self._admit(route, request, size)
        return await action.pending if isinstance(action, Deferred) else action

    def _switchable(self, model: str) -> tuple[str, str] | None:
        """(provider, upstream model) of `model` if a policy may switch this request to it."""
        route = self.gateway.models.get(model)
        tenant = self.tenant
        if route is None or tenant is None or route.endpoint is not self.endpoint:
            return None
        if not tenant.may_use(model) or route.unsupported is not None:
            return None
        first = route.targets[0]
        return first.provider.name, first.upstream_model

    def _policed(
        self, subject: Subject, route: ModelRoute, request: ValidatedRequest
    ) -> tuple[ModelRoute, ValidatedRequest]:
        """The route and request as the policies left them."""
        record = self.record
        if subject.tags and record is not None:
            record.tags = subject.tags
        self.policy_headers = subject.set_headers
        if subject.model != route.name:
            route = self.gateway.models[subject.model]  # `_switchable` checked it
            self.model = subject.model
            if record is not None:
                record.model = subject.model
        if subject.changed:
            try:
                request = validate(route.endpoint, subject.body, subject.model)._replace(
                    body_changed=True
                )
            except GatewayError as error:
                self.gateway.metrics.policy_errors.labels("(chain)", "check", "invalid").inc()
                raise GatewayError(
                    503,
                    "policy_unavailable",
                    f"the policies changed the request into an invalid one: {error.message}",
                ) from None
        return route, request

    def _admit(self, route: ModelRoute, request: ValidatedRequest, size: int) -> Action | Deferred:
        """Check the model can be served, admit the request against its limits and budgets
        (deferred while Redis answers), route it."""
        gateway = self.gateway
        tenant = self.tenant
        assert tenant is not None
        timeout = request.timeout or self.header_timeout or gateway.default_timeout
        if route.timeout_cap is not None and timeout > route.timeout_cap:
            timeout = route.timeout_cap
        available, wait, cooling = route.availability(time.monotonic())
        if not available:
            raise _unavailable(route.name, wait, cooling)
        reservation = gateway.governor.admit(
            tenant.name,
            tenant.key_id,
            route.name,
            request.body,
            size,
            request.max_tokens,
            timeout,
        )
        if isinstance(reservation, Reservation):
            self._reserved(reservation)
            return self._serve(route, request, timeout)
        return Deferred(self._serve_when_admitted(reservation, route, request, timeout))

    def _reserved(self, reservation: Reservation) -> None:
        """Hold the admitted request's reservation until its record closes (settlement)."""
        self.limit_headers = reservation.headers()
        record = self.record
        if record is not None:
            record.reservation = reservation
        else:  # nothing will close: nothing to charge
            reservation.settled = True

    async def _serve_when_admitted(
        self,
        pending: Awaitable[Reservation],
        route: ModelRoute,
        request: ValidatedRequest,
        timeout: float,
    ) -> Action:
        self._reserved(await pending)
        action = self._serve(route, request, timeout)
        return await action.pending if isinstance(action, Deferred) else action

    def _serve(
        self, route: ModelRoute, request: ValidatedRequest, timeout: float
    ) -> Action | Deferred:
        """Answer from the cache when it can (deferred while it waits for an identical
        request in flight, or for Redis), else route the request to the provider."""
        state = self.gateway.cache if route.cache else None
        if state is None:
            return self._route(route, request, timeout)
        mode = cache_mode(request.body, self.client_headers)
        if mode is None:
            return self._route(route, request, timeout)
        tenant = self.tenant
        assert tenant is not None
        key = cache_key(tenant.name, route.name, route.endpoint.value, request.body)
        cache = self.cache = CachePass(state, key, mode, route.name)
        if mode is not CacheMode.LOOKUP:
            return self._from_cache(None, route, request, timeout)
        found = state.store.lookup_now(key)
        if found is None:  # an identical request is filling it, or the store is Redis
            return Deferred(self._serve_when_looked_up(cache, route, request, timeout))
        return self._from_cache(found, route, request, timeout)

    async def _serve_when_looked_up(
        self, cache: CachePass, route: ModelRoute, request: ValidatedRequest, timeout: float
    ) -> Action:
        found = await cache.state.store.lookup(cache.key, self.gateway.cache_wait)
        return self._from_cache(found, route, request, timeout)

    def _from_cache(
        self,
        found: CachedAnswer | Lease | None,
        route: ModelRoute,
        request: ValidatedRequest,
        timeout: float,
    ) -> Action:
        cache = self.cache
        assert cache is not None
        if isinstance(found, CachedAnswer):
            respond = cache.hit(found, self.record, self.limit_headers)
            self.answer(200)
            if not found.stream:
                self._keep_answer(found.body)
            return respond
        cache.missed(found, self.record)
        return self._route(route, request, timeout)

    def _route(self, route: ModelRoute, request: ValidatedRequest, timeout: float) -> Continue:
        """Translate (one target) and route the admitted request."""
        gateway = self.gateway
        record = self.record
        headers = {UPSTREAM_TIMEOUT_HEADER: str(max(1, int(timeout * 1000)))}
        if self.policy_headers:
            headers.update(self.policy_headers)
        if gateway.per_try_timeout is not None and gateway.per_try_timeout < timeout:
            per_try = str(max(1, int(gateway.per_try_timeout * 1000)))
            headers[PER_TRY_TIMEOUT_HEADER] = per_try
        client = self.client_headers
        # x-envoy-* headers steer Envoy's router (timeouts, retries): only the gateway may set
        # them, so any a client sent are dropped upstream.
        remove = ["authorization", "accept-encoding", TIMEOUT_HEADER, CACHE_HEADER]
        remove.extend(h for h in client if h.startswith("x-envoy-"))
        lead = route.lead
        new_body: bytes | None = None
        if not route.inline:
            # Several targets: each attempt's upstream filter translates the OpenAI body for
            # its own target (attempt.py); the record keeps it for them, found by request id.
            openai = serialize(request.body) if request.body_changed else None
            if record is not None:
                record.attempt_body = self.raw_body if openai is None else openai
                if self.new_request_id:
                    headers["x-request-id"] = record.request_id
            if lead is None and openai is not None:
                new_body = openai
                headers["content-length"] = str(len(openai))
        target = route.targets[0] if route.inline else lead
        if target is not None:
            # One target: every attempt goes to it, so translate here, once. A lead target:
            # its first attempt goes out without the upstream filters (bootstrap/lead.py).
            attempt = self.attempt = InlineAttempt(gateway, target)
            attempt.record = record
            if record is not None and lead is not None:
                record.lead = attempt
            translated = attempt.translate(request)
            headers.update(translated.set_headers)
            remove.extend(translated.remove_headers)
            new_body = translated.body
        self.raw_body = b""
        # Only headers the client sent can be here to remove (fewer mutations for Envoy).
        return Continue(
            set_headers=headers,
            remove_headers=list(
                dict.fromkeys(h for h in remove if h in client and h not in headers)
            ),
            body=new_body,
            metadata={
                METADATA_NAMESPACE: {
                    ROUTE_METADATA_KEY: route.route_id,
                    MODEL_METADATA_KEY: route.name,
                }
            },
            clear_route_cache=True,
        )

    # -- response --------------------------------------------------------

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        """Count the answer (translated by its attempt: upstream, or inline here); have it
        read when the cache stores it or a policy wants its text."""
        attempt = self.attempt
        record = self.record
        if record is not None:
            record.lead = None  # the answer is here: no attempt stream takes over any more
        if attempt is not None and attempt.superseded:
            # A lead target's first attempt an upstream attempt took over: the answer is
            # that attempt's, already translated, as for any model with several targets.
            self.attempt = attempt = None
        if attempt is not None:
            action = attempt.on_response_headers(headers, end_of_stream)
            sent = attempt.outcome is not Outcome.NOT_SENT
            self.provider = attempt.target.provider.name if sent else ""
            if self.record is not None:
                self.record.provider = self.provider
            if attempt.final_status is not None:
                self.answer(attempt.final_status)
            if self.limit_headers:
                action.set_headers.update(self.limit_headers)
            usable = attempt.rejection is None and attempt.plan in _USABLE_PLANS
        else:
            self.provider = headers.get(PROVIDER_HEADER, "")
            envoy_reply = headers.get(GATEWAY_ERROR_HEADER)
            if record is not None:
                if envoy_reply is not None:
                    record.code = envoy_reply
                record.provider = self.provider
            self.answer(response_status(headers))
            action = Continue(set_headers=self.limit_headers) if self.limit_headers else Continue()
            usable = envoy_reply is None
        if self.cache is not None or self._wants_answer():
            ok = usable and response_status(headers) == 200 and not end_of_stream
            self._read_answer(action, headers, ok)
        return action

    def _wants_answer(self) -> bool:
        """A completion policy asked for the text of this (whole, not streamed) answer."""
        record = self.record
        return (
            record is not None
            and record.policies is not None
            and record.policies.wants_answer
            and not record.stream
        )

    def _reads_for(self) -> bool:
        """Whether anything still needs the answer's bytes: a cache fill, a policy."""
        cache = self.cache
        return (cache is not None and cache.fills) or self._wants_answer()

    def _read_answer(self, action: Continue, headers: dict[str, str], ok: bool) -> None:
        """Read a good 200's body as it passes (one more message per chunk for a stream)."""
        cache = self.cache
        if cache is not None:
            action.set_headers = {**action.set_headers, CACHE_HEADER: cache.result}
            if not ok:
                cache.release()  # errors are never stored
        if not ok or not self._reads_for():
            return
        if action.mode_override is None:  # the attempt passes it through: read it anyway
            streamed = self.record is not None and self.record.stream
            mode = (
                ResponseMode.STREAMED
                if streamed
                else buffer_mode(headers, self.gateway.buffer_bytes)
            )
            if mode is None:  # too large to buffer: it passes through unread
                if cache is not None:
                    cache.too_large()
                return
            action.mode_override = mode
        self.reading = bytearray()

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        """Translate an inline attempt's answer; keep what the cache or a policy reads."""
        attempt = self.attempt
        action: Action
        if attempt is not None:
            action = attempt.on_response_body(chunk, end_of_stream)
            if attempt.final_status is not None:
                self.answer(attempt.final_status)
        else:
            action = Continue()
        if self.reading is not None:
            if isinstance(action, Respond):  # the attempt answered instead: nothing to keep
                self.reading = None
            else:
                self._take(chunk if action.body is None else action.body, end_of_stream)
        return action

    def _take(self, piece: bytes, end_of_stream: bool) -> None:
        """Keep the next piece of the answer as the client gets it; at its end, store it and
        note its text."""
        buffer = self.reading
        assert buffer is not None
        buffer += piece
        cache = self.cache
        if cache is not None and cache.fills and len(buffer) > cache.state.max_entry_bytes:
            cache.too_large()
        # A whole answer's first part without its end (BUFFERED_PARTIAL: it outgrew Envoy's
        # buffer, which is larger than the body limit) ends the reading here too.
        if len(buffer) > self.gateway.max_body_bytes or not self._reads_for():
            self.reading = None  # nothing left to read it for
            return
        if not end_of_stream:
            return
        self.reading = None
        body = bytes(buffer)
        if cache is not None and cache.fills:
            cache.store(body, self.record)
        self._keep_answer(body)

    def _keep_answer(self, body: bytes) -> None:
        """The first choice's text, for the completion policies that asked for it."""
        record = self.record
        if record is not None and self._wants_answer():
            texts = answer_text(body)
            record.answer = texts[0] if texts else None

    def answer(self, status: int) -> None:
        """Note this request's final status, once."""
        if self.finished:
            return
        self.finished = True
        if self.record is not None:
            self.record.answered(status)

    def fail(self, error: GatewayError) -> Respond:
        """Turn a GatewayError into the answer, and count it."""
        self.gateway.metrics.error(error.code)
        record = self.record
        if record is not None:
            record.code = error.code
            record.ended_at = time.monotonic()  # the whole answer is this one message
        self.answer(error.status)
        return Respond.error(error)

    def finish(self) -> None:
        """The stream ended: an inline attempt settles what is open, a fill that never
        completed lets its waiting twins go, and a request whose answer never completed is
        still counted (see `Attempt.finish`)."""
        if self.cache is not None:
            self.cache.release()
        attempt = self.attempt
        if attempt is not None:
            attempt.finish()
            if attempt.final_status is not None:  # counted once: `answer` knows
                self.answer(attempt.final_status)
        record = self.record
        if record is not None:
            self.record = None
            record.lead = None
            if not self.finished:
                # The stream ended without an answer the processor saw: the client left.
                record.answered(CLIENT_CLOSED_STATUS)
            record.release()


# Attempt body plans whose 200 is the provider's usable answer (not an error rewritten).
_USABLE_PLANS = frozenset({BodyPlan.UNTOUCHED, BodyPlan.TRANSLATE, BodyPlan.STREAM})

# nginx's "client closed request": the status a request is counted with when its stream ended
# before any answer (the client went away, or Envoy gave up on the processor).
CLIENT_CLOSED_STATUS = 499


def _prompt(body: dict[str, Any]) -> Any:
    """The request's text for an access log with content: chat messages or embedding input."""
    return body.get("messages", body.get("input"))


def _method_not_allowed(method: str, path: str, allowed: str) -> GatewayError:
    return GatewayError(
        405,
        "method_not_allowed",
        f"{method[:16]} is not allowed on {path[:200]}; use {allowed}",
        headers={"allow": allowed},
    )


def _unavailable(model: str, wait: float, cooling_only: bool) -> GatewayError:
    retry = str(max(1, math.ceil(wait)))
    if cooling_only:
        return GatewayError(
            429,
            "rate_limit_exceeded",
            f"every provider of model '{model[:256]}' is rate limiting; retry in {retry} s",
            headers={"retry-after": retry},
        )
    return GatewayError(
        503,
        "no_healthy_provider",
        f"no provider of model '{model[:256]}' is healthy right now; retry in {retry} s",
        headers={"retry-after": retry},
    )


def _overloaded(reason: ShedReason) -> GatewayError:
    why = "too many requests in flight" if reason is ShedReason.IN_FLIGHT else "its event loop lags"
    return GatewayError(
        503,
        "overloaded",
        f"the gateway is overloaded ({why}); retry in 1 s",
        headers={"retry-after": "1"},
    )


def _model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404, "model_not_found", f"the model '{model[:256]}' does not exist", "model"
    )
