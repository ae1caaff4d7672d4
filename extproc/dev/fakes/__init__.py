"""Fake upstream LLM providers in their real wire formats (OpenAI, Anthropic, Gemini, Bedrock).

Shared by unit/e2e tests, `make run` and benchmarks: controllable latency, errors, faults and
stream pacing, plus a log of every request received. CLI: `python -m extproc.dev.fakes`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from extproc.dev.fakes.app import create_app
    from extproc.dev.fakes.core import (
        Behaviour,
        FakeProvider,
        RecordedRequest,
        count_tokens,
        embedding_vector,
        last_user_text,
        split_reply,
    )
    from extproc.dev.fakes.openai import FAKE_MODEL_ID, openai_error
    from extproc.dev.fakes.runner import FakeProviderServer, bind_socket, format_base_url

# Each export and the submodule holding it. They load on first use, so that importing one
# submodule (`core`, `eventstream_encoder`) does not load every wire format with it.
_EXPORTS = {
    "FAKE_MODEL_ID": "openai",
    "Behaviour": "core",
    "FakeProvider": "core",
    "FakeProviderServer": "runner",
    "RecordedRequest": "core",
    "bind_socket": "runner",
    "count_tokens": "core",
    "create_app": "app",
    "embedding_vector": "core",
    "format_base_url": "runner",
    "last_user_text": "core",
    "openai_error": "openai",
    "split_reply": "core",
}

__all__ = [
    "FAKE_MODEL_ID",
    "Behaviour",
    "FakeProvider",
    "FakeProviderServer",
    "RecordedRequest",
    "bind_socket",
    "count_tokens",
    "create_app",
    "embedding_vector",
    "format_base_url",
    "last_user_text",
    "openai_error",
    "split_reply",
]


def __getattr__(name: str) -> Any:
    """Load an export's submodule on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
