"""End to end: policies through the real Envoy binary, with the openai SDK as the client.

One module stack holds a tenant per policy case, so each case sees only its own policies. What
a policy changed is read from what the fake provider received (its request log); refusals are
the client's OpenAI-style errors. A third-party package (`tests/policy_package`) is built and
installed into a directory of the test's own, which the processor gets on its PYTHONPATH.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from extproc.decisions.auth import hash_key
from extproc.dev.fakes import FakeProviderServer
from tests.e2e.access_log import access_lines
from tests.e2e.conftest import UPSTREAM_KEYS, Stack, gateway_config, metric
from tests.unit.test_remote_policy import PolicyServer, start_server, stop_server

pytestmark = pytest.mark.e2e

Json = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tests" / "policy_package"
CARD = "4111 1111 1111 1111"  # a test card number that passes the Luhn check
NOT_A_CARD = "4111 1111 1111 1112"  # one digit off: fails it


def key_of(tenant: str) -> str:
    return f"sk-policy-{tenant}"


def install_package(target: Path) -> Path:
    """Build and install the test policy package into `target` (from a copy: no build files
    land in the source tree); returns `target`."""
    source = target.parent / "policy-package-src"
    shutil.copytree(PACKAGE, source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


POLICY_TENANTS: dict[str, list[Json]] = {
    "cap": [{"policy": "max_tokens", "options": {"cap": 50}}],
    "cap-deny": [{"policy": "max_tokens", "options": {"cap": 50, "on_exceed": "deny"}}],
    "models": [
        {
            "policy": "models",
            "options": {
                "allow": ["chat-openai", "chat-vllm", "chat-ollama"],
                "deny": ["chat-ollama"],
                "rewrite": {"chat-vllm": "chat-together"},
            },
        }
    ],
    "headers": [
        {
            "policy": "required_headers",
            "options": {"headers": {"x-team": "[a-z]+"}, "tag_from": {"x-team": "team"}},
        }
    ],
    "guard": [
        {
            "policy": "prompt_guard",
            "options": {
                "email": "redact",
                "card": "redact",
                "phone": "block",
                "patterns": [{"name": "ticket", "regex": r"TICKET-\d+", "action": "redact"}],
            },
        }
    ],
    "guard-block": [{"policy": "prompt_guard", "options": {"email": "block"}}],
    "system": [{"policy": "system_prompt", "options": {"text": "Answer in French."}}],
    "system-locked": [
        {
            "policy": "system_prompt",
            "options": {"text": "Answer in French.", "forbid_client_system": True},
        }
    ],
    "tags": [
        {
            "policy": "tags",
            "options": {"tags": {"app": "billing"}, "from_headers": {"x-app-version": "version"}},
        }
    ],
    "plugin": [
        {"policy": "word_filter", "options": {"word": "durian", "audit_file": "AUDIT"}},
    ],
    "raise-closed": [{"policy": "misbehave", "options": {"mode": "raise"}}],
    "raise-open": [{"policy": "misbehave", "options": {"mode": "raise"}, "on_error": "allow"}],
    "slow-closed": [
        {"policy": "misbehave", "options": {"mode": "sleep", "seconds": 2}, "timeout_ms": 200}
    ],
    "slow-open": [
        {
            "policy": "slow_async",
            "options": {"seconds": 2},
            "timeout_ms": 200,
            "on_error": "allow",
        }
    ],
    "nonsense": [{"policy": "misbehave", "options": {"mode": "nonsense"}}],
    "bad-header": [{"policy": "misbehave", "options": {"mode": "bad_header"}}],
    # Order: the gateway-wide tag first, then the tenant's cap, then the model's system prompt.
    "layered": [{"policy": "max_tokens", "options": {"cap": 7}}],
}


def remote_tenants(
    rules: PolicyServer, slow: PolicyServer, completions: Path
) -> dict[str, list[Json]]:
    """Tenants whose policy is the example PolicyService server (started by the test)."""
    del completions  # the rules server writes them; named here for the reader

    def remote(server: PolicyServer, on_error: str, **options: Any) -> Json:
        return {
            "policy": "grpc",
            "on_error": on_error,
            "timeout_ms": 1000,
            "options": {"address": server.address, **options},
        }

    return {
        "remote": [
            remote(
                rules,
                "deny",
                deadline_ms=800,
                headers=["x-project"],
                notify_completion=True,
            )
        ],
        "remote-slow-open": [remote(slow, "allow", deadline_ms=100)],
        "remote-slow-closed": [remote(slow, "deny", deadline_ms=100)],
    }


def customize(config: Json, audit: Path, remote: dict[str, list[Json]]) -> None:
    """A tenant per case, the policies of each; a gateway-wide and a model policy."""
    for name, policies in {**POLICY_TENANTS, **remote}.items():
        for policy in policies:
            if policy["options"].get("audit_file") == "AUDIT":
                policy["options"]["audit_file"] = str(audit)
        config["tenants"].append(
            {"name": name, "api_key_sha256": [hash_key(key_of(name))], "policies": policies}
        )
    config["policies"] = [
        {"policy": "tags", "id": "gateway-tag", "options": {"tags": {"via": "gw"}}}
    ]
    config["models"].append(
        {
            "name": "chat-layered",
            "targets": [{"provider": "p-openai", "model": "gpt-layered"}],
            "policies": [{"policy": "system_prompt", "options": {"text": "Model rule."}}],
        }
    )
    config["telemetry"] = {"metric_tags": ["team", "app", "via"]}


@pytest.fixture(scope="module")
def policy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("policies")
    site = install_package(tmp / "site")
    sys.path.insert(0, str(site))  # the test process loads the config too (write_config)
    audit = tmp / "audit.jsonl"
    completions = tmp / "completions.jsonl"
    rules = start_server(
        "--deny-word",
        "forbidden-topic",
        "--system-prompt",
        "Remote rule.",
        "--cap-max-tokens",
        "33",
        "--tag",
        "checked=remote",
        "--header-tag",
        "x-project=project",
        "--completions",
        str(completions),
    )
    slow = start_server("--delay-ms", "1500")
    remote = remote_tenants(rules, slow, completions)

    def config(fake_url: str) -> Json:
        data = gateway_config(fake_url, tmp)
        customize(data, audit, remote)
        return data

    env = {**UPSTREAM_KEYS, "PYTHONPATH": str(site)}
    stack = Stack(tmp, config, FakeProviderServer(port=0), processor_env=env)
    try:
        with stack.start() as running:
            running.audit = audit  # type: ignore[attr-defined]
            running.site = site  # type: ignore[attr-defined]
            running.completions = completions  # type: ignore[attr-defined]
            yield running
    finally:
        sys.path.remove(str(site))
        stop_server(rules.process)
        stop_server(slow.process)


@pytest.fixture
def fake(policy_stack: Stack) -> Iterator[FakeProviderServer]:
    policy_stack.fake.clear()
    yield policy_stack.fake
    policy_stack.fake.clear()


def client(stack: Stack, tenant: str, **kwargs: Any) -> openai.OpenAI:
    return stack.client(key_of(tenant), **kwargs)


def chat(
    stack: Stack, tenant: str, content: Any = "hello", model: str = "chat-openai", **kw: Any
) -> Any:
    messages = kw.pop("messages", [{"role": "user", "content": content}])
    headers = kw.pop("headers", None)
    return client(stack, tenant).chat.completions.create(
        model=model, messages=messages, extra_headers=headers, **kw
    )


def refused(stack: Stack, tenant: str, **kw: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        chat(stack, tenant, **kw)
    return caught.value


def error_code(error: openai.APIStatusError) -> str:
    body = error.response.json()
    return str(body["error"]["code"])


def sent(fake: FakeProviderServer) -> Json:
    """The body of the one request the fake received."""
    (request,) = fake.requests
    assert isinstance(request.json, dict)
    return request.json


def last_line(stack: Stack, tenant: str, status: int = 200) -> Json:
    """The newest access-log line of `tenant` with `status` (waiting for it to be written)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [x for x in access_lines(stack) if x["tenant"] == tenant and x["status"] == status]
        if lines:
            return lines[-1]
        assert time.monotonic() < deadline, f"no access line of {tenant}"
        time.sleep(0.1)


# -- built-ins --------------------------------------------------------------------------------


def test_max_tokens_caps_allows_and_denies(policy_stack: Stack, fake: FakeProviderServer) -> None:
    chat(policy_stack, "cap", max_tokens=500)
    assert sent(fake)["max_tokens"] == 50
    fake.clear()
    chat(policy_stack, "cap")  # unset: the cap is set
    assert sent(fake)["max_tokens"] == 50
    fake.clear()
    chat(policy_stack, "cap", max_tokens=10)  # under the cap: untouched
    assert sent(fake)["max_tokens"] == 10
    fake.clear()
    error = refused(policy_stack, "cap-deny", max_tokens=51)
    assert error.status_code == 400 and error_code(error) == "max_tokens_exceeded"
    assert fake.requests == []
    chat(policy_stack, "cap-deny", max_tokens=50)
    assert sent(fake)["max_tokens"] == 50


def test_model_lists_allow_deny_and_rewrite(policy_stack: Stack, fake: FakeProviderServer) -> None:
    chat(policy_stack, "models", model="chat-openai")
    assert sent(fake)["model"] == "gpt-up"
    fake.clear()
    for model in ("chat-ollama", "chat-azure"):  # denied; not in the allow list
        error = refused(policy_stack, "models", model=model)
        assert error.status_code == 403 and error_code(error) == "model_not_allowed"
    assert fake.requests == []
    answer = chat(policy_stack, "models", model="chat-vllm")  # rewritten to chat-together
    request = fake.requests[0]
    assert request.path.startswith("/together/") and sent(fake)["model"] == "meta/llama-up"
    assert answer.choices[0].message.content


def test_required_headers(policy_stack: Stack, fake: FakeProviderServer) -> None:
    error = refused(policy_stack, "headers")
    assert error.status_code == 400 and error_code(error) == "missing_header"
    error = refused(policy_stack, "headers", headers={"x-team": "Not Valid!"})
    assert error.status_code == 400 and error_code(error) == "invalid_header"
    assert "Not Valid" not in error.response.text
    assert fake.requests == []
    before = _tagged(policy_stack, "team", "search")
    chat(policy_stack, "headers", headers={"x-team": "search"})
    assert len(fake.requests) == 1
    assert _tagged(policy_stack, "team", "search") == before + 1


def _tagged(stack: Stack, tag: str, value: str) -> float:
    return sample(stack, "gateway_tagged_requests_total", tag=tag, value=value)


def sample(stack: Stack, name: str, **labels: str) -> float:
    """A counter's value, 0 before its first increment (its series does not exist yet)."""
    try:
        return metric(stack, name, **labels)
    except AssertionError:
        return 0.0


def test_prompt_guard_redacts_every_text_part(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    messages = [
        {"role": "system", "content": "Escalate TICKET-4521 if needed."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"Mail me at jane.doe@example.com, card {CARD}."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": f"Order {NOT_A_CARD} is just a number."},
            ],
        },
    ]
    chat(policy_stack, "guard", messages=messages)
    received = json.dumps(sent(fake)["messages"])
    for secret in ("jane.doe@example.com", CARD, "TICKET-4521"):
        assert secret not in received
    assert NOT_A_CARD in received  # fails the Luhn check: not a card
    assert "data:image/png;base64,AAAA" in received  # non-text parts are untouched
    assert sent(fake)["messages"][1]["content"][1]["type"] == "image_url"


def test_prompt_guard_allows_clean_and_blocks(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    chat(policy_stack, "guard", "What is the capital of France?")
    assert sent(fake)["messages"][0]["content"] == "What is the capital of France?"
    fake.clear()
    error = refused(policy_stack, "guard", content="Call me on +1 415 555 0100 please")
    assert error.status_code == 400 and error_code(error) == "prompt_blocked"
    assert "415" not in error.response.text
    error = refused(policy_stack, "guard-block", content="write to bob@example.org")
    assert error_code(error) == "prompt_blocked" and "bob@" not in error.response.text
    assert fake.requests == []


def test_system_prompt_prefix_and_lock(policy_stack: Stack, fake: FakeProviderServer) -> None:
    chat(policy_stack, "system")
    messages = sent(fake)["messages"]
    assert messages[0] == {"role": "system", "content": "Answer in French."}
    assert messages[1]["content"] == "hello"
    fake.clear()
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    chat(policy_stack, "system", messages=own)
    assert sent(fake)["messages"][0]["content"] == "Answer in French.\n\nBe brief."
    fake.clear()
    chat(policy_stack, "system", model="chat-anthropic")  # translated: Anthropic's `system`
    assert "Answer in French." in json.dumps(sent(fake)["system"])
    fake.clear()
    error = refused(policy_stack, "system-locked", messages=own)
    assert error.status_code == 400 and error_code(error) == "system_prompt_not_allowed"
    assert fake.requests == []
    chat(policy_stack, "system-locked")
    assert sent(fake)["messages"][0]["content"] == "Answer in French."


def test_tags_reach_metrics_and_the_access_log(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    before = _tagged(policy_stack, "app", "billing")
    chat(policy_stack, "tags", "tag me", headers={"x-app-version": "2.4.1"})
    assert _tagged(policy_stack, "app", "billing") == before + 1
    line = last_line(policy_stack, "tags")
    assert line["tags"] == {"via": "gw", "app": "billing", "version": "2.4.1"}


def test_gateway_tenant_and_model_policies_apply_in_order(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    chat(policy_stack, "layered", model="chat-layered", max_tokens=100)
    body = sent(fake)
    assert body["max_tokens"] == 7  # the tenant's cap
    assert body["messages"][0] == {"role": "system", "content": "Model rule."}  # the model's


# -- a third-party package (entry point) ------------------------------------------------------


def test_an_installed_package_policy_is_discovered_and_applied(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    error = refused(policy_stack, "plugin", content="I love DURIAN fruit")
    assert error.status_code == 403 and error_code(error) == "word_filtered"
    assert fake.requests == []
    answer = chat(policy_stack, "plugin", "I love mangoes")
    assert answer.usage is not None
    audit: Path = policy_stack.audit  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    lines: list[Json] = []
    while time.monotonic() < deadline:
        if audit.exists():
            lines = [json.loads(x) for x in audit.read_text().splitlines()]
            if len(lines) >= 2:
                break
        time.sleep(0.1)
    denied, allowed = lines[-2:]
    assert denied["status"] == 403 and denied["prompt_tokens"] is None
    assert allowed["status"] == 200
    assert allowed["prompt_tokens"] == answer.usage.prompt_tokens
    assert allowed["completion_tokens"] == answer.usage.completion_tokens
    assert allowed["answer"] == answer.choices[0].message.content  # wants_answer: it was read
    assert allowed["tags"] == {"via": "gw", "filtered": "yes"}


def _check_config(
    stack: Stack, tmp_path: Path, policies: list[Json]
) -> subprocess.CompletedProcess[str]:
    data = yaml.safe_load(stack.config_path.read_text())
    data["tenants"][0]["policies"] = policies
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    site: Path = stack.site  # type: ignore[attr-defined]
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", "check-config", str(path), "--skip-credentials"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_bad_policy_options_and_names_are_check_config_errors(
    policy_stack: Stack, tmp_path: Path
) -> None:
    done = _check_config(
        policy_stack, tmp_path, [{"policy": "word_filter", "options": {"word": "x"}}]
    )
    assert done.returncode == 2
    assert "tenants.0.policies.0.options.word:" in done.stdout + done.stderr
    done = _check_config(
        policy_stack, tmp_path, [{"policy": "word_filter", "options": {"wrod": "ab"}}]
    )
    assert (
        done.returncode == 2 and "tenants.0.policies.0.options.wrod:" in done.stdout + done.stderr
    )
    done = _check_config(policy_stack, tmp_path, [{"policy": "no_such_policy"}])
    assert done.returncode == 2
    assert (
        "tenants.0.policies.0.policy: unknown policy 'no_such_policy'" in done.stdout + done.stderr
    )
    done = _check_config(policy_stack, tmp_path, [{"policy": "max_tokens", "options": {"cap": 0}}])
    assert done.returncode == 2 and "tenants.0.policies.0.options.cap:" in done.stdout + done.stderr
    done = _check_config(
        policy_stack, tmp_path, [{"policy": "word_filter", "options": {"word": "ok"}}]
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- failures: on_error ----------------------------------------------------------------------


def test_a_policy_that_raises_denies_or_allows_as_configured(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    before = sample(
        policy_stack,
        "gateway_policy_errors_total",
        policy="misbehave",
        stage="check",
        reason="raised",
    )
    error = refused(policy_stack, "raise-closed")
    assert error.status_code == 503 and error_code(error) == "policy_unavailable"
    assert "always fails" not in error.response.text  # the exception is not the client's
    assert fake.requests == []
    assert chat(policy_stack, "raise-open").choices[0].message.content
    after = metric(
        policy_stack,
        "gateway_policy_errors_total",
        policy="misbehave",
        stage="check",
        reason="raised",
    )
    assert after == before + 2


def test_a_policy_past_its_deadline_denies_or_allows_as_configured(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    error = refused(policy_stack, "slow-closed")  # a plain check, in a worker thread
    assert error.status_code == 503 and error_code(error) == "policy_unavailable"
    assert fake.requests == []
    assert chat(policy_stack, "slow-open").choices[0].message.content  # async, fails open
    assert len(fake.requests) == 1
    assert (
        metric(
            policy_stack,
            "gateway_policy_errors_total",
            policy="slow_async",
            stage="check",
            reason="timeout",
        )
        >= 1
    )


def test_nonsense_answers_and_forbidden_changes_are_policy_errors(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    for tenant in ("nonsense", "bad-header"):
        error = refused(policy_stack, tenant)
        assert error.status_code == 503 and error_code(error) == "policy_unavailable"
    assert fake.requests == []
    # The processor is still up and serving.
    assert httpx.get(f"{policy_stack.admin_url}/readyz", timeout=10).status_code == 200
    assert chat(policy_stack, "cap").choices[0].message.content


# -- out of process: the example PolicyService server -----------------------------------------


def test_the_remote_policy_server_denies_and_modifies(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    error = refused(policy_stack, "remote", content="tell me about the forbidden-topic")
    assert error.status_code == 403 and error_code(error) == "policy_denied"
    assert fake.requests == []
    answer = client(policy_stack, "remote").chat.completions.with_raw_response.create(
        model="chat-openai",
        messages=[{"role": "user", "content": "hello remote"}],
        max_tokens=500,
        extra_headers={"x-project": "atlas"},
    )
    body = sent(fake)
    assert body["max_tokens"] == 33
    assert body["messages"][0] == {"role": "system", "content": "Remote rule."}
    line = last_line(policy_stack, "remote")
    assert line["tags"] == {"via": "gw", "checked": "remote", "project": "atlas"}
    request_id = line["request_id"]
    deadline = time.monotonic() + 10
    # The completion notice reached the server, with the request's id and usage.
    completions: Path = policy_stack.completions  # type: ignore[attr-defined]
    notice = None
    while time.monotonic() < deadline and notice is None:
        for text in completions.read_text().splitlines() if completions.exists() else []:
            entry = json.loads(text)
            if entry.get("request_id") == request_id:
                notice = entry
        time.sleep(0.1)
    assert notice is not None
    parsed = answer.parse()
    assert notice["status"] == 200 and int(notice["prompt_tokens"]) == parsed.usage.prompt_tokens


def test_a_slow_remote_policy_fails_open_or_closed(
    policy_stack: Stack, fake: FakeProviderServer
) -> None:
    error = refused(policy_stack, "remote-slow-closed")
    assert error.status_code == 503 and error_code(error) == "policy_unavailable"
    assert fake.requests == []
    assert chat(policy_stack, "remote-slow-open").choices[0].message.content
    assert len(fake.requests) == 1
