"""The `grpc` policy (`RemotePolicy`) against the real example server, run as a subprocess.

Every decision goes over gRPC to `examples/policy_server.py` on a free port; the conversions
between the policy API and the proto are also tested on their own, without a server.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from extproc.policies import remote
from extproc.policies.api import ALLOW, Allow, Completion, Deny, Modify, PolicyRequest
from extproc.policies.remote import RemotePolicy, RemotePolicyOptions
from llm_gateway.policy.v1 import policy_pb2

REPO = Path(__file__).parents[2]
SERVER = REPO / "examples" / "policy_server.py"
STARTUP_SECONDS = 30


@dataclass
class PolicyServer:
    process: subprocess.Popen[str]
    address: str


def start_server(*args: str) -> PolicyServer:
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--address", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_SECONDS)
    line = process.stdout.readline() if ready else ""
    prefix = "policy server listening on "
    if not line.startswith(prefix):
        stop_server(process)
        pytest.fail(f"the policy server did not start: {line!r}")
    return PolicyServer(process, line.removeprefix(prefix).strip())


def stop_server(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="module")
def completions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("policy") / "completions.jsonl"


@pytest.fixture(scope="module")
def rules_server(completions_file: Path) -> Iterator[PolicyServer]:
    server = start_server(
        "--deny-word", "Forbidden",
        "--deny-word", "secret",
        "--system-prompt", "Be brief.",
        "--cap-max-tokens", "256",
        "--tag", "team=ml",
        "--header-tag", "X-Project=project",
        "--completions", str(completions_file),
    )  # fmt: skip
    yield server
    stop_server(server.process)


@pytest.fixture(scope="module")
def plain_server() -> Iterator[PolicyServer]:
    server = start_server()
    yield server
    stop_server(server.process)


@pytest.fixture(scope="module")
def slow_server() -> Iterator[PolicyServer]:
    server = start_server("--delay-ms", "2000")
    yield server
    stop_server(server.process)


@pytest.fixture(autouse=True)
async def close_channels() -> Any:
    # grpc.aio channels belong to one event loop, and each test has its own.
    yield
    await remote.close_channels()


def policy(address: str, **options: Any) -> RemotePolicy:
    return RemotePolicy(RemotePolicyOptions.model_validate({"address": address, **options}))


def request(
    text: str = "hello",
    *,
    messages: list[dict[str, Any]] | None = None,
    max_tokens: int | None = None,
    headers: dict[str, str] | None = None,
    endpoint: str = "chat",
    params: dict[str, Any] | None = None,
    request_id: str = "",
) -> PolicyRequest:
    return PolicyRequest(
        request_id=request_id,
        tenant="team-a",
        key_id="key-1",
        model="chat-default",
        endpoint=endpoint,
        provider="local-openai",
        upstream_model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}] if messages is None else messages,
        params={"temperature": 0.2} if params is None else params,
        max_tokens=max_tokens,
        stream=False,
        headers=headers or {},
        tags={"earlier": "yes"},
    )


def completion(**fields: Any) -> Completion:
    values: dict[str, Any] = {
        "tenant": "team-a",
        "key_id": "key-1",
        "model": "chat-default",
        "provider": "local-openai",
        "status": 200,
        "code": "",
        "stream": False,
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "cached_tokens": None,
        "cost": 0.0025,
        "cache_hit": False,
        "duration_seconds": 0.75,
        "tags": {"team": "ml"},
        "answer": None,
    }
    return Completion(**{**values, **fields})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def read_notices(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- decisions through the example server ---


async def test_a_forbidden_word_denies(rules_server: PolicyServer) -> None:
    decision = await policy(rules_server.address).check(request("Tell me a FORBIDDEN story"))
    assert decision == Deny(
        message="the request mentions a forbidden topic", status=403, code="policy_denied"
    )


async def test_a_forbidden_word_in_a_text_part_denies(rules_server: PolicyServer) -> None:
    parts = [
        {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
        {"type": "text", "text": "what is the Secret?"},
    ]
    decision = await policy(rules_server.address).check(
        request(messages=[{"role": "user", "content": parts}])
    )
    assert isinstance(decision, Deny)


async def test_the_rules_modify_the_request(rules_server: PolicyServer) -> None:
    remote_policy = policy(rules_server.address, headers=["X-Project"])
    decision = await remote_policy.check(request(max_tokens=1000, headers={"x-project": "apollo"}))
    assert decision == Modify(
        max_tokens=256,
        system_prompt="Be brief.",
        tags={"team": "ml", "project": "apollo"},
    )


async def test_max_tokens_is_capped_only_when_larger_or_unset(rules_server: PolicyServer) -> None:
    remote_policy = policy(rules_server.address)
    small = await remote_policy.check(request(max_tokens=100))
    unset = await remote_policy.check(request())
    assert isinstance(small, Modify)
    assert small.max_tokens is None
    assert isinstance(unset, Modify)
    assert unset.max_tokens == 256


async def test_headers_not_configured_are_not_forwarded(rules_server: PolicyServer) -> None:
    decision = await policy(rules_server.address).check(request(headers={"x-project": "apollo"}))
    assert isinstance(decision, Modify)
    assert decision.tags == {"team": "ml"}


async def test_without_messages_the_server_cannot_see_the_word(
    rules_server: PolicyServer,
) -> None:
    remote_policy = policy(rules_server.address, send_messages=False)
    decision = await remote_policy.check(request("a secret"))
    assert isinstance(decision, Modify)


async def test_a_server_without_rules_allows(plain_server: PolicyServer) -> None:
    decision = await policy(plain_server.address).check(request("anything at all"))
    assert decision == ALLOW


async def test_a_late_answer_raises_deadline_exceeded(slow_server: PolicyServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await policy(slow_server.address, deadline_ms=50).check(request())
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_server_that_is_down_raises() -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await policy(f"127.0.0.1:{free_port()}", deadline_ms=5000).check(request())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


# --- completions ---


async def test_completed_sends_a_notice(rules_server: PolicyServer, completions_file: Path) -> None:
    before = len(read_notices(completions_file))
    remote_policy = policy(rules_server.address, notify_completion=True, wants_answer=True)
    await remote_policy.completed(completion(answer="Paris.", cached_tokens=4, request_id="r-9"))
    # The server writes and flushes the line before it answers.
    assert read_notices(completions_file)[before:] == [
        {
            "request_id": "r-9",
            "tenant": "team-a",
            "key_id": "key-1",
            "model": "chat-default",
            "provider": "local-openai",
            "status": 200,
            "code": "",
            "stream": False,
            # The proto3 JSON mapping writes int64 values as strings.
            "prompt_tokens": "12",
            "completion_tokens": "34",
            "cached_tokens": "4",
            "cost": 0.0025,
            "cache_hit": False,
            "duration_seconds": 0.75,
            "tags": {"team": "ml"},
            "answer": "Paris.",
        }
    ]


async def test_unknown_token_counts_and_answer_stay_unset(
    rules_server: PolicyServer, completions_file: Path
) -> None:
    before = len(read_notices(completions_file))
    remote_policy = policy(rules_server.address, notify_completion=True)
    await remote_policy.completed(
        completion(status=429, code="rate_limit_exceeded", provider="", prompt_tokens=None)
    )
    [notice] = read_notices(completions_file)[before:]
    assert notice["status"] == 429
    assert notice["code"] == "rate_limit_exceeded"
    assert "prompt_tokens" not in notice
    assert "answer" not in notice


async def test_completed_sends_nothing_unless_asked(
    rules_server: PolicyServer, completions_file: Path
) -> None:
    before = len(read_notices(completions_file))
    await policy(rules_server.address).completed(completion())
    assert len(read_notices(completions_file)) == before


# --- channels ---


async def test_policies_with_the_same_address_share_one_channel(
    plain_server: PolicyServer,
) -> None:
    first = policy(plain_server.address)
    second = policy(plain_server.address, deadline_ms=500, headers=["x-team"])
    other = policy(plain_server.address, tls=True)
    assert await first.check(request()) == ALLOW
    assert await second.check(request()) == ALLOW
    assert first.channel() is second.channel()
    assert first.channel() is not other.channel()


async def test_closed_channels_are_opened_again(plain_server: PolicyServer) -> None:
    remote_policy = policy(plain_server.address)
    assert await remote_policy.check(request()) == ALLOW
    channel = remote_policy.channel()
    await remote.close_channels()
    assert await remote_policy.check(request()) == ALLOW
    assert remote_policy.channel() is not channel


def test_building_a_policy_opens_no_channel() -> None:
    # Outside an event loop any channel use would fail: construction must not need one.
    remote_policy = policy(
        "127.0.0.1:1", headers=["X-Team"], notify_completion=True, wants_answer=True
    )
    assert remote_policy.headers == frozenset({"x-team"})
    assert remote_policy.wants_answer is True
    with pytest.raises(RuntimeError):
        remote_policy.channel()


# --- options ---


def test_options_defaults() -> None:
    options = RemotePolicyOptions.model_validate({"address": " unix:/run/policy.sock "})
    assert options.address == "unix:/run/policy.sock"
    assert (options.tls, options.deadline_ms, options.send_messages) == (False, 100, True)
    assert (options.headers, options.notify_completion, options.wants_answer) == ([], False, False)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "address"),
        ({"address": ""}, "gRPC target"),
        ({"address": "  "}, "gRPC target"),
        ({"address": "policy host:50070"}, "gRPC target"),
        ({"address": "http://policy:50070"}, "not a URL"),
        ({"address": "policy:50070", "deadline_ms": 0}, "greater than or equal to 1"),
        ({"address": "policy:50070", "deadline_ms": 60_001}, "less than or equal to 60000"),
        ({"address": "policy:50070", "headers": ["x team"]}, "not a header name"),
        ({"address": "policy:50070", "headers": ["Authorization"]}, "credentials"),
        ({"address": "policy:50070", "wants_answer": True}, "needs notify_completion"),
        ({"address": "policy:50070", "timeout_ms": 5}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RemotePolicyOptions.model_validate(options)


def test_header_names_are_lower_cased_once() -> None:
    options = RemotePolicyOptions.model_validate(
        {"address": "policy:50070", "headers": ["X-Team", "x-team", " X-Project "]}
    )
    assert options.headers == ["x-team", "x-project"]


# --- conversions, without a server ---


def test_the_check_request_mirrors_the_policy_request() -> None:
    message = remote.check_request(
        request(
            max_tokens=64,
            headers={"x-team": "ml", "x-request-id": "req-1", "x-other": "no"},
            params={"temperature": 0.2, "n": 1},
            request_id="req-0",
        ),
        ("x-team", "x-request-id", "x-missing"),
        send_messages=True,
    )
    assert message.request_id == "req-0"  # the request's own id, not a forwarded header
    assert (message.tenant, message.key_id, message.model) == ("team-a", "key-1", "chat-default")
    assert (message.endpoint, message.provider, message.upstream_model) == (
        "chat",
        "local-openai",
        "gpt-4o-mini",
    )
    assert message.HasField("max_tokens")
    assert message.max_tokens == 64
    assert dict(message.headers) == {"x-team": "ml", "x-request-id": "req-1"}
    assert dict(message.tags) == {"earlier": "yes"}
    assert [dict(m) for m in message.messages] == [{"role": "user", "content": "hello"}]
    assert dict(message.params) == {"temperature": 0.2, "n": 1.0}


def test_an_unset_max_tokens_stays_unset() -> None:
    message = remote.check_request(request(), (), send_messages=True)
    assert not message.HasField("max_tokens")
    assert message.request_id == ""


def test_without_messages_embeddings_input_is_left_out_too() -> None:
    embeddings = request(
        messages=[], endpoint="embeddings", params={"input": ["private"], "dimensions": 8}
    )
    message = remote.check_request(embeddings, (), send_messages=False)
    assert dict(message.params) == {"dimensions": 8.0}
    chat = remote.check_request(request("private"), (), send_messages=False)
    assert len(chat.messages) == 0


def response(**decision: Any) -> policy_pb2.CheckResponse:
    return policy_pb2.CheckResponse(**decision)


def test_no_decision_allows() -> None:
    assert remote.decision_from(response()) == ALLOW
    assert isinstance(remote.decision_from(response(allow=policy_pb2.Allow())), Allow)


def test_an_unset_deny_status_and_code_take_the_defaults() -> None:
    decision = remote.decision_from(response(deny=policy_pb2.Deny(message="no")))
    assert decision == Deny(message="no", status=403, code="policy_denied")


def test_a_long_deny_message_is_cut() -> None:
    decision = remote.decision_from(response(deny=policy_pb2.Deny(message="x" * 5000)))
    assert isinstance(decision, Deny)
    assert len(decision.message) == 1000


@pytest.mark.parametrize(
    "deny",
    [
        policy_pb2.Deny(status=200, message="no"),
        policy_pb2.Deny(status=600, message="no"),
        policy_pb2.Deny(code="Not-A-Code", message="no"),
    ],
)
def test_an_invalid_deny_raises(deny: policy_pb2.Deny) -> None:
    with pytest.raises(ValueError, match=r"Deny\.(status|code)"):
        remote.decision_from(response(deny=deny))


def test_a_modify_becomes_the_api_modify() -> None:
    modify = policy_pb2.Modify(
        max_tokens=128,
        model="chat-small",
        replace_messages=True,
        system_prompt="Be kind.",
        set_headers={"x-route": "eu"},
        tags={"team": "ml"},
    )
    modify.messages.add().update({"role": "user", "content": "redacted", "n": 1})
    assert remote.decision_from(response(modify=modify)) == Modify(
        max_tokens=128,
        model="chat-small",
        messages=[{"role": "user", "content": "redacted", "n": 1.0}],
        system_prompt="Be kind.",
        set_headers={"x-route": "eu"},
        tags={"team": "ml"},
    )


def test_an_empty_modify_changes_nothing() -> None:
    modify = policy_pb2.Modify(model="", system_prompt="")
    assert remote.decision_from(response(modify=modify)) == Modify()


def invalid_modifies() -> list[tuple[policy_pb2.Modify, str]]:
    stray = policy_pb2.Modify()
    stray.messages.add().update({"role": "user", "content": "x"})
    return [
        (policy_pb2.Modify(max_tokens=0), "at least 1"),
        (policy_pb2.Modify(max_tokens=-5), "at least 1"),
        (policy_pb2.Modify(replace_messages=True), "no messages"),
        (stray, "without replace_messages"),
        (policy_pb2.Modify(tags={"Team": "ml"}), "does not match"),
        (policy_pb2.Modify(tags={"team": "x" * 257}), "over 256"),
    ]


@pytest.mark.parametrize(("modify", "problem"), invalid_modifies())
def test_an_invalid_modify_raises(modify: policy_pb2.Modify, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        remote.decision_from(response(modify=modify))


def test_the_completion_notice_mirrors_the_completion() -> None:
    notice = remote.completion_notice(completion(cached_tokens=None, answer=None))
    assert notice.prompt_tokens == 12
    assert not notice.HasField("cached_tokens")
    assert not notice.HasField("answer")
    assert dict(notice.tags) == {"team": "ml"}
