"""docs/openapi.yaml is valid OpenAPI and says what the gateway really does.

Its endpoints are the ones the pipeline routes, its bounds the validator's constants, and each
bound is where the real validator starts to refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from openapi_spec_validator import validate as validate_openapi

from extproc.decisions import validation
from extproc.decisions.openai_request import Endpoint, ToolChoiceMode
from extproc.errors import ERROR_TYPES, GatewayError
from extproc.pipeline import request as pipeline_request

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
SCHEMAS: dict[str, Any] = DOC["components"]["schemas"]
CHAT = SCHEMAS["ChatCompletionRequest"]["properties"]
EMBEDDINGS = SCHEMAS["EmbeddingRequest"]["properties"]


def test_the_document_is_valid_openapi_and_schemathesis_loads_it() -> None:
    validate_openapi(DOC)
    schema = schemathesis.openapi.from_path(str(DOC_PATH))
    labels = {operation.ok().label for operation in schema.get_all_operations()}
    assert len(labels) == sum(len(methods) for methods in DOC["paths"].values())


def test_every_endpoint_in_the_document_is_routed_by_the_gateway_and_vice_versa() -> None:
    routed = {(path, "post") for path in pipeline_request._POST_ENDPOINTS}
    routed |= {(path, "get") for path in pipeline_request._HEALTH_PATHS}
    # The pipeline answers /v1/models and every /v1/models/<name> (GET).
    routed |= {("/v1/models", "get"), ("/v1/models/{model}", "get")}
    documented = {(path, method) for path, methods in DOC["paths"].items() for method in methods}
    assert documented == routed
    assert set(pipeline_request._POST_ENDPOINTS.values()) == set(Endpoint)


def bounds(schema: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(minimum, maximum, exclusive minimum) of a numeric property."""
    return schema.get("minimum"), schema.get("maximum"), schema.get("exclusiveMinimum", False)


def test_numeric_bounds_are_the_validators_constants() -> None:
    assert bounds(CHAT["temperature"]) == (
        validation.MIN_TEMPERATURE,
        validation.MAX_TEMPERATURE,
        False,
    )
    assert bounds(CHAT["top_p"]) == (0, validation.MAX_TOP_P, True)
    for name in ("max_tokens", "max_completion_tokens"):
        assert bounds(CHAT[name]) == (1, validation.MAX_TOKENS_LIMIT, False)
    assert bounds(CHAT["n"]) == (1, validation.MAX_CHOICES, False)
    assert bounds(CHAT["top_k"]) == (1, None, False)
    assert bounds(EMBEDDINGS["dimensions"]) == (1, None, False)
    timeout = SCHEMAS["Timeout"]["anyOf"][0]
    header = DOC["components"]["parameters"]["GatewayTimeout"]["schema"]
    for schema in (timeout, header):
        assert bounds(schema) == (0, validation.MAX_TIMEOUT_SECONDS, True)
    assert SCHEMAS["ModelId"]["maxLength"] == validation.MAX_MODEL_ID_CHARS
    assert CHAT["stop"]["anyOf"][1]["maxItems"] == validation.MAX_STOP_SEQUENCES


def test_enumerations_are_the_validators() -> None:
    roles = set()
    for variant in SCHEMAS["ChatMessage"]["anyOf"]:
        message = SCHEMAS[variant["$ref"].rsplit("/", 1)[1]]
        roles |= set(message["properties"]["role"]["enum"])
    assert roles == validation.CHAT_ROLES
    part_types = set()
    for part in SCHEMAS["ContentPart"]["anyOf"]:
        part_types |= set(part["properties"]["type"]["enum"])
    assert part_types == validation.CONTENT_PART_TYPES
    formats = CHAT["response_format"]["properties"]["type"]["enum"]
    assert tuple(formats) == validation.RESPONSE_FORMATS
    assert tuple(EMBEDDINGS["encoding_format"]["enum"]) == validation.ENCODING_FORMATS
    modes = CHAT["tool_choice"]["anyOf"][0]["enum"]
    assert set(modes) == {m.value for m in ToolChoiceMode} - {ToolChoiceMode.FUNCTION.value}
    pattern = SCHEMAS["FunctionName"]["pattern"]
    assert pattern == f"^{validation.FUNCTION_NAME.pattern}$"


def test_every_documented_error_status_is_one_the_gateway_answers() -> None:
    statuses = set()
    for methods in DOC["paths"].values():
        for operation in methods.values():
            statuses |= {int(s) for s in operation["responses"] if int(s) >= 400}
    # 426 and 431 are Envoy's own replies (rewritten to OpenAI errors), the rest the gateway's.
    assert statuses - {426, 431} <= set(ERROR_TYPES)


# -- each documented bound is where the real validator starts to refuse ----------------------

USER = [{"role": "user", "content": "hi"}]


def accepted(**fields: Any) -> bool:
    body = {"model": "m", "messages": USER, **fields}
    try:
        validation.validate(Endpoint.CHAT, body, "m")
    except GatewayError as error:
        assert error.status == 400
        return False
    return True


@pytest.mark.parametrize(
    "name", ["temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "top_k"]
)
def test_the_validator_accepts_each_documented_bound_and_refuses_beyond_it(name: str) -> None:
    low, high, exclusive = bounds(CHAT[name])
    integer = CHAT[name]["type"] == "integer"
    step = 1 if integer else 0.01
    if high is not None:
        assert accepted(**{name: high})
        assert not accepted(**{name: high + step})
    if exclusive:
        assert not accepted(**{name: low})
        assert accepted(**{name: low + step})
    else:
        assert accepted(**{name: low})
        assert not accepted(**{name: low - step})
    assert not accepted(**{name: "1"})


def test_the_timeout_bounds_are_the_validators() -> None:
    _, high, exclusive = bounds(SCHEMAS["Timeout"]["anyOf"][0])
    assert exclusive and accepted(timeout=high) and accepted(timeout=0.001)
    assert not accepted(timeout=0) and not accepted(timeout=high + 0.01)


def test_the_model_and_stop_limits_are_the_validators() -> None:
    longest = SCHEMAS["ModelId"]["maxLength"]
    assert validation.check_model_id({"model": "m" * longest}) == "m" * longest
    with pytest.raises(GatewayError):
        validation.check_model_id({"model": "m" * (longest + 1)})
    most = CHAT["stop"]["anyOf"][1]["maxItems"]
    assert accepted(stop=["s"] * most)
    assert not accepted(stop=["s"] * (most + 1))
