"""Fake upstream LLM provider speaking the OpenAI and Azure OpenAI wire formats.

Shared by unit/e2e tests, `make run` and benchmarks: controllable latency, errors and
stream pacing, plus a log of every request received. CLI: `python -m extproc.dev.fakes`.
"""

from extproc.dev.fakes.openai_server import (
    FAKE_MODEL_ID,
    Behaviour,
    FakeProvider,
    RecordedRequest,
    count_tokens,
    create_app,
    embedding_vector,
    last_user_text,
    openai_error,
    split_reply,
)
from extproc.dev.fakes.runner import FakeProviderServer, bind_socket, format_base_url

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
