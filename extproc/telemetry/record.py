"""The record of one HTTP request, shared by its downstream stream and its attempts' streams.

A request with several targets runs on several ext_proc streams: the downstream filter's, and
one upstream-filter stream per attempt. They find the same record by the request's
`x-request-id` (`RecordBook`), and the record is emitted once, when the last holder lets go.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from extproc.providers.base import Usage

if TYPE_CHECKING:  # tracing.py builds on this module
    from extproc.governance.governor import Reservation
    from extproc.policies.chain import PolicyChain
    from extproc.telemetry.tracing import StreamTrace

# `traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>` (W3C Trace Context).
_TRACEPARENT_LENGTH = 55


def trace_id_from(traceparent: str | None) -> str:
    """The trace id of a W3C `traceparent` header ("" when absent or malformed)."""
    if traceparent is None or len(traceparent) != _TRACEPARENT_LENGTH:
        return ""
    trace_id = traceparent[3:35]
    if traceparent[2] != "-" or traceparent[35] != "-" or trace_id == "0" * 32:
        return ""
    try:
        int(trace_id, 16)
    except ValueError:
        return ""
    return trace_id.lower()


class LeadAttempt(Protocol):
    """What an attempt's stream needs of a lead target's first attempt (`InlineAttempt`)."""

    def supersede(self, tried: bool) -> None:
        """An upstream attempt took over; `tried`: the lead was tried first, and failed."""


class RequestRecord:
    """What one request did, filled in as its phases run (plain fields, no logic per phase)."""

    __slots__ = (
        "answer",
        "answer_complete",
        "attempt_body",
        "attempts",
        "cache",
        "code",
        "content",
        "cost",
        "ended_at",
        "first_chunk_at",
        "headers_at",
        "holders",
        "key_id",
        "lead",
        "method",
        "model",
        "on_close",
        "operation",
        "path",
        "policies",
        "provider",
        "provider_type",
        "request_id",
        "reservation",
        "response_model",
        "started",
        "started_wall",
        "status",
        "stream",
        "tags",
        "target",
        "tenant",
        "trace",
        "trace_id",
        "upstream_model",
        "usage",
    )

    def __init__(self, on_close: Callable[[RequestRecord], None]) -> None:
        self.on_close: Callable[[RequestRecord], None] | None = on_close
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.holders = 1
        self.request_id = ""
        self.trace_id = ""
        self.method = ""
        self.path = ""
        self.tenant = ""
        self.key_id = ""
        self.operation = ""  # gen_ai.operation.name: "chat", "embeddings" ("" for others)
        self.model = ""  # the client's model name (a configured one, once known)
        self.stream = False
        self.provider = ""  # the config's provider name of the last attempt
        self.provider_type = ""
        self.target = ""
        self.upstream_model = ""
        self.response_model: str | None = None
        self.status = 0
        self.code = ""  # the gateway's error code, "" for a success
        self.attempts = 0
        # The OpenAI body the downstream filter forwarded, for a model with several targets:
        # each attempt's upstream filter translates it for its own target (it is sent no body).
        self.attempt_body: bytes | None = None
        # A lead target's first attempt, translated by the downstream filter, until the
        # answer reaches it or an attempt's upstream filter takes over (`LeadAttempt`).
        self.lead: LeadAttempt | None = None
        self.usage: Usage | None = None
        # What the request reserved of its limits and budgets, settled when the record closes.
        self.reservation: Reservation | None = None
        self.cost = 0.0  # at the target's price (governance), once settled
        self.headers_at: float | None = None  # response headers reached the processor
        self.first_chunk_at: float | None = None  # first response body chunk (streams)
        self.ended_at: float | None = None  # the answer's last byte passed the processor
        # The provider's answer reached its end (a stream the client left did not): only then
        # is the usage it reported final, not the counts so far of a stream cut short.
        self.answer_complete = False
        # Prompt and completion text, only when the access log is told to include content.
        self.content: dict[str, object] | None = None
        # The response cache's part: "hit", "miss", "bypass", or "" (not cacheable).
        self.cache = ""
        # Tags the policies set (None: none), the chain to tell of the completion, and the
        # answer's text for policies that asked for it.
        self.tags: dict[str, str] | None = None
        self.policies: PolicyChain | None = None
        self.answer: str | None = None
        # The downstream stream's span, when traced: it ends when this record is emitted.
        self.trace: StreamTrace | None = None

    def hold(self) -> None:
        """Another stream (an attempt) works on this request."""
        self.holders += 1

    def release(self) -> None:
        """A stream of this request ended; the last one emits the record."""
        self.holders -= 1
        if self.holders <= 0 and self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            if self.ended_at is None:
                self.ended_at = time.monotonic()
            on_close(self)

    def answered(self, status: int) -> None:
        """The status the client gets (`code` is set by whoever wrote the error)."""
        self.status = status
        if self.headers_at is None:
            self.headers_at = time.monotonic()


class RecordBook:
    """Records of requests in flight by `x-request-id`, so an attempt's stream finds its own."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, RequestRecord] = {}

    def open(self, record: RequestRecord) -> bool:
        """Make `record` findable by its request id while it is open.

        False when the id is empty or another open request has it (a client may send its own
        `x-request-id`, which Envoy keeps): the record then gets a fresh id, which the request
        must carry upstream instead, so that no attempt ever finds another request's record.
        """
        request_id = record.request_id
        fresh = bool(request_id) and request_id not in self._open
        if not fresh:
            request_id = record.request_id = uuid.uuid4().hex
        self._open[request_id] = record
        return fresh

    def find(self, request_id: str | None) -> RequestRecord | None:
        """The open record of `request_id`, held for the caller (release it when done)."""
        record = self._open.get(request_id) if request_id else None
        if record is not None:
            record.hold()
        return record

    def close(self, record: RequestRecord) -> None:
        """Forget `record` (it is being emitted)."""
        if record.request_id and self._open.get(record.request_id) is record:
            del self._open[record.request_id]

    def __len__(self) -> int:
        return len(self._open)
