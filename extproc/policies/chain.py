"""Running a request's policies: in order, each under its deadline, each failure per `on_error`.

A `PolicyChain` is built once per (tenant, model) from the config's policy lists (gateway's,
then the tenant's, then the model's). `run_now` runs chains whose policies are all inline;
`run` awaits the others (async checks on the loop, plain ones in a worker thread). Each
decision changes the `Subject` (the request being admitted) or raises the client's error.
`complete` tells the policies that listen how a request ended, never delaying its answer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, auto
from types import MappingProxyType
from typing import Any

from extproc.config.schema import PolicyConfig
from extproc.errors import GatewayError
from extproc.metrics import Metrics
from extproc.policies.api import (
    MAX_MESSAGE_CHARS,
    MAX_TAG_VALUE_CHARS,
    TAG_PATTERN,
    Allow,
    Completion,
    Deny,
    Modify,
    Policy,
    PolicyRequest,
)
from extproc.policies.registry import build
from extproc.telemetry.record import RequestRecord

log = logging.getLogger("extproc.policies")

# Headers a policy may never set upstream: routing, framing, credentials, Envoy's controls and
# the gateway's own.
_PROTECTED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "x-amz-date",
        "x-amz-security-token",
        "x-amz-content-sha256",
        "x-request-id",
        "traceparent",
        "tracestate",
    }
)
_PROTECTED_PREFIXES = (":", "x-envoy-", "x-gateway-")
_HEADER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_MAX_HEADER_VALUE = 8192
_MAX_TAGS = 32


class Mode(Enum):
    """Where a policy's call runs."""

    INLINE = auto()  # a plain call on the event loop (fast, trusted)
    THREAD = auto()  # a plain call in a worker thread, awaited under the deadline
    ASYNC = auto()  # a coroutine on the event loop, awaited under the deadline


class PolicyError(Exception):
    """A policy's call failed: raised, overran its deadline, or answered nonsense."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # raised | timeout | invalid (a metric label)


def _mode(function: Any, inline: bool) -> Mode:
    if inspect.iscoroutinefunction(function):
        return Mode.ASYNC
    return Mode.INLINE if inline else Mode.THREAD


@dataclass(frozen=True, slots=True)
class BoundPolicy:
    """One configured use of a policy, ready to run."""

    id: str
    policy: Policy
    fail_open: bool  # on_error: allow
    timeout: float
    mode: Mode
    headers: frozenset[str]
    completion_mode: Mode | None  # None: the policy does not listen to completions
    wants_answer: bool

    @classmethod
    def of(cls, config: PolicyConfig) -> BoundPolicy:
        """Build the policy of `config` (its options were checked when the config loaded)."""
        policy = build(config)
        inline = bool(getattr(type(policy), "inline", False))
        completed = getattr(type(policy), "completed", None)
        listens = completed is not None and completed is not Policy.completed
        return cls(
            id=config.policy_id,
            policy=policy,
            fail_open=config.on_error == "allow",
            timeout=config.timeout_ms / 1000,
            mode=_mode(type(policy).check, inline),
            headers=frozenset(h.lower() for h in getattr(policy, "headers", ())),
            completion_mode=_mode(completed, inline) if listens else None,
            wants_answer=bool(getattr(policy, "wants_answer", False)),
        )


class Subject:
    """The request under the policies: what they see and what they changed."""

    __slots__ = (
        "body",
        "changed",
        "client_headers",
        "endpoint",
        "key_id",
        "model",
        "params",
        "provider",
        "request_id",
        "resolve",
        "set_headers",
        "tags",
        "tenant",
        "upstream_model",
    )

    def __init__(
        self,
        tenant: str,
        key_id: str,
        model: str,
        endpoint: str,
        provider: str,
        upstream_model: str,
        body: dict[str, Any],
        client_headers: Mapping[str, str],
        resolve: Callable[[str], tuple[str, str] | None],
        request_id: str = "",
    ) -> None:
        self.request_id = request_id
        self.tenant = tenant
        self.key_id = key_id
        self.model = model
        self.endpoint = endpoint
        self.provider = provider
        self.upstream_model = upstream_model
        self.body = body
        self.client_headers = client_headers
        # Another model's (provider, upstream model) if this tenant may switch to it, else None.
        self.resolve = resolve
        self.changed = False  # body differs from the validated request's
        # What policies see of the body but its messages; rebuilt only after a change.
        self.params: Mapping[str, Any] | None = None
        self.set_headers: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    def view(self, headers: frozenset[str]) -> PolicyRequest:
        """What a policy that reads `headers` sees now."""
        body = self.body
        messages = body.get("messages")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        client = self.client_headers
        return PolicyRequest(
            tenant=self.tenant,
            key_id=self.key_id,
            model=self.model,
            endpoint=self.endpoint,
            provider=self.provider,
            upstream_model=self.upstream_model,
            messages=messages if isinstance(messages, list) else [],
            params=self._params(),
            max_tokens=max_tokens if type(max_tokens) is int else None,
            stream=body.get("stream") is True,
            headers={h: client[h] for h in headers if h in client},
            tags=MappingProxyType(self.tags),
            request_id=self.request_id,
        )

    def _params(self) -> Mapping[str, Any]:
        params = self.params
        if params is None:
            body = self.body
            params = self.params = MappingProxyType(
                {k: v for k, v in body.items() if k != "messages"}
            )
        return params

    def _own_body(self) -> dict[str, Any]:
        self.params = None  # the body is about to change
        if not self.changed:
            self.body = dict(self.body)  # the first change copies; later ones edit the copy
            self.changed = True
        return self.body

    def apply(self, modify: Modify) -> None:
        """Apply a policy's changes; PolicyError("invalid") for changes the gateway refuses."""
        _check_modify(modify, self.endpoint)
        if modify.model is not None and modify.model != self.model:
            resolved = self.resolve(modify.model)
            if resolved is None:
                raise PolicyError(
                    "invalid", f"model '{modify.model[:256]}' is not one this request may use"
                )
            self._own_body()["model"] = modify.model
            self.model = modify.model
            self.provider, self.upstream_model = resolved
        if modify.messages is not None:
            self._own_body()["messages"] = list(modify.messages)
        if modify.system_prompt:
            body = self._own_body()
            body["messages"] = with_system_prompt(body.get("messages") or [], modify.system_prompt)
        if modify.max_tokens is not None:
            key = "max_completion_tokens" if "max_completion_tokens" in self.body else "max_tokens"
            current = self.body.get(key)
            if type(current) is not int or current > modify.max_tokens:
                self._own_body()[key] = modify.max_tokens
        self.set_headers.update(modify.set_headers)
        for name, value in modify.tags.items():
            self.tags[name] = value[:MAX_TAG_VALUE_CHARS]
        if len(self.tags) > _MAX_TAGS:
            raise PolicyError("invalid", f"more than {_MAX_TAGS} tags")


def _check_modify(modify: Modify, endpoint: str) -> None:
    """Refuse changes that are not well-formed (before any is applied)."""
    if modify.max_tokens is not None and (
        type(modify.max_tokens) is not int or modify.max_tokens < 1
    ):
        raise PolicyError("invalid", "Modify.max_tokens must be a positive integer")
    if modify.model is not None and (not isinstance(modify.model, str) or not modify.model):
        raise PolicyError("invalid", "Modify.model must be a model name")
    if (modify.messages is not None or modify.system_prompt) and endpoint != "chat":
        raise PolicyError("invalid", "messages can only be changed on chat requests")
    if modify.messages is not None and (
        not isinstance(modify.messages, list)
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in modify.messages)
    ):
        raise PolicyError("invalid", "Modify.messages must be a list of messages with a role")
    if modify.system_prompt is not None and not isinstance(modify.system_prompt, str):
        raise PolicyError("invalid", "Modify.system_prompt must be text")
    for name, value in modify.set_headers.items():
        if (
            not isinstance(name, str)
            or not name
            or name != name.lower()
            or not set(name) <= _HEADER_NAME_CHARS
            or name in _PROTECTED_HEADERS
            or name.startswith(_PROTECTED_PREFIXES)
        ):
            raise PolicyError("invalid", f"a policy may not set the header {name!r:.80}")
        if (
            not isinstance(value, str)
            or len(value) > _MAX_HEADER_VALUE
            or "\r" in value
            or "\n" in value
        ):
            raise PolicyError("invalid", f"bad value for the header {name!r:.80}")
    for name, value in modify.tags.items():
        if not isinstance(name, str) or not TAG_PATTERN.match(name) or not isinstance(value, str):
            raise PolicyError("invalid", f"bad tag {name!r:.80}")


def with_system_prompt(messages: list[Any], text: str) -> list[Any]:
    """`messages` with `text` before the first system message's (or a new one, first)."""
    out = list(messages)
    for index, message in enumerate(out):
        if isinstance(message, dict) and message.get("role") == "system":
            content = message.get("content")
            if isinstance(content, str):
                out[index] = {**message, "content": f"{text}\n\n{content}"}
            elif isinstance(content, list):
                out[index] = {**message, "content": [{"type": "text", "text": text}, *content]}
            else:
                out[index] = {**message, "content": text}
            return out
    out.insert(0, {"role": "system", "content": text})
    return out


class PolicyChain:
    """The policies one (tenant, model) runs, in order."""

    __slots__ = ("completion", "headers", "inline", "metrics", "policies", "wants_answer")

    def __init__(self, policies: tuple[BoundPolicy, ...], metrics: Metrics) -> None:
        self.policies = policies
        self.metrics = metrics
        self.inline = all(p.mode is Mode.INLINE for p in policies)
        self.completion = tuple(p for p in policies if p.completion_mode is not None)
        self.wants_answer = any(p.wants_answer for p in self.completion)
        self.headers = frozenset().union(*(p.headers for p in policies))

    def run_now(self, subject: Subject) -> None:
        """Run an all-inline chain; raises the client's GatewayError on a refusal."""
        for bound in self.policies:
            started = time.perf_counter()
            try:
                decision = _inline(bound, subject.view(bound.headers), started)
                self._decided(bound, subject, decision, started)
            except GatewayError:
                raise
            except Exception as exc:
                self._failed(bound, exc, started)

    async def run(self, subject: Subject) -> None:
        """Run the chain, awaiting what needs it; raises the client's GatewayError on a refusal."""
        for bound in self.policies:
            started = time.perf_counter()
            try:
                view = subject.view(bound.headers)
                if bound.mode is Mode.INLINE:
                    decision: Any = _inline(bound, view, started)
                elif bound.mode is Mode.ASYNC:
                    decision = await asyncio.wait_for(
                        _awaited(bound.policy.check(view)), bound.timeout
                    )
                else:
                    decision = await asyncio.wait_for(
                        asyncio.to_thread(bound.policy.check, view), bound.timeout
                    )
                self._decided(bound, subject, decision, started)
            except GatewayError:
                raise
            except Exception as exc:
                self._failed(bound, exc, started)

    def _decided(self, bound: BoundPolicy, subject: Subject, decision: Any, started: float) -> None:
        if isinstance(decision, Allow):
            outcome = "allow"
        elif isinstance(decision, Modify):
            subject.apply(decision)
            outcome = "modify"
        elif isinstance(decision, Deny):
            self._count(bound, "deny", started)
            raise GatewayError(
                decision.status, decision.code, str(decision.message)[:MAX_MESSAGE_CHARS]
            )
        else:
            raise PolicyError("invalid", f"the check returned {type(decision).__name__}")
        self._count(bound, outcome, started)

    def _count(self, bound: BoundPolicy, outcome: str, started: float) -> None:
        metrics = self.metrics
        metrics.policy_decisions.labels(bound.id, outcome).inc()
        metrics.policy_duration.labels(bound.id).observe(time.perf_counter() - started)

    def _failed(self, bound: BoundPolicy, exc: Exception, started: float) -> None:
        """A policy failed: count it, log it (no request content), then deny or go on."""
        if isinstance(exc, PolicyError):
            reason, detail = exc.reason, str(exc)
        elif isinstance(exc, TimeoutError):
            reason, detail = "timeout", "the check overran its deadline"
        else:
            reason, detail = "raised", type(exc).__name__
        self._count(bound, "error", started)
        self.metrics.policy_errors.labels(bound.id, "check", reason).inc()
        log.warning("policy %s failed (%s): %s", bound.id, reason, detail)
        if not bound.fail_open:
            raise GatewayError(
                503,
                "policy_unavailable",
                f"the policy '{bound.id}' could not decide on this request; retry later",
                headers={"retry-after": "1"},
            ) from None

    # -- completion --------------------------------------------------------------------------

    def complete(self, record: RequestRecord, tasks: set[asyncio.Task[None]]) -> None:
        """Tell the listening policies how `record`'s request ended (never blocks the loop)."""
        completion = completion_of(record)
        for bound in self.completion:
            if bound.completion_mode is Mode.INLINE:
                try:
                    result = bound.policy.completed(completion)
                    if inspect.isawaitable(result):
                        _discard(result)
                        raise PolicyError("invalid", "an inline completed() returned an awaitable")
                except Exception as exc:
                    self._completion_failed(bound, exc)
                continue
            try:
                task = asyncio.get_running_loop().create_task(self._completed(bound, completion))
            except RuntimeError:  # no loop (a unit test driving the pipeline synchronously)
                continue
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _completed(self, bound: BoundPolicy, completion: Completion) -> None:
        try:
            if bound.completion_mode is Mode.ASYNC:
                await asyncio.wait_for(_awaited(bound.policy.completed(completion)), bound.timeout)
            else:
                await asyncio.wait_for(
                    asyncio.to_thread(bound.policy.completed, completion), bound.timeout
                )
        except Exception as exc:
            self._completion_failed(bound, exc)

    def _completion_failed(self, bound: BoundPolicy, exc: Exception) -> None:
        reason = "timeout" if isinstance(exc, TimeoutError) else "raised"
        if isinstance(exc, PolicyError):
            reason = exc.reason
        self.metrics.policy_errors.labels(bound.id, "completed", reason).inc()
        log.warning(
            "policy %s failed to take a completion (%s): %s", bound.id, reason, type(exc).__name__
        )


def _inline(bound: BoundPolicy, view: PolicyRequest, started: float) -> Any:
    """An inline check's decision; an overrun (found after the call) is a timeout."""
    decision = bound.policy.check(view)
    if inspect.isawaitable(decision):
        _discard(decision)
        raise PolicyError("invalid", "an inline check returned an awaitable")
    if time.perf_counter() - started > bound.timeout:
        raise PolicyError("timeout", "the check overran its deadline")
    return decision


async def _awaited(value: Any) -> Any:
    return await value


def _discard(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)  # an un-awaited coroutine would warn
    if close is not None:
        close()


def completion_of(record: RequestRecord) -> Completion:
    """What the policies hear of a finished request."""
    usage = record.usage
    ended = record.ended_at if record.ended_at is not None else time.monotonic()
    return Completion(
        tenant=record.tenant,
        key_id=record.key_id,
        model=record.model,
        provider=record.provider,
        status=record.status,
        code=record.code,
        stream=record.stream,
        prompt_tokens=usage.prompt_tokens if usage is not None else None,
        completion_tokens=usage.completion_tokens if usage is not None else None,
        cached_tokens=usage.cached_tokens if usage is not None else None,
        cost=record.cost,
        cache_hit=record.cache == "hit",
        duration_seconds=max(0.0, ended - record.started),
        tags=MappingProxyType(dict(record.tags or {})),
        answer=record.answer,
        request_id=record.request_id,
    )


def chain_for(
    configs: list[PolicyConfig], metrics: Metrics, built: dict[int, BoundPolicy]
) -> PolicyChain | None:
    """The chain of `configs` (None when empty), reusing policies already built (by config)."""
    if not configs:
        return None
    policies = []
    for config in configs:
        bound = built.get(id(config))
        if bound is None:
            bound = built[id(config)] = BoundPolicy.of(config)
        policies.append(bound)
    return PolicyChain(tuple(policies), metrics)
