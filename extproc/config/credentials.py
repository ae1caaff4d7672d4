"""Provider credentials: resolved once at load from environment variables or files.

Owns the credential types adapters receive and their resolution; secrets are held as
`SecretStr` and never printed.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass

from pydantic import SecretStr

from extproc.config.schema import ProviderConfig, ProviderType


@dataclass(frozen=True)
class AwsCredentials:
    """AWS credentials for SigV4 signing (Bedrock). The secret parts never print."""

    access_key_id: str
    secret_access_key: SecretStr
    session_token: SecretStr | None = None

    def __repr__(self) -> str:
        return f"AwsCredentials(access_key_id='{self.access_key_id[:4]}...')"


Credential = SecretStr | AwsCredentials


def read_credential(provider: ProviderConfig) -> Credential | None:
    """The provider's credential from its env variable or file (None: keyless); ValueError
    saying what is missing."""
    if provider.type is ProviderType.BEDROCK:
        return _read_aws_credentials(provider)
    if provider.api_key_env:
        value = os.environ.get(provider.api_key_env)
        if not value:
            raise ValueError(f"environment variable {provider.api_key_env} is not set or empty")
        return SecretStr(value.strip())
    if provider.api_key_file:
        try:
            value = provider.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read api_key_file {provider.api_key_file}: {exc.strerror}"
            ) from None
        if not value:
            raise ValueError(f"api_key_file {provider.api_key_file} is empty")
        return SecretStr(value)
    return None


def _read_aws_credentials(provider: ProviderConfig) -> AwsCredentials:
    if provider.aws_credentials_file is not None:
        parser = configparser.ConfigParser()
        try:
            with provider.aws_credentials_file.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ValueError(
                f"cannot read aws_credentials_file {provider.aws_credentials_file}: {reason}"
            ) from None
        if not parser.has_section(provider.aws_profile):
            raise ValueError(
                f"aws_credentials_file {provider.aws_credentials_file} has no profile "
                f"[{provider.aws_profile}]"
            )
        section = parser[provider.aws_profile]
        key_id = section.get("aws_access_key_id", "").strip()
        secret = section.get("aws_secret_access_key", "").strip()
        token = section.get("aws_session_token", "").strip()
        where = f"profile [{provider.aws_profile}] of {provider.aws_credentials_file}"
    else:
        key_id = os.environ.get(provider.aws_access_key_id_env, "").strip()
        secret = os.environ.get(provider.aws_secret_access_key_env, "").strip()
        token = os.environ.get(provider.aws_session_token_env, "").strip()
        where = (
            f"environment variables {provider.aws_access_key_id_env} and "
            f"{provider.aws_secret_access_key_env}"
        )
    if not key_id or not secret:
        raise ValueError(f"AWS credentials missing: set {where}")
    return AwsCredentials(key_id, SecretStr(secret), SecretStr(token) if token else None)
