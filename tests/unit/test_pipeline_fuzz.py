"""Property tests: whatever a client sends, the pipeline answers or raises GatewayError."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extproc.errors import GatewayError
from extproc.pipeline.actions import Continue, Respond
from extproc.pipeline.request import RequestPipeline
from tests.unit.test_pipeline import KEY, gateway

GATEWAY = gateway()
PATHS = st.sampled_from(
    ["/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/models/gpt", "/health", "/x"]
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "model",
    "messages",
    "temperature",
    "max_tokens",
    "top_p",
    "top_k",
    "timeout",
    "stream",
    "stream_options",
    "input",
    "encoding_format",
    "max_completion_tokens",
]
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "x"]), "content": json_values}
    ),
    max_size=3,
)


REACHED: set[str] = set()


def drive(headers: dict[str, str], body: bytes) -> None:
    pipe = RequestPipeline(GATEWAY)
    try:
        action = pipe.on_request_headers(headers, False)
        if isinstance(action, Respond):
            return
        assert isinstance(action, Continue)
        action = pipe.on_request_body(body, True)
        assert isinstance(action, Continue)
        assert action.metadata and action.metadata["gw"]["route"]
        REACHED.add("routed")
        answer = pipe.on_response_headers({":status": "200"}, False)
        assert isinstance(answer, Continue)
    except GatewayError as error:
        assert 400 <= error.status < 500
        parsed = orjson.loads(pipe.fail(error).body)
        assert parsed["error"]["code"] == error.code


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(PATHS, st.sampled_from(["GET", "POST", "PUT", ""]), st.binary(max_size=200))
def test_arbitrary_bytes(path: str, method: str, body: bytes) -> None:
    drive({":path": path, ":method": method, "authorization": f"Bearer {KEY}"}, body)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.sampled_from(["gpt", "emb", "azgpt", "ghost"]), messages)
@example(body={}, model="gpt", msgs=[{"role": "user", "content": "hi"}])
def test_arbitrary_json_fields(body: dict[str, Any], model: str, msgs: list[Any]) -> None:
    body.setdefault("model", model)
    body.setdefault("messages", msgs)
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        drive(
            {":path": path, ":method": "POST", "authorization": f"Bearer {KEY}"}, orjson.dumps(body)
        )


@settings(max_examples=200)
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=6))
def test_arbitrary_headers(headers: dict[str, str]) -> None:
    drive(headers, b"{}")


def test_the_properties_reach_the_routed_path() -> None:
    # Guards the properties above: without a routed request their success branch is dead.
    drive(
        {":path": "/v1/chat/completions", ":method": "POST", "authorization": f"Bearer {KEY}"},
        orjson.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}),
    )
    assert "routed" in REACHED
