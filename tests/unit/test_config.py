"""Unit tests of config loading: every problem reported with its path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config.credentials import AwsCredentials
from extproc.config.loading import ConfigError, load_config, parse_config

HASH = "a" * 64


def base() -> dict[str, Any]:
    return {
        "providers": [{"name": "p1", "type": "openai", "base_url": "https://api.example.com/v1"}],
        "models": [{"name": "m1", "targets": [{"provider": "p1", "model": "up"}]}],
        "tenants": [{"name": "t1", "api_key_sha256": [HASH]}],
    }


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(base())
    assert config.limits.max_body_bytes == 10 * 1024 * 1024
    assert config.limits.default_timeout_seconds == 120
    assert config.auth.enabled is True
    provider = config.providers[0]
    assert (provider.host, provider.port, provider.scheme) == ("api.example.com", 443, "https")
    assert provider.base_path == "/v1"


def test_every_problem_is_reported_with_its_path() -> None:
    data = base()
    data["providers"][0]["base_url"] = "ftp://x"
    data["models"][0]["targets"][0]["weight"] = 0
    data["limits"] = {"max_body_bytes": 1}
    found = problems(data)
    assert any(p.startswith("providers.0.base_url:") for p in found)
    assert any(p.startswith("models.0.targets.0.weight:") for p in found)
    assert any(p.startswith("limits.max_body_bytes:") for p in found)
    assert len(found) == 3


def test_unknown_keys_are_errors() -> None:
    data = base()
    data["providers"][0]["api_kye_env"] = "X"
    assert any("providers.0.api_kye_env" in p for p in problems(data))


def test_unknown_provider_reference() -> None:
    data = base()
    data["models"][0]["targets"][0]["provider"] = "nope"
    assert any("models.0.targets.0.provider: unknown provider 'nope'" in p for p in problems(data))


def test_unknown_allowed_model() -> None:
    data = base()
    data["tenants"][0]["allowed_models"] = ["ghost"]
    assert any("unknown model 'ghost'" in p for p in problems(data))


def test_duplicates() -> None:
    data = base()
    data["providers"].append(dict(data["providers"][0]))
    data["tenants"].append({"name": "t2", "api_key_sha256": [HASH]})
    found = " ".join(problems(data))
    assert "duplicate name 'p1'" in found
    assert "tenants.1.api_key_sha256.0: key already used by 't1'" in found


def test_problems_across_sections_are_listed_one_by_one() -> None:
    data = base()
    data["models"][0]["targets"][0]["provider"] = "ghost"
    data["tenants"][0]["allowed_models"] = ["nope"]
    data["tenants"][0]["api_key_sha256"] = [HASH, HASH]
    data["processor"] = {"admin_port": 8080}
    found = problems(data)
    assert found == [
        "models.0.targets.0.provider: unknown provider 'ghost'",
        "tenants.0.allowed_models: unknown model 'nope'",
        "tenants.0.api_key_sha256.1: key already used by this tenant",
        "processor.admin_port: port 8080 is already used by listener",
    ]


@pytest.mark.parametrize("section", ["listener", "envoy_admin"])
def test_envoy_addresses_must_be_ip_literals(section: str) -> None:
    data = base()
    data[section] = {"address": "localhost"}
    assert any(p.startswith(f"{section}.address:") for p in problems(data))


def test_base_url_credentials_are_refused() -> None:
    data = base()
    data["providers"][0]["base_url"] = "https://user:secret@api.example.com/v1"
    found = problems(data)
    assert any("must not carry credentials" in p for p in found)
    assert not any("secret" in p.replace("must not carry credentials", "") for p in found)


def test_key_hash_format() -> None:
    data = base()
    data["tenants"][0]["api_key_sha256"] = ["sk-plaintext-key"]
    found = problems(data)
    assert any(p.startswith("tenants.0.api_key_sha256") for p in found)
    # The rejected value is never echoed back.
    assert not any("sk-plaintext-key" in p for p in found)


def test_azure_needs_version_and_key() -> None:
    data = base()
    data["providers"][0] = {"name": "az", "type": "azure", "base_url": "https://x.openai.azure.com"}
    data["models"][0]["targets"][0]["provider"] = "az"
    assert "azure providers need api_key_env or api_key_file" in " ".join(problems(data))
    data["providers"][0]["api_key_env"] = "AZ_KEY"
    assert "azure providers need api_version" in " ".join(problems(data))
    data["providers"][0]["api_version"] = "2024-10-21"
    parse_config(data)


def test_provider_type_specific_fields() -> None:
    data = base()
    data["providers"][0] = {"name": "br", "type": "bedrock", "base_url": "https://b.example"}
    data["models"][0]["targets"][0]["provider"] = "br"
    assert any("bedrock providers need aws_region" in p for p in problems(data))
    data["providers"][0]["aws_region"] = "us-east-1"
    data["providers"][0]["api_key_env"] = "X"
    assert any("sign requests with AWS credentials" in p for p in problems(data))
    del data["providers"][0]["api_key_env"]
    parse_config(data)
    data["providers"][0] = {"name": "br", "type": "anthropic", "base_url": "https://a.example"}
    assert any("anthropic providers need api_key_env" in p for p in problems(data))
    data["providers"][0]["api_key_env"] = "K"
    data["providers"][0]["aws_region"] = "us-east-1"
    assert any("only valid for bedrock" in p for p in problems(data))


def test_bedrock_credentials_from_env_or_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = base()
    data["providers"][0] = {
        "name": "br",
        "type": "bedrock",
        "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
        "aws_region": "us-east-1",
        "aws_access_key_id_env": "GW_AKID",
        "aws_secret_access_key_env": "GW_SECRET",
        "aws_session_token_env": "GW_TOKEN",
    }
    data["models"][0]["targets"][0]["provider"] = "br"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="AWS credentials missing"):
        load_config(path)
    monkeypatch.setenv("GW_AKID", "AKIDEXAMPLE")
    monkeypatch.setenv("GW_SECRET", "aws-secret-value")
    creds = load_config(path).credentials["br"]
    assert isinstance(creds, AwsCredentials)
    assert creds.access_key_id == "AKIDEXAMPLE"
    assert creds.secret_access_key.get_secret_value() == "aws-secret-value"
    assert creds.session_token is None
    assert "aws-secret-value" not in repr(creds)

    ini = tmp_path / "credentials"
    ini.write_text(
        "[prod]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\n"
        "aws_session_token = tok\n"
    )
    data["providers"][0]["aws_credentials_file"] = str(ini)
    data["providers"][0]["aws_profile"] = "prod"
    path.write_text(yaml.safe_dump(data))
    creds = load_config(path).credentials["br"]
    assert isinstance(creds, AwsCredentials)
    assert creds.access_key_id == "AKIDFILE"
    assert creds.session_token is not None and creds.session_token.get_secret_value() == "tok"
    data["providers"][0]["aws_profile"] = "missing"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"has no profile \[missing\]"):
        load_config(path)


def test_auth_without_tenants() -> None:
    data = base()
    data["tenants"] = []
    assert any("no tenant" in p for p in problems(data))
    data["auth"] = {"enabled": False}
    parse_config(data)


def test_credentials_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = base()
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    data["providers"][0]["api_key_env"] = "GW_TEST_KEY"
    data["providers"].append(
        {
            "name": "p2",
            "type": "vllm",
            "base_url": "http://h:8000/v1",
            "api_key_file": str(key_file),
        }
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "providers.0: environment variable GW_TEST_KEY is not set or empty"
    ]
    monkeypatch.setenv("GW_TEST_KEY", "env-secret")
    loaded = load_config(path)
    assert loaded.credentials["p1"].get_secret_value() == "env-secret"
    assert loaded.credentials["p2"].get_secret_value() == "file-secret"
    assert "env-secret" not in repr(loaded)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_check_config_cli_reports_and_fails(tmp_path: Path) -> None:
    data = base()
    data["providers"][0]["timeout_seconds"] = -1
    data["models"][0]["targets"][0]["provider"] = "ghost"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "providers.0.timeout_seconds" in result.stderr
    path.write_text(yaml.safe_dump(base()))
    assert run_cli("check-config", str(path)).returncode == 0


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "examples" / "gateway.yaml"
    result = run_cli("check-config", "--skip-credentials", str(example))
    assert result.returncode == 0, result.stderr


def test_config_schema_cli() -> None:
    result = run_cli("config-schema")
    schema = json.loads(result.stdout)
    assert "providers" in schema["properties"]
    assert "providers" in schema["required"]


def test_hash_key_cli_reads_stdin() -> None:
    import hashlib

    result = run_cli("hash-key", stdin="sk-some-key\n")
    assert result.stdout.strip() == hashlib.sha256(b"sk-some-key").hexdigest()


def test_fail_open_needs_a_keyless_openai_compatible_model() -> None:
    data = base()
    data["resilience"] = {"processor_failure_open": True}
    assert any("fail_open_model: processor_failure_open needs" in p for p in problems(data))
    data["resilience"]["fail_open_model"] = "m1"
    # A provider with a key cannot take unprocessed requests.
    data["providers"][0]["api_key_env"] = "K"
    assert any("must be a keyless OpenAI-compatible backend" in p for p in problems(data))
    del data["providers"][0]["api_key_env"]
    parse_config(data)
    data["resilience"] = {"fail_open_model": "m1"}
    assert any("only used with processor_failure_open" in p for p in problems(data))


def test_tracing_is_off_by_default_and_checked_when_set() -> None:
    tracing = parse_config(base()).telemetry.tracing
    assert tracing.enabled is False
    data = base()
    data["telemetry"] = {
        "tracing": {"enabled": True, "endpoint": "http://collector:4317", "sampling_ratio": 1.5}
    }
    found = problems(data)
    assert any(p.startswith("telemetry.tracing.endpoint:") for p in found)
    assert any(p.startswith("telemetry.tracing.sampling_ratio:") for p in found)
    data["telemetry"] = {"tracing": {"enabled": True, "endpoint": "[::1]:4317"}}
    assert parse_config(data).telemetry.tracing.host_port == ("::1", 4317)
