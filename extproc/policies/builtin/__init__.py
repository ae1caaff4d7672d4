"""The policies that ship with the gateway, by the name a config gives them.

Each module holds one policy and its `Options`; all of them are inline (they run on the event
loop and take microseconds). They use nothing of the gateway but `extproc.policies.api`.
"""

from __future__ import annotations

from extproc.policies.api import Policy
from extproc.policies.builtin.headers import RequiredHeadersPolicy
from extproc.policies.builtin.max_tokens import MaxTokensPolicy
from extproc.policies.builtin.models import ModelListPolicy
from extproc.policies.builtin.prompt_guard import PromptGuard
from extproc.policies.builtin.system_prompt import SystemPromptPolicy
from extproc.policies.builtin.tags import TagsPolicy

BUILTINS: dict[str, type[Policy]] = {
    "max_tokens": MaxTokensPolicy,
    "models": ModelListPolicy,
    "required_headers": RequiredHeadersPolicy,
    "prompt_guard": PromptGuard,
    "system_prompt": SystemPromptPolicy,
    "tags": TagsPolicy,
}

__all__ = [
    "BUILTINS",
    "MaxTokensPolicy",
    "ModelListPolicy",
    "PromptGuard",
    "RequiredHeadersPolicy",
    "SystemPromptPolicy",
    "TagsPolicy",
]
