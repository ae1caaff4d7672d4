"""Loading the configuration file: YAML, validation with every problem and its path, credentials
and the tenants' key digest files.

Used by `extproc serve`, `check-config` and `render-envoy`. Nothing here runs per request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from extproc.config.credentials import Credential, read_credential
from extproc.config.key_files import with_key_files
from extproc.config.schema import GatewayConfig, reference_problems
from extproc.policies.registry import policy_problems


class ConfigError(Exception):
    """The configuration file cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus the provider credentials it refers to."""

    config: GatewayConfig
    credentials: dict[str, Credential]  # provider name -> key (absent: no key)
    source: str
    # governance.redis (limits and the cache): the URL from `url_env` (which may hold a
    # password), else `url`.
    redis_url: str | None = None
    # Not problems, but worth a WARNING line (e.g. a key digest file with no digest in it).
    warnings: tuple[str, ...] = ()


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate already-parsed YAML/JSON data; raise ConfigError listing every problem."""
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_format_error(e) for e in exc.errors()]) from None
    problems = reference_problems(config) + policy_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def _format_error(error: Any) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"])
    # Cross-field problems arrive joined as one "Value error, a; b" message.
    message = message.removeprefix("Value error, ")
    return f"{path}: {message}"


def load_config(path: str | Path, resolve_credentials: bool = True) -> LoadedConfig:
    """Read, parse and validate a config file; resolve credentials from env or files and read
    the tenants' key digest files (neither when `resolve_credentials` is false)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, ["file is not valid UTF-8"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"invalid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, ["top level must be a mapping"])
    config = parse_config(data, source)
    credentials: dict[str, Credential] = {}
    if resolve_credentials:
        config, problems, warnings = with_key_files(config)
        if not problems:
            # The digests from the files against every other key (used twice, ids shared).
            problems = reference_problems(config)
        for i, provider in enumerate(config.providers):
            try:
                key = read_credential(provider)
            except ValueError as exc:
                problems.append(f"providers.{i}: {exc}")
                continue
            if key is not None:
                credentials[provider.name] = key
        redis = config.governance.redis
        redis_url = redis.url
        uses_redis = config.governance.backend == "redis" or config.cache.backend == "redis"
        if uses_redis and redis.url_env:
            redis_url = os.environ.get(redis.url_env) or None
            if redis_url is None:
                problems.append(
                    f"governance.redis.url_env: environment variable {redis.url_env} is not set "
                    "or empty"
                )
        if problems:
            raise ConfigError(source, problems)
        return LoadedConfig(config, credentials, source, redis_url, tuple(warnings))
    return LoadedConfig(config=config, credentials=credentials, source=source)
