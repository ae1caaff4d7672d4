"""Fake AWS Bedrock Runtime: Converse and ConverseStream, with SigV4 verification.

Owns the Bedrock wire format of the fake provider: it checks each request's SigV4
signature against known test credentials (botocore computes the expected one), checks the
Converse body shape, and answers as Bedrock does (JSON, binary event streams, AWS errors).
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from extproc.dev.fakes.core import (
    Arrival,
    FakeProvider,
    WireFormat,
    count_tokens,
    injected_error,
    reply_text,
    split_reply,
)
from extproc.dev.fakes.eventstream_encoder import event_message, exception_message

DEFAULT_ACCESS_KEY_ID: Final = "AKIDFAKEBEDROCK"
DEFAULT_SECRET_ACCESS_KEY: Final = "fake-bedrock-secret"
SERVICE: Final = "bedrock"
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)
EVENTSTREAM_CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"
JSON_CONTENT_TYPE: Final = "application/json"
ERROR_TYPE_SUFFIX: Final = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
SIGNATURE_MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
INVALID_TOKEN: Final = "The security token included in the request is invalid."

_PATH_RE: Final = re.compile(r"/model/(?P<model>.+)/(?P<operation>converse|converse-stream)$")
_TIMESTAMP_FORMAT: Final = "%Y%m%dT%H%M%SZ"
_PADDING: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_IMAGE_FORMATS: Final = frozenset({"png", "jpeg", "gif", "webp"})
_TOP_LEVEL_FIELDS: Final = frozenset(
    {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "guardrailConfig",
        "promptVariables",
        "requestMetadata",
        "performanceConfig",
    }
)
_INFERENCE_FIELDS: Final = frozenset({"maxTokens", "temperature", "topP", "stopSequences"})

# Injected error status → the AWS error type Bedrock reports with it.
ERROR_TYPES: Final[Mapping[int, str]] = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


# -- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeAwsKey:
    """The one AWS key the fake accepts. `region` None: any region in the scope is fine."""

    access_key_id: str = DEFAULT_ACCESS_KEY_ID
    secret_access_key: str = DEFAULT_SECRET_ACCESS_KEY
    session_token: str | None = None
    region: str | None = None


def key_from_env() -> FakeAwsKey:
    """The default key, overridden by `FAKE_BEDROCK_ACCESS_KEY_ID`, `..._SECRET_ACCESS_KEY`,
    `..._SESSION_TOKEN` and `..._REGION` when set."""
    return FakeAwsKey(
        os.environ.get("FAKE_BEDROCK_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY_ID),
        os.environ.get("FAKE_BEDROCK_SECRET_ACCESS_KEY", DEFAULT_SECRET_ACCESS_KEY),
        os.environ.get("FAKE_BEDROCK_SESSION_TOKEN") or None,
        os.environ.get("FAKE_BEDROCK_REGION") or None,
    )


_key = key_from_env()


def set_credentials(key: FakeAwsKey) -> FakeAwsKey:
    """Make the fake accept `key` from now on; returns the key it replaced."""
    global _key
    previous, _key = _key, key
    return previous


def current_credentials() -> FakeAwsKey:
    """The key the fake accepts now."""
    return _key


# -- signature verification ------------------------------------------------------------------


class SignatureFailure(NamedTuple):
    """Why a request's signature was refused: the AWS error type and message."""

    error_type: str
    message: str


def verify_signature(
    method: str,
    raw_path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    key: FakeAwsKey | None = None,
    now: datetime | None = None,
) -> SignatureFailure | None:
    """Check a SigV4 `Authorization` header as AWS does; None when the request is genuine.

    `raw_path` is the request target as received (percent-encoding intact, query included).
    """
    key = key or _key
    received: CIMultiDict[str] = CIMultiDict(headers)
    authorization = received.get("authorization")
    if not authorization:
        return SignatureFailure(
            "MissingAuthenticationTokenException", "Missing Authentication Token"
        )
    parsed = _parse_authorization(authorization)
    if isinstance(parsed, SignatureFailure):
        return parsed
    access_key_id, scope_date, region, service, signed_names, signature = parsed
    if access_key_id != key.access_key_id:
        return SignatureFailure("UnrecognizedClientException", INVALID_TOKEN)
    token = received.get("x-amz-security-token")
    if token != key.session_token:
        return SignatureFailure("UnrecognizedClientException", INVALID_TOKEN)
    amz_date = received.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return SignatureFailure(
            "IncompleteSignatureException",
            "Authorization header requires existence of a valid 'X-Amz-Date' header.",
        )
    now = now or datetime.now(UTC)
    if signed_at < now - MAX_CLOCK_SKEW:
        return SignatureFailure(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - MAX_CLOCK_SKEW).strftime(_TIMESTAMP_FORMAT)} "
            f"({now.strftime(_TIMESTAMP_FORMAT)} - 5 min.)",
        )
    if signed_at > now + MAX_CLOCK_SKEW:
        return SignatureFailure(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + MAX_CLOCK_SKEW).strftime(_TIMESTAMP_FORMAT)} "
            f"({now.strftime(_TIMESTAMP_FORMAT)} + 5 min.)",
        )
    if scope_date != amz_date[:8]:
        return SignatureFailure(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            "from HTTP.",
        )
    if service != SERVICE:
        return SignatureFailure(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{SERVICE}'.",
        )
    if key.region is not None and region != key.region:
        return SignatureFailure(
            "InvalidSignatureException", "Credential should be scoped to a valid region."
        )
    required = {"host", "x-amz-date"} | ({"x-amz-security-token"} if token else set())
    if not required <= set(signed_names):
        return SignatureFailure(
            "InvalidSignatureException",
            f"'{', '.join(sorted(required - set(signed_names)))}' must be a 'SignedHeader' "
            "in the AWS Authorization.",
        )
    request = AWSRequest(method=method, url="http://" + received.get("host", "") + raw_path)
    for name in signed_names:
        values = received.getall(name, [])
        if not values:
            return SignatureFailure("InvalidSignatureException", SIGNATURE_MISMATCH)
        for value in values:
            request.headers[name] = value  # HTTPHeaders appends: repeated headers stay
    request.data = body
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key.access_key_id, key.secret_access_key), service, region)
    if signer.signed_headers(signer.headers_to_sign(request)) != ";".join(signed_names):
        return SignatureFailure("InvalidSignatureException", SIGNATURE_MISMATCH)
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, signature):
        return SignatureFailure("InvalidSignatureException", SIGNATURE_MISMATCH)
    return None


def _parse_authorization(
    value: str,
) -> tuple[str, str, str, str, list[str], str] | SignatureFailure:
    """(access key id, scope date, region, service, signed header names, signature)."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        return SignatureFailure(
            "IncompleteSignatureException", "Unsupported AWS 'algorithm': " + algorithm[:40]
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, field_value = part.strip().partition("=")
        fields[name] = field_value
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if not fields.get(n)]
    if missing:
        return SignatureFailure(
            "IncompleteSignatureException",
            f"Authorization header requires '{missing[0]}' parameter.",
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        return SignatureFailure(
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. "
            "keyid/date/region/service/term.",
        )
    return (
        scope[0],
        scope[1],
        scope[2],
        scope[3],
        fields["SignedHeaders"].split(";"),
        fields["Signature"],
    )


# -- request checks --------------------------------------------------------------------------


class ConverseValidationError(ValueError):
    """A Converse body Bedrock would refuse with a ValidationException."""


def check_converse_body(body: Any) -> None:
    """Raise ConverseValidationError (a ValidationException message) for a refused body."""
    if not isinstance(body, dict):
        raise ConverseValidationError("Malformed input request: the body must be a JSON object.")
    unknown = sorted(set(body) - _TOP_LEVEL_FIELDS)
    if unknown:
        raise ConverseValidationError(f"Malformed input request: unknown field '{unknown[0]}'.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConverseValidationError("The messages field is required and must not be empty.")
    uses_tools = False
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ConverseValidationError(f"{where}.role must be user or assistant.")
        expected = "user" if index % 2 == 0 else "assistant"
        if index == 0 and message["role"] != "user":
            raise ConverseValidationError(
                "A conversation must start with a user message. Try again with a "
                "conversation that starts with a user message."
            )
        if message["role"] != expected:
            raise ConverseValidationError(
                "A conversation must alternate between user and assistant roles. Make sure "
                "the conversation alternates between user and assistant roles and try again."
            )
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise ConverseValidationError(f"{where}.content must be a non-empty list.")
        for block_index, block in enumerate(content):
            uses_tools |= _check_block(block, f"{where}.content.{block_index}")
    system = body.get("system")
    if system is not None and not (
        isinstance(system, list) and all(_is_text_block(b) for b in system)
    ):
        raise ConverseValidationError("system must be a list of text blocks.")
    _check_inference_config(body.get("inferenceConfig"))
    extra = body.get("additionalModelRequestFields")
    if extra is not None and not isinstance(extra, dict):
        raise ConverseValidationError("additionalModelRequestFields must be an object.")
    tool_config = body.get("toolConfig")
    if tool_config is not None:
        _check_tool_config(tool_config)
    elif uses_tools:
        raise ConverseValidationError(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )


def _is_text_block(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and set(block) == {"text"}
        and isinstance(block["text"], str)
        and bool(block["text"].strip())
    )


def _check_block(block: Any, where: str) -> bool:
    """Check one content block; True when it is a tool block."""
    if not isinstance(block, dict) or len(block) != 1:
        raise ConverseValidationError(
            f"{where} must hold exactly one of text, image, toolUse, toolResult."
        )
    kind, value = next(iter(block.items()))
    if kind == "text":
        if not _is_text_block(block):
            raise ConverseValidationError(
                f"The text field in the ContentBlock object at {where} is blank. Add text to "
                "the text field, and try again."
            )
        return False
    if kind == "image":
        source = value.get("source") if isinstance(value, dict) else None
        if (
            not isinstance(value, dict)
            or value.get("format") not in _IMAGE_FORMATS
            or not isinstance(source, dict)
            or not isinstance(source.get("bytes"), str)
        ):
            raise ConverseValidationError(f"{where}.image needs a format and source.bytes.")
        return False
    if kind == "toolUse":
        if not (
            isinstance(value, dict)
            and isinstance(value.get("toolUseId"), str)
            and isinstance(value.get("name"), str)
            and isinstance(value.get("input"), dict)
        ):
            raise ConverseValidationError(
                f"{where}.toolUse needs toolUseId, name and an input object."
            )
        return True
    if kind == "toolResult":
        content = value.get("content") if isinstance(value, dict) else None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("toolUseId"), str)
            or not isinstance(content, list)
            or value.get("status", "success") not in ("success", "error")
            or not all(
                isinstance(part, dict) and len(part) == 1 and ("text" in part or "json" in part)
                for part in content
            )
        ):
            raise ConverseValidationError(
                f"{where}.toolResult needs toolUseId and text/json content."
            )
        return True
    raise ConverseValidationError(
        f"{where}: content block type '{kind}' is not supported by the fake."
    )


def _check_inference_config(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict) or not set(config) <= _INFERENCE_FIELDS:
        raise ConverseValidationError(
            f"inferenceConfig accepts only {', '.join(sorted(_INFERENCE_FIELDS))}."
        )
    max_tokens = config.get("maxTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ConverseValidationError("inferenceConfig.maxTokens must be a positive integer.")
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConverseValidationError(f"inferenceConfig.{name} must be a number.")
    stops = config.get("stopSequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)
    ):
        raise ConverseValidationError("inferenceConfig.stopSequences must be a list of strings.")


def _check_tool_config(config: Any) -> None:
    tools = config.get("tools") if isinstance(config, dict) else None
    if not isinstance(tools, list) or not tools:
        raise ConverseValidationError("toolConfig.tools must be a non-empty list.")
    for index, tool in enumerate(tools):
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        schema = spec.get("inputSchema") if isinstance(spec, dict) else None
        if not (
            isinstance(spec, dict)
            and isinstance(spec.get("name"), str)
            and isinstance(schema, dict)
            and isinstance(schema.get("json"), dict)
        ):
            raise ConverseValidationError(
                f"toolConfig.tools.{index}.toolSpec needs a name and inputSchema.json."
            )
    choice = config.get("toolChoice")
    if choice is None:
        return
    if not isinstance(choice, dict) or len(choice) != 1:
        raise ConverseValidationError(
            "toolConfig.toolChoice must hold exactly one of auto, any, tool."
        )
    kind, value = next(iter(choice.items()))
    if kind in ("auto", "any") and value == {}:
        return
    if kind == "tool" and isinstance(value, dict) and isinstance(value.get("name"), str):
        return
    raise ConverseValidationError("toolConfig.toolChoice must hold exactly one of auto, any, tool.")


# -- answers ---------------------------------------------------------------------------------


def last_user_text(messages: Sequence[Any]) -> str:
    """Text of the last user turn that has text blocks (tool results alone are skipped)."""
    for message in reversed(messages):
        texts = _texts(message.get("content", ())) if message.get("role") == "user" else []
        if texts:
            return "".join(texts)
    return ""


def _texts(blocks: Iterable[Any]) -> list[str]:
    return [b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str)]


def _prompt_text(body: dict[str, Any]) -> str:
    parts = _texts(body.get("system") or ())
    for message in body["messages"]:
        parts.append("".join(_texts(message["content"])))
    return " ".join(parts)


def _request_id(seq: int) -> str:
    return f"fake-bedrock-{seq}"


def _json(
    obj: Any, seq: int, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, "x-amzn-RequestId": _request_id(seq)}
    all_headers.update(headers or {})
    return web.Response(body=orjson.dumps(obj), status=status, headers=all_headers)


def aws_error(status: int, error_type: str, message: str, seq: int) -> web.Response:
    """A Bedrock error: `{"message"}` body and the `x-amzn-ErrorType` header."""
    return _json(
        {"message": message}, seq, status, {"x-amzn-ErrorType": error_type + ERROR_TYPE_SUFFIX}
    )


class BedrockWire:
    """The Bedrock Runtime wire format (`POST /model/{modelId}/converse[-stream]`)."""

    def matches(self, path: str) -> bool:
        """True for Converse and ConverseStream paths."""
        return _PATH_RE.search(path) is not None

    async def handle(
        self, fake: FakeProvider, request: web.Request, arrival: Arrival
    ) -> web.StreamResponse:
        """Verify the signature and body, then answer as Converse or ConverseStream."""
        seq, parsed = arrival.seq, arrival.parsed
        match = _PATH_RE.search(request.path)
        if request.method != "POST" or match is None:
            return aws_error(404, "UnknownOperationException", "Unknown operation", seq)
        body = await request.read()
        failure = verify_signature(request.method, request.raw_path, request.headers.items(), body)
        if failure is not None:
            return aws_error(403, failure.error_type, failure.message, seq)
        try:
            check_converse_body(parsed)
        except ConverseValidationError as invalid:
            return aws_error(400, "ValidationException", str(invalid), seq)

        behaviour = arrival.behaviour
        pieces = None if behaviour.stream_chunks is None else list(behaviour.stream_chunks)
        reply = reply_text(behaviour, last_user_text(parsed["messages"]))
        calls = [
            (f"tooluse_fake_{seq}_{i}", str(call["name"]), dict(call.get("arguments", {})))
            for i, call in enumerate(behaviour.tool_calls or ())
        ]
        stop_reason = behaviour.stop_reason or ("tool_use" if calls else "end_turn")
        input_tokens = count_tokens(_prompt_text(parsed))
        output_tokens = count_tokens(reply)
        usage = {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": input_tokens + output_tokens,
        }

        if match["operation"] == "converse":
            content: list[dict[str, Any]] = [{"text": reply}] if reply else []
            content += [
                {"toolUse": {"toolUseId": call_id, "name": name, "input": arguments}}
                for call_id, name, arguments in calls
            ]
            return _json(
                {
                    "output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": stop_reason,
                    "usage": usage,
                    "metrics": {"latencyMs": 1},
                },
                seq,
            )

        if pieces is None:
            pieces = split_reply(reply, behaviour.stream_chunk_count)
        frames = [event_message("messageStart", {"p": _PADDING[:8], "role": "assistant"})]
        block = 0
        if pieces:
            frames += [
                event_message(
                    "contentBlockDelta",
                    {"contentBlockIndex": 0, "delta": {"text": piece}, "p": _PADDING[:12]},
                )
                for piece in pieces
            ]
            frames.append(event_message("contentBlockStop", {"contentBlockIndex": 0}))
            block = 1
        for offset, (call_id, name, arguments) in enumerate(calls):
            index = block + offset
            frames.append(
                event_message(
                    "contentBlockStart",
                    {
                        "contentBlockIndex": index,
                        "start": {"toolUse": {"toolUseId": call_id, "name": name}},
                    },
                )
            )
            encoded = orjson.dumps(arguments).decode()
            half = len(encoded) // 2
            frames += [
                event_message(
                    "contentBlockDelta",
                    {"contentBlockIndex": index, "delta": {"toolUse": {"input": part}}},
                )
                for part in (encoded[:half], encoded[half:])
                if part
            ]
            frames.append(event_message("contentBlockStop", {"contentBlockIndex": index}))
        frames.append(event_message("messageStop", {"stopReason": stop_reason}))
        frames.append(event_message("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
        if behaviour.stream_error_after is not None:
            frames = frames[: behaviour.stream_error_after]
            frames.append(
                exception_message(
                    "modelStreamErrorException", "The fake provider injected a stream error."
                )
            )
        gate_after = 1 if pieces else 0
        return await fake.stream_frames(
            request, arrival, frames, EVENTSTREAM_CONTENT_TYPE, gate_after
        )

    def error_response(self, arrival: Arrival) -> web.Response:
        """The injected error: Bedrock-shaped for `behaviour.status`, or `error_body` verbatim."""
        status = arrival.behaviour.status
        assert status is not None
        headers = {"x-amzn-RequestId": _request_id(arrival.seq)}
        body = b"{}"
        if status >= 300:
            error_type = ERROR_TYPES.get(
                status, "InternalServerException" if status >= 500 else "ValidationException"
            )
            headers["x-amzn-ErrorType"] = error_type + ERROR_TYPE_SUFFIX
            body = orjson.dumps(
                {"message": f"The fake provider injected HTTP {status} ({error_type})."}
            )
        return injected_error(arrival, body, headers)


WIRE: WireFormat = BedrockWire()
