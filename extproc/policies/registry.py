"""Policies by name: the built-ins and the `llm_gateway.policies` entry-point group.

`policy_problems` checks every policy list of a config when it loads (unknown name, options the
policy's `Options` model refuses, a constructor that fails), each problem with its path;
`build` makes the instance a gateway runs. Built-ins are imported only when a config uses them.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from extproc.policies.api import Policy

if TYPE_CHECKING:
    from extproc.config.schema import GatewayConfig, PolicyConfig

ENTRY_POINT_GROUP = "llm_gateway.policies"
# Built-in policies, "module:class" (imported on first use: `grpc` brings grpc.aio).
BUILTINS: dict[str, str] = {
    "max_tokens": "extproc.policies.builtin.max_tokens:MaxTokensPolicy",
    "models": "extproc.policies.builtin.models:ModelListPolicy",
    "required_headers": "extproc.policies.builtin.headers:RequiredHeadersPolicy",
    "prompt_guard": "extproc.policies.builtin.prompt_guard:PromptGuard",
    "system_prompt": "extproc.policies.builtin.system_prompt:SystemPromptPolicy",
    "tags": "extproc.policies.builtin.tags:TagsPolicy",
    "grpc": "extproc.policies.remote:RemotePolicy",
}


class PolicyLoadError(Exception):
    """A policy cannot be found, loaded or built; the message says why (no config values)."""


def available() -> dict[str, str]:
    """Every policy name this process can use → where it comes from ("module:class")."""
    importlib.invalidate_caches()  # see packages installed since the processor started
    found = dict(BUILTINS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in BUILTINS:
            continue  # a built-in's name always means the built-in (see `policy_class`)
        found[point.name] = point.value
    return found


def policy_class(name: str) -> type[Policy]:
    """The class of the policy called `name`."""
    points = [p for p in entry_points(group=ENTRY_POINT_GROUP) if p.name == name]
    if name in BUILTINS:
        if any(p.value != BUILTINS[name] for p in points):
            raise PolicyLoadError(
                f"the entry point '{name}' of {ENTRY_POINT_GROUP} clashes with the built-in "
                "policy of that name; rename it"
            )
        target = BUILTINS[name]
    elif len(points) == 1:
        target = points[0].value
    elif points:
        raise PolicyLoadError(f"several installed packages provide the policy '{name}'")
    else:
        known = ", ".join(sorted(available()))
        raise PolicyLoadError(f"unknown policy '{name}' (known: {known})")
    module_name, _, attr = target.partition(":")
    try:
        loaded: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            loaded = getattr(loaded, part)
    except Exception as exc:  # a broken package must not break check-config
        raise PolicyLoadError(
            f"the policy '{name}' ({target}) cannot be imported: {type(exc).__name__}"
        ) from None
    if not isinstance(loaded, type) or not callable(getattr(loaded, "check", None)):
        raise PolicyLoadError(f"the policy '{name}' ({target}) is not a policy class")
    return loaded


def build(config: PolicyConfig) -> Policy:
    """A new instance of the configured policy, its options validated."""
    cls = policy_class(config.policy)
    options_model = getattr(cls, "Options", None)
    options: Any = config.options
    if options_model is not None:
        options = options_model.model_validate(config.options)
    try:
        instance: Policy = cls(options)
    except Exception as exc:
        raise PolicyLoadError(
            f"the policy '{config.policy}' failed to start: {type(exc).__name__}: {exc}"[:500]
        ) from None
    return instance


def policy_problems(config: GatewayConfig) -> list[str]:
    """Problems with the config's policies, each starting with its path."""
    from extproc.config.schema import policy_lists

    problems: list[str] = []
    for where, policies in policy_lists(config):
        for index, policy in enumerate(policies):
            path = f"{where}.{index}"
            try:
                build(policy)
            except PolicyLoadError as exc:
                problems.append(f"{path}.policy: {exc}")
            except ValidationError as exc:
                for error in exc.errors():
                    loc = ".".join(str(part) for part in error["loc"])
                    message = str(error["msg"]).removeprefix("Value error, ")
                    problems.append(f"{path}.options{'.' + loc if loc else ''}: {message}")
    return problems
