"""schemathesis runs docs/openapi.yaml against the live Envoy listener (issue 15).

Requests are generated from the document, valid and invalid alike (schemathesis's positive and
negative modes), and sent with a valid key. Every answer must conform to the document: its
status documented, its content type and body schema the documented ones, no server error, and
data the document calls invalid refused with a 4xx. The only 5xx with a reason to appear is a
504 when the request itself asked for a very short timeout.

The document names no models (they are a deployment's); this run's copy points `model` at the
stack's chat and embeddings models, so valid requests reach OpenAI-shaped and translated
providers, and leaves out the two fields whose rules cross fields (see below).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.e2e.conftest import FULL_KEY, Stack, make_stack

pytestmark = pytest.mark.e2e

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
CHAT_MODELS = ["chat-openai", "chat-azure", "chat-anthropic", "chat-gemini", "chat-bedrock"]
EMBEDDING_MODELS = ["embed-openai", "embed-gemini", "embed-bedrock"]
# A request may ask for a timeout this short and get the 504 it asked for.
SHORT_TIMEOUT_SECONDS = 5.0


def _document_for_this_stack() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
    document = copy.deepcopy(raw)
    schemas = document["components"]["schemas"]
    for name, models in (
        ("ChatCompletionRequest", CHAT_MODELS),
        ("EmbeddingRequest", EMBEDDING_MODELS),
    ):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": models}
    # Two cross-field rules the document states in words but cannot express as schemas: a
    # tool message answers an earlier call, and tool_choice names one of `tools`. Left out of
    # this run, most valid requests it generates are valid to the gateway too.
    schemas["ChatMessage"]["anyOf"] = [
        v for v in schemas["ChatMessage"]["anyOf"] if not v["$ref"].endswith("/ToolMessage")
    ]
    del schemas["ChatCompletionRequest"]["properties"]["tool_choice"]
    paths = document["paths"]
    model = paths["/v1/models/{model}"]["get"]["parameters"][0]
    model["schema"] = {"type": "string", "enum": CHAT_MODELS + EMBEDDING_MODELS + ["nope"]}
    return document


SCHEMA = schemathesis.openapi.from_dict(_document_for_this_stack())


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private stack whose breakers never open: a short timeout a request asked for must not
    turn into 503s for the requests after it."""

    def steady(config: dict[str, Any]) -> None:
        config["resilience"]["breaker_consecutive_failures"] = 1000
        config["resilience"]["breaker_min_requests"] = 100000

    with make_stack(Path(tmp_path_factory.mktemp("openapi")), customize=steady) as stack:
        yield stack


def _asked_for_a_short_timeout(case: schemathesis.Case) -> bool:
    limits: list[Any] = []
    if isinstance(case.body, dict):
        limits.append(case.body.get("timeout"))
    if case.headers:
        limits.append(case.headers.get("x-gateway-timeout"))
    for limit in limits:
        try:
            if 0 < float(limit) < SHORT_TIMEOUT_SECONDS:
                return True
        except (TypeError, ValueError):
            continue
    return False


@schemathesis.check
def no_unexplained_server_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """No 5xx, except the 504 `provider_timeout` of a request that asked for a short timeout."""
    if response.status_code < 500:
        return None
    if response.status_code == 504 and _asked_for_a_short_timeout(case):
        error = orjson.loads(response.content)["error"]
        assert error["code"] == "provider_timeout", error
        return None
    raise AssertionError(f"server error {response.status_code}: {response.content[:300]!r}")


CHECKS = [
    no_unexplained_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
]


@SCHEMA.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_the_gateway_conforms_to_its_openapi_document(
    case: schemathesis.Case, api_stack: Stack
) -> None:
    case.call_and_validate(
        base_url=api_stack.base_url,
        headers={"authorization": f"Bearer {FULL_KEY}"},
        checks=CHECKS,
        timeout=60,
    )
