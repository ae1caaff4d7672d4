"""End-to-end harness: the fake provider, the processor and the real Envoy binary.

One stack per test session (plus `fresh_stack` for tests that stop processes), each an
`extproc.dev.stack.GatewayStack` on the test config below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from extproc.decisions.auth import hash_key
from extproc.dev.fakes import FakeProviderServer
from extproc.dev.stack import GatewayStack, loopback_sections
from extproc.dev.stack import free_port as free_port  # re-exported: tests import it from here
from extproc.dev.stack import free_ports as free_ports  # re-exported: tests import it from here

FULL_KEY = "sk-test-full-access"
LIMITED_KEY = "sk-test-limited"
UPSTREAM_KEYS = {
    "TEST_OPENAI_KEY": "sk-upstream-openai-secret",
    "TEST_AZURE_KEY": "azure-upstream-secret",
    "TEST_TOGETHER_KEY": "together-upstream-secret",
    "TEST_ANTHROPIC_KEY": "sk-ant-upstream-secret",
    "TEST_GOOGLE_KEY": "google-upstream-secret",
    # The fake Bedrock verifies SigV4 with these (its defaults); the "bad" secret must fail.
    "TEST_AWS_KEY_ID": "AKIDFAKEBEDROCK",
    "TEST_AWS_SECRET": "fake-bedrock-secret",
    "TEST_AWS_BAD_SECRET": "not-the-right-secret",
}
AZURE_API_VERSION = "2024-10-21"
_OPEN_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN_CLIENTS:
        _OPEN_CLIENTS.pop().close()


def gateway_config(
    fake_url: str,
    workdir: Path,
    processor_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A test config with every provider type of this issue pointing at the fake."""
    config: dict[str, Any] = loopback_sections(workdir)
    config["processor"]["shutdown_grace_seconds"] = 20
    config |= {
        "limits": {"max_body_bytes": 10 * 1024 * 1024, "default_timeout_seconds": 60},
        "auth": {"enabled": True},
        # The shared stack isolates features: no retries (tests of one provider see one
        # attempt), fast health checks so breaker resets reach Envoy quickly.
        "resilience": {"max_retries": 0, "health_check_interval_ms": 100},
        "providers": [
            {
                "name": "p-openai",
                "type": "openai",
                "base_url": f"{fake_url}/v1",
                "api_key_env": "TEST_OPENAI_KEY",
            },
            {
                "name": "p-azure",
                "type": "azure",
                "base_url": fake_url,
                "api_version": AZURE_API_VERSION,
                "api_key_env": "TEST_AZURE_KEY",
            },
            {"name": "p-vllm", "type": "vllm", "base_url": f"{fake_url}/vllm/v1"},
            {
                "name": "p-bedrock",
                "type": "bedrock",
                "base_url": fake_url,
                "aws_region": "us-east-1",
                "aws_access_key_id_env": "TEST_AWS_KEY_ID",
                "aws_secret_access_key_env": "TEST_AWS_SECRET",
                "aws_session_token_env": "TEST_AWS_NO_TOKEN",
            },
            {
                "name": "p-bedrock-bad",
                "type": "bedrock",
                "base_url": fake_url,
                "aws_region": "us-east-1",
                "aws_access_key_id_env": "TEST_AWS_KEY_ID",
                "aws_secret_access_key_env": "TEST_AWS_BAD_SECRET",
                "aws_session_token_env": "TEST_AWS_NO_TOKEN",
            },
            {
                "name": "p-google",
                "type": "google",
                "base_url": f"{fake_url}/gemini/v1beta",
                "api_key_env": "TEST_GOOGLE_KEY",
            },
            {
                "name": "p-anthropic",
                "type": "anthropic",
                "base_url": f"{fake_url}/anthropic/v1",
                "api_key_env": "TEST_ANTHROPIC_KEY",
            },
            {"name": "p-ollama", "type": "ollama", "base_url": f"{fake_url}/ollama/v1"},
            {
                "name": "p-together",
                "type": "together",
                "base_url": f"{fake_url}/together/v1",
                "api_key_env": "TEST_TOGETHER_KEY",
            },
        ],
        "models": [
            {
                "name": "chat-bedrock",
                "targets": [
                    {"provider": "p-bedrock", "model": "anthropic.claude-3-haiku-20240307-v1:0"}
                ],
            },
            {
                "name": "chat-bedrock-badsig",
                "targets": [{"provider": "p-bedrock-bad", "model": "m"}],
            },
            {
                "name": "embed-bedrock",
                "kind": "embeddings",
                "targets": [{"provider": "p-bedrock", "model": "amazon.titan-embed-text-v2:0"}],
            },
            {"name": "chat-gemini", "targets": [{"provider": "p-google", "model": "gemini-up"}]},
            {
                "name": "embed-gemini",
                "kind": "embeddings",
                "targets": [{"provider": "p-google", "model": "embed-up"}],
            },
            {
                "name": "chat-anthropic",
                "targets": [{"provider": "p-anthropic", "model": "claude-up"}],
            },
            {
                "name": "embed-anthropic",
                "kind": "embeddings",
                "targets": [{"provider": "p-anthropic", "model": "claude-up"}],
            },
            {"name": "chat-openai", "targets": [{"provider": "p-openai", "model": "gpt-up"}]},
            {"name": "chat-azure", "targets": [{"provider": "p-azure", "model": "my-deploy"}]},
            {"name": "chat-vllm", "targets": [{"provider": "p-vllm", "model": "llama-up"}]},
            {"name": "same-name", "targets": [{"provider": "p-vllm", "model": "same-name"}]},
            {"name": "chat-ollama", "targets": [{"provider": "p-ollama", "model": "llama3.1"}]},
            {
                "name": "chat-together",
                "targets": [{"provider": "p-together", "model": "meta/llama-up"}],
            },
            {
                "name": "embed-openai",
                "kind": "embeddings",
                "targets": [{"provider": "p-openai", "model": "text-embedding-up"}],
            },
            {
                "name": "embed-azure",
                "kind": "embeddings",
                "targets": [{"provider": "p-azure", "model": "embed-deploy"}],
            },
        ],
        "tenants": [
            {"name": "full", "api_key_sha256": [hash_key(FULL_KEY)]},
            {
                "name": "limited",
                "api_key_sha256": [hash_key(LIMITED_KEY)],
                "allowed_models": ["chat-openai"],
            },
        ],
    }
    config["processor"].update(processor_overrides or {})
    config.update(overrides)
    return config


class Stack(GatewayStack[FakeProviderServer]):
    """A running fake provider (a thread of this process) + processor + Envoy.

    `stop()` stops all three (stopping the fake again afterwards does nothing).
    """

    def client(self, key: str = FULL_KEY, **kwargs: Any) -> openai.OpenAI:
        """An openai SDK client on the listener; closed after the test."""
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30)
        client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, **kwargs)
        _OPEN_CLIENTS.append(client)
        return client


def make_stack(
    tmp: Path,
    processor_overrides: dict[str, Any] | None = None,
    customize: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> Stack:
    """A started stack in `tmp` on `gateway_config()`, changed by `customize` if given."""

    def config(fake_url: str) -> dict[str, Any]:
        data = gateway_config(fake_url, tmp, processor_overrides, **overrides)
        if customize is not None:
            customize(data)
        return data

    stack = Stack(tmp, config, FakeProviderServer(port=0), processor_env=UPSTREAM_KEYS)
    return stack.start()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shared stack: do not stop its processes in a test."""
    with make_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="session")
def unread_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A shared stack with usage accounting off: pass-through answers are never read."""

    def accounting_off(config: dict[str, Any]) -> None:
        config["telemetry"] = {"usage_accounting": False}

    with make_stack(tmp_path_factory.mktemp("unread"), customize=accounting_off) as s:
        yield s


@pytest.fixture
def unread_fake(unread_stack: Stack) -> Iterator[FakeProviderServer]:
    """`unread_stack`'s fake provider, reset before and after each test."""
    unread_stack.fake.clear()
    yield unread_stack.fake
    unread_stack.fake.clear()


def metric(stack: Stack, name: str, **labels: str) -> float:
    """The processor's sample `name` with exactly `labels` (a missing sample fails the test)."""
    text = httpx.get(f"{stack.admin_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


def wait_until(
    check: Callable[[], bool], what: str, timeout: float = 60, poll: float = 0.05
) -> None:
    """Return once `check()` holds, polled every `poll` seconds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def reset_breakers(stack: Stack) -> None:
    """Close every breaker so one test's injected failures cannot affect the next."""
    changed = httpx.post(f"{stack.admin_url}/breakers/reset", timeout=10).json()["reset"]
    if changed:
        # Envoy learns it through its health checks of the processor (100 ms apart).
        time.sleep(0.5)


@pytest.fixture
def fake(stack: Stack) -> Iterator[FakeProviderServer]:
    """The shared stack's fake provider, reset (with the breakers) before each test."""
    stack.fake.clear()
    reset_breakers(stack)
    yield stack.fake
    stack.fake.clear()


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    """A private stack for tests that stop or restart processes."""
    with make_stack(tmp_path) as s:
        yield s
