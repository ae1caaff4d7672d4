"""The policy chain without a server: order, Modify applied to the body, failures per on_error."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from extproc.config.schema import PolicyConfig
from extproc.errors import GatewayError
from extproc.metrics import Metrics
from extproc.policies.api import ALLOW, Deny, Modify, Policy, PolicyRequest
from extproc.policies.chain import BoundPolicy, Mode, PolicyChain, Subject, with_system_prompt


class Fixed(Policy):
    """Returns the decision it was built with (inline)."""

    inline = True

    def __init__(self, decision: Any, seconds: float = 0.0) -> None:
        super().__init__(None)
        self.decision = decision
        self.seconds = seconds
        self.seen: list[PolicyRequest] = []

    def check(self, request: PolicyRequest) -> Any:
        self.seen.append(request)
        if self.seconds:
            time.sleep(self.seconds)
        if isinstance(self.decision, Exception):
            raise self.decision
        return self.decision


class Slow(Policy):
    async def check(self, request: PolicyRequest) -> Any:
        await asyncio.sleep(5)
        return ALLOW


def bound(
    policy: Policy, mode: Mode = Mode.INLINE, fail_open: bool = False, timeout: float = 1.0
) -> BoundPolicy:
    return BoundPolicy(
        id=f"p{id(policy)}",
        policy=policy,
        fail_open=fail_open,
        timeout=timeout,
        mode=mode,
        headers=frozenset({"x-team"}),
        completion_mode=None,
        wants_answer=False,
    )


def subject(
    body: dict[str, Any] | None = None, models: dict[str, tuple[str, str]] | None = None
) -> Subject:
    body = body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    known = models or {}
    return Subject(
        "t", "k", "m", "chat", "prov", "up", body, {"x-team": "a", "x-other": "b"}, known.get, "rid"
    )


def chain(*policies: BoundPolicy) -> PolicyChain:
    return PolicyChain(policies, Metrics())


def test_each_policy_sees_the_request_as_the_ones_before_left_it() -> None:
    first = Fixed(Modify(system_prompt="S", tags={"a": "1"}))
    second = Fixed(ALLOW)
    s = subject()
    original = s.body
    chain(bound(first), bound(second)).run_now(s)
    seen = second.seen[0]
    assert seen.messages[0] == {"role": "system", "content": "S"}
    assert seen.tags == {"a": "1"} and seen.headers == {"x-team": "a"}  # declared headers only
    assert seen.request_id == "rid"
    assert original["messages"] == [{"role": "user", "content": "hi"}]  # never changed in place
    assert s.changed and s.body is not original


def test_max_tokens_caps_the_field_the_request_used() -> None:
    s = subject({"model": "m", "messages": [], "max_completion_tokens": 900})
    chain(bound(Fixed(Modify(max_tokens=100)))).run_now(s)
    assert s.body["max_completion_tokens"] == 100 and "max_tokens" not in s.body
    s = subject({"model": "m", "messages": [], "max_tokens": 50})
    chain(bound(Fixed(Modify(max_tokens=100)))).run_now(s)
    assert s.body["max_tokens"] == 50 and not s.changed  # already below the cap


def test_a_model_rewrite_needs_a_model_the_request_may_use() -> None:
    s = subject(models={"other": ("p2", "u2")})
    chain(bound(Fixed(Modify(model="other")))).run_now(s)
    assert (s.model, s.provider, s.upstream_model, s.body["model"]) == (
        "other",
        "p2",
        "u2",
        "other",
    )
    with pytest.raises(GatewayError) as caught:
        chain(bound(Fixed(Modify(model="nope")))).run_now(subject())
    assert caught.value.status == 503 and caught.value.code == "policy_unavailable"


@pytest.mark.parametrize(
    "modify",
    [
        Modify(set_headers={"authorization": "Bearer x"}),
        Modify(set_headers={"x-envoy-retry-on": "5xx"}),
        Modify(set_headers={"x-ok": "a\r\nb: c"}),
        Modify(tags={"Bad Tag": "x"}),
        Modify(max_tokens=0),
        Modify(messages=[{"content": "no role"}]),
    ],
)
def test_changes_the_gateway_refuses_are_policy_errors(modify: Modify) -> None:
    with pytest.raises(GatewayError) as caught:
        chain(bound(Fixed(modify))).run_now(subject())
    assert caught.value.code == "policy_unavailable"
    s = subject()
    chain(bound(Fixed(modify), fail_open=True)).run_now(s)  # on_error: allow → unchanged
    assert not s.changed and s.set_headers == {}


def test_deny_is_the_clients_error() -> None:
    with pytest.raises(GatewayError) as caught:
        chain(bound(Fixed(Deny("no", 429, "slow_down")))).run_now(subject())
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        429,
        "slow_down",
        "no",
    )


def test_raising_or_nonsense_follows_on_error() -> None:
    for decision in (RuntimeError("secret detail"), "yes", None):
        with pytest.raises(GatewayError) as caught:
            chain(bound(Fixed(decision))).run_now(subject())
        assert "secret detail" not in caught.value.message
        chain(bound(Fixed(decision), fail_open=True)).run_now(subject())


def test_an_inline_overrun_is_a_timeout_even_though_it_allowed() -> None:
    with pytest.raises(GatewayError):
        chain(bound(Fixed(ALLOW, seconds=0.05), timeout=0.01)).run_now(subject())


async def test_async_and_threaded_checks_are_cut_at_their_deadline() -> None:
    with pytest.raises(GatewayError):
        await chain(bound(Slow(None), Mode.ASYNC, timeout=0.05)).run(subject())
    threaded = Fixed(ALLOW, seconds=0.5)
    with pytest.raises(GatewayError):
        await chain(bound(threaded, Mode.THREAD, timeout=0.05)).run(subject())
    s = subject()
    await chain(
        bound(Slow(None), Mode.ASYNC, fail_open=True, timeout=0.05),
        bound(Fixed(Modify(tags={"after": "y"}))),
    ).run(s)
    assert s.tags == {"after": "y"}  # the chain went on after the failed-open policy


def test_modes_come_from_the_class() -> None:
    built = BoundPolicy.of(PolicyConfig(policy="max_tokens", options={"cap": 5}))
    assert built.mode is Mode.INLINE and built.completion_mode is None


def test_system_prompt_goes_before_the_first_system_message() -> None:
    assert with_system_prompt([{"role": "system", "content": "B"}], "A")[0]["content"] == "A\n\nB"
    parts = with_system_prompt(
        [{"role": "system", "content": [{"type": "text", "text": "B"}]}], "A"
    )
    assert parts[0]["content"][0] == {"type": "text", "text": "A"}
    assert with_system_prompt([{"role": "user", "content": "q"}], "A")[0] == {
        "role": "system",
        "content": "A",
    }
