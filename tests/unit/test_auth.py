"""Unit tests of API-key authentication and model authorization."""

from __future__ import annotations

import hashlib

import pytest

from extproc.config.loading import parse_config
from extproc.decisions.auth import Authenticator, hash_key
from extproc.errors import GatewayError

KEY_A = "sk-tenant-a-secret"
KEY_B = "sk-tenant-b-secret"


def authenticator(enabled: bool = True) -> Authenticator:
    config = parse_config(
        {
            "auth": {"enabled": enabled},
            "providers": [{"name": "p", "type": "openai", "base_url": "http://h/v1"}],
            "models": [
                {"name": "m1", "targets": [{"provider": "p", "model": "x"}]},
                {"name": "m2", "targets": [{"provider": "p", "model": "y"}]},
            ],
            "tenants": [
                {"name": "a", "api_key_sha256": [hash_key(KEY_A)]},
                {"name": "b", "api_key_sha256": [hash_key(KEY_B)], "allowed_models": ["m1"]},
            ],
        }
    )
    return Authenticator(config)


def test_hash_is_sha256_hex() -> None:
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()


def test_known_keys_map_to_tenants() -> None:
    auth = authenticator()
    assert auth.authenticate(f"Bearer {KEY_A}").name == "a"
    assert auth.authenticate(f"bearer   {KEY_B}  ").name == "b"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic abc", KEY_A, "Bearer sk-unknown"]
)
def test_bad_credentials_are_401_and_never_echo_the_key(header: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        authenticator().authenticate(header)
    err = info.value
    assert err.status == 401
    assert err.code == "invalid_api_key"
    assert "sk-" not in err.message and "sk-" not in err.body().decode()


def test_model_rbac() -> None:
    auth = authenticator()
    a = auth.authenticate(f"Bearer {KEY_A}")
    b = auth.authenticate(f"Bearer {KEY_B}")
    assert a.may_use("m1") and a.may_use("m2")
    assert b.may_use("m1") and not b.may_use("m2")


def test_auth_can_be_disabled() -> None:
    tenant = authenticator(enabled=False).authenticate(None)
    assert tenant.may_use("m2")
