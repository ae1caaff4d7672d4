"""Per-attempt decisions: one try of one request to one target.

We translate the validated OpenAI request for the target, translate its answer back, map its
errors, keep what the answer said (usage, model) and feed its outcome to the target's circuit
breaker. Where an attempt runs is the one thing that differs, and it lives in the two
subclasses only:

- `UpstreamAttempt`: its own upstream ext_proc stream, once per try (models with several
  targets). Envoy picks the target per try and names it in the endpoint's `gw.target`
  metadata. Header changes of an earlier try persist into later ones, so every try first
  removes every credential header any provider type uses.
- `InlineAttempt`: run by the downstream `RequestPipeline` (models with one target: every try
  goes to it, so the request is translated once). It also sees Envoy's own replies, known by
  their `x-gateway-error` marker, and its stream is the client's.
"""

from __future__ import annotations

import logging
import time
from enum import Enum, StrEnum, auto

import orjson

from extproc.contract import (
    ATTEMPT_COUNT_HEADER,
    GATEWAY_ERROR_HEADER,
    NOT_SENT_CODES,
    PROVIDER_HEADER,
)
from extproc.decisions.breaker import Admission
from extproc.decisions.openai_request import ValidatedRequest
from extproc.decisions.validation import check_model_id, validate
from extproc.errors import GatewayError
from extproc.gateway import Gateway, Target
from extproc.pipeline.actions import Action, Continue, Respond
from extproc.providers.base import ProviderAdapter, ResponseMode, Translated, Usage
from extproc.providers.errors import malformed_response, response_too_large, retry_after_from
from extproc.telemetry.record import RequestRecord

log = logging.getLogger("extproc.attempt")

# Envoy's answer when a provider drops the connection while the body is being buffered (the
# client has seen nothing yet): a local reply 502 `provider_error`.
CUT_SHORT_STATUS = 502
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


class Outcome(StrEnum):
    """How an attempt ended, for the breaker and `gateway_upstream_attempts_total`."""

    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # a 4xx other than 429: the request's fault, not the target's
    FAILURE = "failure"  # 5xx, a reset or timeout, or a 2xx the client could not use
    RATE_LIMITED = "rate_limited"
    NOT_SENT = "not_sent"  # Envoy answered without sending anything (not counted)
    CLIENT_GONE = "client_gone"  # inline: the client left before any answer
    NO_RESPONSE = "no_response"  # upstream filter: the try ended without an answer


class BodyPlan(Enum):
    """What the attempt does with the response body, decided at the response headers."""

    UNTOUCHED = auto()  # Envoy passes it through (or there is none to see)
    TRANSLATE = auto()  # a whole 2xx answer, translated (BUFFERED)
    STREAM = auto()  # a 2xx stream, translated chunk by chunk (STREAMED)
    MAP_ERROR = auto()  # a provider error, rewritten as the gateway's (BUFFERED)
    REJECT = auto()  # a 2xx the client could not use, replaced by a 502 (BUFFERED)


def response_status(headers: dict[str, str]) -> int:
    """The response's `:status` (0 when missing or not a number)."""
    try:
        return int(headers.get(":status", "0"))
    except ValueError:
        return 0


def buffer_mode(headers: dict[str, str], limit: int) -> ResponseMode | None:
    """How to have a whole response body buffered by Envoy, whose buffer holds `limit` bytes.

    BUFFERED when its `content-length` fits; None when it says more (never ask Envoy to buffer
    it: Envoy 1.40 then stalls the answer until the route timeout, and may crash as the
    stream ends, docs/architecture.md "Oversized answers"); BUFFERED_PARTIAL when the length
    is not known (chunked): Envoy hands over at most its buffer, and the processor learns an
    answer outgrew it from a first part without end_of_stream.
    """
    length = headers.get("content-length")
    if length is None or not length.isdigit():  # no length, or one Envoy would have refused
        return ResponseMode.BUFFERED_PARTIAL
    return ResponseMode.BUFFERED if int(length) <= limit else None


_BUFFERED_PLANS = frozenset({BodyPlan.TRANSLATE, BodyPlan.MAP_ERROR, BodyPlan.REJECT})


class Attempt:
    """One attempt of one request to one target; see the subclasses for where it runs."""

    __slots__ = (
        "adapter",
        "admitted_at",
        "final_status",
        "gateway",
        "outcome",
        "plan",
        "probe",
        "record",
        "rejection",
        "response_headers",
        "response_model",
        "status",
        "streaming",
        "superseded",
        "target",
        "usage",
    )

    def __init__(self, gateway: Gateway, target: Target) -> None:
        self.gateway = gateway
        self.target = target
        self.adapter: ProviderAdapter | None = None
        self.probe = False
        self.admitted_at: float | None = None
        self.outcome: Outcome | None = None
        self.status = 0
        self.plan = BodyPlan.UNTOUCHED
        self.rejection: GatewayError | None = None
        self.response_headers: dict[str, str] = {}
        # The status the client gets, once known (after any error mapping).
        self.final_status: int | None = None
        # What the answer said (translated or read): the record accounting will read.
        self.usage: Usage | None = None
        self.response_model: str | None = None
        # The request's record (attempts, usage, times), when it has one.
        self.record: RequestRecord | None = None
        self.streaming = False  # counted in gateway_response_streams_active
        # A lead's first attempt an upstream attempt took over (`InlineAttempt.supersede`).
        self.superseded = False

    # -- where the attempt runs (the subclasses) --------------------------------------------

    def _envoy_reply(self, headers: dict[str, str]) -> str | None:
        """The error code when these response headers are Envoy's own reply, not a provider's."""
        raise NotImplementedError

    def _unanswered(self) -> Outcome:
        """Settle the breaker for an attempt whose stream ended without an answer."""
        raise NotImplementedError

    # -- request ---------------------------------------------------------------------------

    def translate(self, request: ValidatedRequest) -> Continue:
        """The changes that make the validated OpenAI request this target's request."""
        target = self.target
        adapter = target.adapter()
        self.adapter = adapter
        upstream = adapter.request(request)
        record = self.record
        if record is not None:
            record.attempts += 1
            record.provider = target.provider.name
            record.provider_type = target.provider.type.value
            record.target = target.id
            record.upstream_model = target.upstream_model
            record.code = ""  # an earlier attempt's error is not this one's
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

    # -- response --------------------------------------------------------------------------

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Continue:
        """Record the outcome; choose how the body is handled."""
        status = self.status = response_status(headers)
        tag = {PROVIDER_HEADER: self.target.provider.name}
        envoy_reply = self._envoy_reply(headers)
        if envoy_reply is not None:
            # Not the provider's answer but Envoy's own, already in OpenAI form. A timeout or a
            # failed connection counts against the target; no request sent at all does not.
            self.final_status = status
            if self.record is not None:
                self.record.code = envoy_reply
            if envoy_reply in NOT_SENT_CODES:
                self.outcome = Outcome.NOT_SENT
                self._release_probe()
                return Continue()  # no provider was involved: no provider header
            self._record(status, headers)
            return Continue(set_headers=tag)
        adapter = self.adapter
        if adapter is None:
            self._record(status, headers)
            self.final_status = status
            return Continue(set_headers=tag)
        mode = adapter.response_mode(status, headers)
        self.rejection = adapter.unusable_answer(status, headers)
        translated = 200 <= status < 300 and mode is not ResponseMode.PASSTHROUGH
        if self.rejection is None and translated and end_of_stream:  # nothing to translate
            self.rejection = malformed_response(adapter.provider.name, "an empty answer")
        whole = translated and mode is not ResponseMode.STREAMED
        if whole and self.rejection is None:
            limit = self.gateway.buffer_bytes
            buffered = buffer_mode(headers, limit)
            if buffered is not None:
                mode = buffered
            elif adapter.rewrites_answers:
                self.rejection = response_too_large(adapter.provider.name, limit)
            else:
                mode = ResponseMode.PASSTHROUGH
                self._unread(headers.get("content-length"))
        if self.rejection is not None:
            self._record_failure(self.rejection.code)
            return self._buffer_error(BodyPlan.REJECT, headers, end_of_stream, tag)
        self._record(status, headers)
        if mode is ResponseMode.PASSTHROUGH:
            self.final_status = status
            return Continue(set_headers=tag)
        if not 200 <= status < 300:
            return self._buffer_error(BodyPlan.MAP_ERROR, headers, end_of_stream, tag)
        changes = adapter.response_headers(status, headers)
        if mode is ResponseMode.STREAMED:
            self.plan = BodyPlan.STREAM
            self.final_status = status  # errors after this are events in the stream
            self.streaming = True
            self.gateway.metrics.response_streams.inc()
        else:
            self.plan = BodyPlan.TRANSLATE
        return Continue(
            set_headers={**tag, **changes.set_headers},
            remove_headers=changes.remove_headers,
            mode_override=mode,
        )

    def _buffer_error(
        self, plan: BodyPlan, headers: dict[str, str], end_of_stream: bool, tag: dict[str, str]
    ) -> Continue:
        """Have the error body buffered, to be replaced by ours. At once if there is none, or
        if it is too large to buffer (then Envoy drops it: our body replaces it whole)."""
        self.plan = plan
        self.response_headers = headers
        mode = buffer_mode(headers, self.gateway.buffer_bytes)
        if end_of_stream or mode is None:
            error_headers, body = self._error_answer(b"")
            return Continue(set_headers={**tag, **error_headers}, body=body)
        return Continue(set_headers=tag, mode_override=mode)

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        """Translate the provider's body, whole or chunk by chunk, or rewrite its error."""
        adapter = self.adapter
        plan = self.plan
        if adapter is None or plan is BodyPlan.UNTOUCHED:
            return Continue()
        record = self.record
        if record is not None:
            now = time.monotonic()
            if record.first_chunk_at is None and chunk:
                record.first_chunk_at = now
            if end_of_stream:
                record.ended_at = now
                record.answer_complete = True
        if plan is BodyPlan.STREAM:
            out = self._keep(adapter.stream_chunk(chunk, end_of_stream))
            if end_of_stream:
                self._stream_ended()
            # A pass-through stream read for its usage goes on as it came: no body mutation.
            return Continue() if out is chunk else Continue(body=out)
        if not end_of_stream or len(chunk) > self.gateway.buffer_bytes:
            # Only BUFFERED_PARTIAL sends a body without its end: the first part of an answer
            # that outgrew Envoy's buffer, and nothing of it will follow. It also hands over
            # a whole body past its buffer when all of it came before our headers answer:
            # that one is refused too, so the outcome does not depend on that race.
            return self._outgrown(plan)
        body = chunk
        if plan is not BodyPlan.TRANSLATE:
            headers, error_body = self._error_answer(body)
            return Continue(set_headers=headers, body=error_body)
        try:
            translated = self._keep(adapter.response_body(body))
        except GatewayError as error:
            self._fail_late(error.code)
            return Continue(
                set_headers=self._status_headers(error, error.body()), body=error.body()
            )
        self.final_status = self.status
        record = self.record
        if record is not None and record.content is not None:
            record.content["response"] = answer_text(translated)
        if translated is chunk:  # read only: it goes on as it came
            return Continue()
        return Continue(body=translated, set_headers={"content-length": str(len(translated))})

    def _outgrown(self, plan: BodyPlan) -> Action:
        """A buffered answer of unknown length outgrew Envoy's buffer (BUFFERED_PARTIAL sent
        its first part, or all of it past the buffer): it is answered now, even one only read.
        Letting the rest pass would be Envoy 1.40's BUFFERED_PARTIAL bug: an empty last chunk
        that arrives while the first part is with the processor is dropped, and the answer
        never ends (docs/architecture.md "Oversized answers")."""
        assert self.adapter is not None
        if plan is BodyPlan.TRANSLATE:
            error = response_too_large(self.adapter.provider.name, self.gateway.buffer_bytes)
            self._fail_late(error.code)
        else:  # the provider's error (or the 2xx refused) without its body
            error = self._mapped_error(b"")
        self._note_error(error)
        return Respond.error(error)

    def _unread(self, length: str | None) -> None:
        """Note a whole answer passed through unread, too large to buffer: its usage is not
        known (accounting charges the admission estimate, `gateway_usage_estimated_total`)."""
        size = f"{length} bytes" if length is not None else "an unknown length"
        log.warning(
            "a whole answer of %s from provider '%s' passes through unread: more than the "
            "response buffer of %d bytes",
            size,
            self.target.provider.name,
            self.gateway.buffer_bytes,
        )

    def _keep(self, translated: Translated) -> bytes:
        """Remember what the answer said so far; the bytes to send on."""
        record = self.record
        if translated.usage is not None:
            self.usage = translated.usage
            if record is not None:
                record.usage = translated.usage
        if translated.model is not None:
            self.response_model = translated.model
            if record is not None:
                record.response_model = translated.model
        if translated.complete and record is not None:
            # The stream's last event passed: its usage is final even if the client closes
            # at [DONE], before the response's own end reaches us (the openai SDK does).
            record.answer_complete = True
        return translated.body

    def _error_answer(self, body: bytes) -> tuple[dict[str, str], bytes]:
        """The provider's error (or the rejection of its 2xx) as ours: status (retriable ones
        stay retriable), headers and body."""
        error = self._mapped_error(body)
        payload = error.body()
        return self._status_headers(error, payload), payload

    def _mapped_error(self, body: bytes) -> GatewayError:
        """The rejection of a 2xx, or the provider's error mapped from its body."""
        assert self.adapter is not None
        return self.rejection or self.adapter.response_error(
            self.status, self.response_headers, body
        )

    def _status_headers(self, error: GatewayError, payload: bytes) -> dict[str, str]:
        self._note_error(error)
        return {
            ":status": str(error.status),
            "content-type": "application/json",
            "content-length": str(len(payload)),
            **error.headers,
        }

    def _note_error(self, error: GatewayError) -> None:
        """The client gets this error: count it, and note its status and code."""
        self.gateway.metrics.error(error.code)
        self.final_status = error.status
        if self.record is not None:
            self.record.code = error.code

    # -- outcome ---------------------------------------------------------------------------

    def _record(self, status: int, headers: dict[str, str]) -> None:
        breaker = self.target.breaker
        now = time.monotonic()
        if status >= 500 or status == 0:
            self._record_failure(f"HTTP {status}")
            return
        if status == 429:
            breaker.cool_down(now, float(retry_after_from(headers)))
            self._release_probe()
            self.outcome = Outcome.RATE_LIMITED
        else:
            breaker.record_success(now, self.probe, admitted_at=self.admitted_at)
            self.outcome = Outcome.SUCCESS if status < 400 else Outcome.CLIENT_ERROR
        self._count()

    def _breaker_failure(self, reason: str, probe: bool) -> None:
        self.target.breaker.record_failure(
            time.monotonic(), probe, reason, admitted_at=self.admitted_at
        )

    def _record_failure(self, reason: str) -> None:
        self._breaker_failure(reason, self.probe)
        self.outcome = Outcome.FAILURE
        self._count()

    def _fail_late(self, reason: str) -> None:
        """An answer whose headers were counted a success (or a client error) whose body then
        failed (garbage, or cut short) counts as a failure too."""
        if self.outcome in (Outcome.SUCCESS, Outcome.CLIENT_ERROR):
            self._breaker_failure(reason, False)

    def _release_probe(self) -> None:
        if self.probe:
            self.target.breaker.release_probe()

    def _count(self) -> None:
        outcome = self.outcome
        assert outcome is not None
        self.gateway.metrics.attempt(self.target.route.name, self.target.provider.name, outcome)

    def finish(self) -> None:
        """The attempt's stream ended; settle what is still open.

        Without an answer: where it ran decides (`_unanswered`). With the headers of an
        answer whose body was being buffered but never came whole, the provider dropped the
        connection (or, rarely, the client left or the request timed out meanwhile): Envoy
        answered the client itself, a 502 for a drop; it counts as a failure of the target.
        A stream cut short is not counted against the target: a client that stops reading
        ends it the same way.
        """
        self._stream_ended()
        if self.adapter is None:
            return
        if self.outcome is None:
            self.outcome = self._unanswered()
            self._count()
        elif self.final_status is None and self.plan in _BUFFERED_PLANS:
            self._fail_late("body cut short")
            self.final_status = CUT_SHORT_STATUS

    def _stream_ended(self) -> None:
        if self.streaming:
            self.streaming = False
            self.gateway.metrics.response_streams.dec()


def answer_text(body: bytes) -> list[str | None] | None:
    """The texts of an OpenAI chat completion's choices (for an access log with content)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        return None
    texts: list[str | None] = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        texts.append(content if isinstance(content, str) else None)
    return texts


class InlineAttempt(Attempt):
    """The attempt of a one-target model, run by the downstream filter's `RequestPipeline`."""

    __slots__ = ()

    def _envoy_reply(self, headers: dict[str, str]) -> str | None:
        # Envoy's own replies (timeouts, connect failures, no healthy upstream) reach the
        # downstream filter marked by its local-reply mappers.
        return headers.get(GATEWAY_ERROR_HEADER)

    def _unanswered(self) -> Outcome:
        # The stream is the client's own: provider resets and timeouts reach it as Envoy's
        # marked replies, so ending without one means the client went away, which says
        # nothing about the provider.
        self._release_probe()
        return Outcome.CLIENT_GONE

    def supersede(self, tried: bool) -> None:
        """A lead target's first attempt, translated here, that an attempt's upstream filter
        took over: Envoy retried after it failed (`tried`: its status is not seen, so it counts
        as a failure of the lead, a 429's Retry-After included), or sent the first attempt to
        another target (its health checks and the breaker disagreed): nothing was sent."""
        self.superseded = True
        if tried:
            self._record_failure("failed, retried elsewhere")
            return
        self._release_probe()
        self.outcome = Outcome.NOT_SENT
        record = self.record
        if record is not None:
            record.attempts -= 1


class UpstreamAttempt(Attempt):
    """An attempt on its own upstream ext_proc stream (models with several targets)."""

    __slots__ = ()

    def _envoy_reply(self, headers: dict[str, str]) -> str | None:
        return None  # the upstream filter only ever sees the provider's answer

    def _unanswered(self) -> Outcome:
        # The provider reset the try, or the client left: this filter cannot tell them apart.
        self._breaker_failure("no response", self.probe)
        return Outcome.NO_RESPONSE

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Continue:
        """Find the request's record (by its id) and translate the OpenAI body the downstream
        filter forwarded for this try's target: the answer replaces the body (Envoy sends this
        filter none), and takes a breaker slot. The first attempt stream of a lead target's
        request takes over from the downstream filter's translation (`supersede`)."""
        record = self.record = self.gateway.telemetry.records.find(headers.get("x-request-id"))
        body = record.attempt_body if record is not None else None
        if record is None or body is None:
            raise RuntimeError("attempt without its request's record")
        lead, record.lead = record.lead, None
        if lead is not None:
            lead.supersede(tried=headers.get(ATTEMPT_COUNT_HEADER, "1") != "1")
        parsed = orjson.loads(body)  # the OpenAI body the downstream filter validated
        if not isinstance(parsed, dict):
            raise RuntimeError("attempt without a validated OpenAI request")
        action = self.translate(
            validate(self.target.route.endpoint, parsed, check_model_id(parsed))
        )
        action.keep_mode = True
        return action

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Continue:
        """Not sent by the upstream filter (its mode has no request body); the headers answer
        replaced the body already."""
        return Continue()

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Continue:
        """As every attempt; a success also ends the retries, so the body kept for them goes."""
        action = super().on_response_headers(headers, end_of_stream)
        record = self.record
        if record is not None and 200 <= self.status < 300:
            record.attempt_body = None
        return action

    def finish(self) -> None:
        """Settle the attempt, and let go of the request's record."""
        try:
            super().finish()
        finally:
            record, self.record = self.record, None
            if record is not None:
                record.release()

    def fail(self, error: GatewayError) -> Respond:
        """An error before the attempt reached the provider: answer it directly."""
        self.gateway.metrics.error(error.code)
        return Respond.error(error)
