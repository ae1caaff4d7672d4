"""Unit tests of provider health bookkeeping and check headers."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from extproc.config.credentials import AwsCredentials
from extproc.config.schema import ProviderConfig, ProviderType
from extproc.decisions.provider_health import ProviderHealth
from extproc.providers import adapter_for
from extproc.server.health_checks import check_headers
from tests.unit.adapters import prepare


def test_thresholds() -> None:
    health = ProviderHealth("p")
    assert health.observe(False, "HTTP 503", unhealthy_after=2, healthy_after=2) is False
    assert health.healthy
    assert health.observe(False, "HTTP 503", 2, 2) is True
    assert not health.healthy and health.last_error == "HTTP 503"
    assert health.observe(True, "", 2, 2) is False
    assert not health.healthy
    assert health.observe(True, "", 2, 2) is True
    assert health.healthy
    # A success in between resets the failure count.
    health.observe(False, "x", 2, 1)
    health.observe(True, "", 2, 1)
    health.observe(False, "x", 2, 1)
    assert health.healthy


def provider(kind: ProviderType, **extra: str) -> ProviderConfig:
    fields: dict[str, object] = {"name": "p", "type": kind, "base_url": "https://h/v1", **extra}
    if kind is ProviderType.AZURE:
        fields["api_version"] = "2024-10-21"
    if kind is ProviderType.BEDROCK:
        fields["aws_region"] = "us-east-1"
    elif kind in (ProviderType.AZURE, ProviderType.ANTHROPIC, ProviderType.GOOGLE):
        fields["api_key_env"] = "K"
    return ProviderConfig.model_validate(fields)


def test_check_headers_use_each_providers_key_header() -> None:
    key = SecretStr("k1")
    assert check_headers(provider(ProviderType.OPENAI), key) == {"authorization": "Bearer k1"}
    assert check_headers(provider(ProviderType.AZURE), key) == {"api-key": "k1"}
    assert check_headers(provider(ProviderType.GOOGLE), key) == {"x-goog-api-key": "k1"}
    anthropic = check_headers(provider(ProviderType.ANTHROPIC), key)
    assert anthropic["x-api-key"] == "k1" and anthropic["anthropic-version"]
    assert check_headers(provider(ProviderType.VLLM), None) == {}


@pytest.mark.parametrize(
    "kind", [t for t in ProviderType if t is not ProviderType.BEDROCK], ids=lambda t: t.value
)
def test_checks_send_the_credential_headers_real_requests_send(kind: ProviderType) -> None:
    # One source of truth: the adapter. A health check must authenticate exactly like a request.
    key = SecretStr("k1")
    config = provider(kind)
    upstream = prepare(
        adapter_for(kind)(config, key, "m-up", 4096),
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    )
    headers = check_headers(config, key)
    assert headers and "k1" in "".join(headers.values())
    assert headers.items() <= upstream.set_headers.items()


def test_bedrock_checks_go_unsigned() -> None:
    credentials = AwsCredentials(access_key_id="AKIDEXAMPLE", secret_access_key=SecretStr("s"))
    assert check_headers(provider(ProviderType.BEDROCK), credentials) == {}
