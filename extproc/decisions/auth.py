"""Client authentication and model authorization.

API keys are only ever held as SHA-256 hex digests; the raw key from the
`Authorization` header is hashed and dropped. Errors never echo the key.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from extproc.config.schema import DEFAULT_KEY_ID_LENGTH, GatewayConfig
from extproc.errors import GatewayError

KEY_ID_LENGTH = DEFAULT_KEY_ID_LENGTH


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key, as stored in the config."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(digest: str) -> str:
    """The short, non-secret id of a key (logs, metrics): the start of its SHA-256 digest,
    already public in the config."""
    return digest[:KEY_ID_LENGTH]


@dataclass(frozen=True, slots=True)
class Tenant:
    """An authenticated caller (a tenant through one of its keys) and the models it may use
    (None: all)."""

    name: str
    allowed_models: frozenset[str] | None
    key_id: str = ""  # the key's configured id, else `key_id(digest)`; "" without auth
    expires_at: float | None = None  # Unix time after which the key is refused

    def may_use(self, model: str) -> bool:
        """True when this tenant is allowed to call `model`."""
        return self.allowed_models is None or model in self.allowed_models


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(
        401, "invalid_api_key", message, headers={"www-authenticate": 'Bearer realm="llm-gateway"'}
    )


def _allowed(names: list[str] | None) -> frozenset[str] | None:
    return None if names is None or "*" in names else frozenset(names)


def _within(tenant: frozenset[str] | None, key: frozenset[str] | None) -> frozenset[str] | None:
    if tenant is None:
        return key
    return tenant if key is None else tenant & key


class Authenticator:
    """Maps `Authorization: Bearer KEY` to a tenant (through the key), or raises 401."""

    def __init__(self, config: GatewayConfig) -> None:
        self.enabled = config.auth.enabled
        self._anonymous = Tenant(config.auth.anonymous_tenant, None)
        self._by_hash: dict[str, Tenant] = {}
        for tenant in config.tenants:
            allowed = _allowed(tenant.allowed_models)
            for key in tenant.all_keys():
                expires = key.expires_at.timestamp() if key.expires_at is not None else None
                self._by_hash[key.sha256] = Tenant(
                    tenant.name,
                    _within(allowed, _allowed(key.allowed_models)),
                    key.key_id,
                    expires,
                )

    def authenticate(self, authorization: str | None) -> Tenant:
        """Return the tenant for an `Authorization` header value."""
        if not self.enabled:
            return self._anonymous
        if not authorization:
            raise _unauthorized("missing API key: send it as 'Authorization: Bearer YOUR_KEY'")
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _unauthorized("malformed Authorization header: expected 'Bearer YOUR_KEY'")
        tenant = self._by_hash.get(hash_key(key))
        if tenant is None:
            raise _unauthorized("invalid API key")
        if tenant.expires_at is not None and time.time() >= tenant.expires_at:
            raise _unauthorized(f"this API key (id {tenant.key_id}) has expired")
        return tenant


def forbid_model(tenant: Tenant, model: str) -> GatewayError:
    """The 403 for a model the tenant may not use."""
    return GatewayError(
        403,
        "model_not_allowed",
        f"this API key is not allowed to use model '{model}'",
        "model",
    )
