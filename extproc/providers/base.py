"""The provider adapter interface: one small class per wire API, one instance per request.

The four moments of an ext_proc exchange: `request` (translate the validated
OpenAI request), `response_mode` + `response_headers` (decide how the answer is
processed), `response_body` (translate a chunk or the whole body) and
`response_error` (turn a provider error into a GatewayError). Instances keep
per-request state and are not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import orjson
from pydantic import SecretStr

from extproc.config.credentials import Credential
from extproc.config.schema import ProviderConfig
from extproc.errors import GatewayError, bad_request


class Endpoint(StrEnum):
    """The OpenAI endpoints that reach a provider."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"


class ResponseMode(StrEnum):
    """How the gateway handles a provider's response body."""

    PASSTHROUGH = "passthrough"  # Envoy forwards it untouched; the processor never sees it
    BUFFERED = "buffered"  # the whole body arrives at once in `response_body(..., True)`
    STREAMED = "streamed"  # chunks arrive as Envoy receives them (split anywhere)


@dataclass(slots=True)
class RequestContext:
    """What an adapter needs to know about the request it translates."""

    endpoint: Endpoint
    client_model: str  # the model name the client sent (echoed back in responses)
    upstream_model: str  # the provider's name for it (deployment, model id, ...)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    default_max_tokens: int = 4096  # for APIs that require max_tokens


@dataclass(slots=True)
class UpstreamRequest:
    """What changes on the way to the provider: path, headers, body (None: unchanged)."""

    path: str
    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)
    body: bytes | None = None


@dataclass(slots=True)
class HeaderChanges:
    """Response header changes to send back to the client."""

    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Usage:
    """Token usage reported by the provider (None: not reported yet)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def total_tokens(self) -> int | None:
        """Sum of both, when both are known."""
        if self.prompt_tokens is None or self.completion_tokens is None:
            return None
        return self.prompt_tokens + self.completion_tokens


class ProviderAdapter:
    """Base adapter. Subclasses implement `request`; translating ones override the rest.

    The defaults suit OpenAI-compatible providers: success bodies pass through
    untouched, error bodies are buffered and mapped by `response_error`.
    """

    # Endpoints this wire API cannot serve: refused before any provider is called.
    unsupported_endpoints: ClassVar[frozenset[Endpoint]] = frozenset()

    @classmethod
    def check_support(cls, endpoint: Endpoint, provider: ProviderConfig) -> None:
        """Raise a 400 naming the provider when this wire API cannot serve `endpoint`."""
        if endpoint in cls.unsupported_endpoints:
            raise GatewayError(
                400,
                "unsupported_endpoint",
                f"provider '{provider.name}' (type '{provider.type.value}') does not support "
                f"{endpoint.value}",
            )

    def __init__(self, provider: ProviderConfig, credential: Credential | None) -> None:
        self.provider = provider
        self.credential = credential
        self.context: RequestContext | None = None
        self.usage = Usage()

    def request(
        self, context: RequestContext, body: dict[str, Any], body_changed: bool
    ) -> UpstreamRequest:
        """Translate a validated request for this provider (`body` may be modified)."""
        raise NotImplementedError

    def credential_headers(self) -> dict[str, str]:
        """The headers that carry this provider's key on every request (the active health
        checks send them too); empty without a key. Bearer auth unless a wire API differs."""
        if not isinstance(self.credential, SecretStr):
            return {}
        return {"authorization": "Bearer " + self.credential.get_secret_value()}

    def response_mode(self, status: int, headers: dict[str, str]) -> ResponseMode:
        """How to process the response body, decided from the provider's status and headers."""
        if 200 <= status < 300:
            return ResponseMode.PASSTHROUGH
        return ResponseMode.BUFFERED

    def response_headers(self, status: int, headers: dict[str, str]) -> HeaderChanges:
        """Header changes for a successful (2xx) response being translated."""
        return HeaderChanges()

    def response_body(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """Translate a 2xx body: the whole body (BUFFERED) or the next chunk (STREAMED).

        BUFFERED: raise GatewayError (502) for malformed provider output. STREAMED:
        never raise; emit an error event and end the stream cleanly instead.
        """
        return chunk

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map a provider error response (status >= 300) to the client-facing error."""
        from extproc.providers.errors import map_openai_error

        return map_openai_error(status, headers, body, self.provider.name)


SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


class TranslatingAdapter(ProviderAdapter):
    """Base for adapters that rebuild the provider's answer in OpenAI's shape.

    Successful streams are translated chunk by chunk (STREAMED, SSE out, no
    content-length); everything else, errors included, is translated whole.
    """

    @property
    def streaming(self) -> bool:
        """True when this request asked the provider for a stream."""
        raise NotImplementedError

    def response_mode(self, status: int, headers: dict[str, str]) -> ResponseMode:
        """STREAMED for a successful stream, BUFFERED for everything else."""
        if 200 <= status < 300 and self.streaming:
            return ResponseMode.STREAMED
        return ResponseMode.BUFFERED

    def response_headers(self, status: int, headers: dict[str, str]) -> HeaderChanges:
        """SSE content type for streams (length unknown); JSON for whole answers."""
        if self.streaming:
            return HeaderChanges({"content-type": SSE_CONTENT_TYPE}, ["content-length"])
        return HeaderChanges({"content-type": JSON_CONTENT_TYPE})


def api_key(credential: Credential | None) -> str:
    """The API key of a key-based provider (config validation guarantees its presence)."""
    if not isinstance(credential, SecretStr):
        raise TypeError("this provider type needs an API key credential")
    return credential.get_secret_value()


def append_turn(
    turns: list[dict[str, Any]], role: str, items: list[Any], field: str = "content"
) -> None:
    """Add a conversation turn, merging it into the previous one of the same role
    (Anthropic, Gemini and Bedrock all require alternating roles)."""
    if turns and turns[-1]["role"] == role:
        turns[-1][field].extend(items)
    else:
        turns.append({"role": role, field: items})


def tool_arguments(raw: Any, where: str) -> dict[str, Any]:
    """A tool call's `function.arguments` (a JSON object encoded as a string) as a dict.

    Missing or blank arguments are an empty object; anything but a JSON object is a 400
    naming `{where}.function.arguments`.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    value: Any = raw
    if isinstance(raw, str):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
    if not isinstance(value, dict):
        raise bad_request(
            "invalid_message",
            f"{where}.function.arguments must be a JSON object",
            f"{where}.function.arguments",
        )
    return value


def rewrite_model(body: dict[str, Any], upstream_model: str) -> bool:
    """Point the body at the upstream model name; True if that changed it."""
    if body.get("model") == upstream_model:
        return False
    body["model"] = upstream_model
    return True


def serialize(body: dict[str, Any]) -> bytes:
    """JSON bytes of a body; non-ASCII text stays raw UTF-8, byte for byte."""
    return orjson.dumps(body)


# Gemini 3 attaches a `thoughtSignature` to its function calls and refuses a later request whose
# history lacks it. OpenAI's tool calls have no field for it, but clients echo tool call ids
# verbatim, so the signature rides in the id: `call_<hex>` + THOUGHT_SIGNATURE_MARKER +
# the signature in URL-safe base64 without padding (ids stay within [A-Za-z0-9_-]).
THOUGHT_SIGNATURE_MARKER = "__sig__"


def call_id_with_signature(call_id: str, signature: str | None) -> str:
    """`call_id`, carrying a Gemini thought signature (standard base64) when there is one."""
    if not signature:
        return call_id
    return (
        call_id
        + THOUGHT_SIGNATURE_MARKER
        + signature.replace("+", "-").replace("/", "_").rstrip("=")
    )


def strip_thought_signatures(body: dict[str, Any]) -> bool:
    """Drop carried Gemini signatures from the tool call ids of an OpenAI request's history, for
    every wire API but Gemini's (OpenAI refuses ids over 40 characters, Bedrock over 64); True
    when the body changed."""
    changed = False
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            call_id = call.get("id") if isinstance(call, dict) else None
            if isinstance(call_id, str) and THOUGHT_SIGNATURE_MARKER in call_id:
                call["id"] = split_call_id(call_id)[0]
                changed = True
        call_id = message.get("tool_call_id")
        if isinstance(call_id, str) and THOUGHT_SIGNATURE_MARKER in call_id:
            message["tool_call_id"] = split_call_id(call_id)[0]
            changed = True
    return changed


def split_call_id(call_id: str) -> tuple[str, str | None]:
    """(the id without a carried signature, the signature in standard base64, or None)."""
    base, marker, carried = call_id.partition(THOUGHT_SIGNATURE_MARKER)
    if not marker or not carried:
        return call_id, None
    signature = carried.replace("-", "+").replace("_", "/")
    return base, signature + "=" * (-len(signature) % 4)
