"""The provider adapter interface: one small class per wire API, one instance per request.

The four moments of an ext_proc exchange: `request` (translate the validated OpenAI request),
`response_mode` + `response_headers` (decide how the answer is processed), `response_body` /
`stream_chunk` (translate the whole body, or the next chunk of a stream) and `response_error`
(turn a provider error into a GatewayError). The response calls return, as data, what the
answer said: its usage and the model that produced it. Instances keep per-request state and
are not thread-safe. Helpers live in `helpers.py`, `tool_ids.py` and `openai_format.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar, Protocol

from pydantic import SecretStr

from extproc.config.credentials import Credential
from extproc.config.schema import ProviderConfig
from extproc.decisions.openai_request import Endpoint, ValidatedRequest
from extproc.errors import GatewayError
from extproc.providers.errors import malformed_response
from extproc.providers.openai_format import ChatStreamWriter

if TYPE_CHECKING:  # stream.py builds on this module
    from extproc.providers.stream import StreamTranslator

JSON_CONTENT_TYPE = "application/json"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


class ResponseMode(StrEnum):
    """How Envoy hands a provider's response body to the processor."""

    PASSTHROUGH = "passthrough"  # Envoy forwards it untouched; the processor never sees it
    BUFFERED = "buffered"  # the whole body arrives at once, in `response_body`
    # As BUFFERED for an answer of unknown length (no content-length): the whole body at
    # once, or, when it outgrows Envoy's buffer, only that first part (end_of_stream false)
    # and nothing more: the rest then passes through (docs/architecture.md "Oversized answers").
    BUFFERED_PARTIAL = "buffered_partial"
    STREAMED = "streamed"  # chunks arrive as Envoy receives them (split anywhere)


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


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts a provider reported for one answer (`cached_tokens`: None if not said)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None

    @classmethod
    def of(cls, prompt: int, completion: int, cached: int | None = None) -> Usage:
        """Usage whose total is the sum of its parts."""
        return cls(prompt, completion, prompt + completion, cached)


@dataclass(frozen=True, slots=True)
class Translated:
    """What a response call returns: the bytes to send on, and what the answer said so far.

    `usage` is None until the provider reported it (a stream reports it near its end);
    `model` is the model that produced the answer, as its provider names it, once known;
    `complete` is True once a stream's last event has passed (its usage is final, even if
    the client leaves before the response itself ends).
    """

    body: bytes
    usage: Usage | None = None
    model: str | None = None
    complete: bool = False


class ChunkTranslator(Protocol):
    """What turns a provider's stream into the client's, chunk by chunk (`stream.py`)."""

    def feed(self, chunk: bytes, end_of_stream: bool) -> Translated:
        """The bytes to send for `chunk` (and the end, if it is), with what the answer said."""
        ...


class ProviderAdapter:
    """Base adapter. Subclasses implement `request`; translating ones override the responses.

    The defaults suit OpenAI-compatible providers: success bodies pass through untouched (when
    the processor reads one, it only learns its usage and model), error bodies are buffered and
    mapped by `response_error`.
    """

    # Endpoints this wire API cannot serve: refused before any provider is called.
    unsupported_endpoints: ClassVar[frozenset[Endpoint]] = frozenset()
    # The media type of a successful answer, whole and streamed.
    answer_content_type: ClassVar[str] = JSON_CONTENT_TYPE
    stream_content_type: ClassVar[str] = "text/event-stream"
    # The header that carries the provider's key, and what comes before the key in it (None:
    # no key header; AWS signs every request instead).
    key_header: ClassVar[str | None] = "authorization"
    key_prefix: ClassVar[str] = "Bearer "
    # Whether a successful whole answer is rewritten (True) or only read for its usage and
    # model (False): an answer too large to buffer then fails, or passes through unread.
    rewrites_answers: ClassVar[bool] = False
    # This request's stream translator, started by the first `stream_chunk`.
    translator: ChunkTranslator | None = None

    @classmethod
    def unsupported(cls, endpoint: Endpoint, provider: ProviderConfig) -> GatewayError | None:
        """The 400 naming the provider when this wire API cannot serve `endpoint`, else None."""
        if endpoint not in cls.unsupported_endpoints:
            return None
        return GatewayError(
            400,
            "unsupported_endpoint",
            f"provider '{provider.name}' (type '{provider.type.value}') does not support "
            f"{endpoint.value}",
        )

    @classmethod
    def credential_headers(
        cls, provider: ProviderConfig, credential: Credential | None
    ) -> dict[str, str]:
        """The headers that carry the provider's key on every request (the active health
        checks send them too); empty without a key."""
        if cls.key_header is None or not isinstance(credential, SecretStr):
            return {}
        return {cls.key_header: cls.key_prefix + credential.get_secret_value()}

    def __init__(
        self,
        provider: ProviderConfig,
        credential: Credential | None,
        upstream_model: str,
        default_max_tokens: int,
        account_usage: bool = False,
    ) -> None:
        self.provider = provider
        self.credential = credential
        self.upstream_model = upstream_model  # the provider's name for the model
        self.default_max_tokens = default_max_tokens  # for APIs that require max_tokens
        self.stream = False
        self.include_usage = False
        # Read pass-through answers to learn their usage (translated ones are always read).
        self.account_usage = account_usage

    def remember(self, request: ValidatedRequest) -> None:
        """Keep what handling the answer needs of the request (called by `request`)."""
        self.stream = request.stream
        self.include_usage = request.include_usage

    def request(self, request: ValidatedRequest) -> UpstreamRequest:
        """Translate a validated request for this provider (its `body` may be rewritten)."""
        raise NotImplementedError

    def unusable_answer(self, status: int, headers: dict[str, str]) -> GatewayError | None:
        """The 502 for a 2xx the client could not use: its content type is not what the request
        asked for (JSON, or an event stream when streaming). Decided on the headers alone."""
        if not 200 <= status < 300:
            return None
        expected = self.stream_content_type if self.stream else self.answer_content_type
        received = headers.get("content-type", "")
        media_type = received.partition(";")[0].strip().lower()
        if media_type == expected:
            return None
        what = f"content type '{received[:100]}'" if received else "no content type"
        return malformed_response(
            self.provider.name, f"a {status} answer with {what} where {expected} was expected"
        )

    def response_mode(self, status: int, headers: dict[str, str]) -> ResponseMode:
        """How to process the response body, decided from the provider's status and headers."""
        if 200 <= status < 300:
            return ResponseMode.PASSTHROUGH
        return ResponseMode.BUFFERED

    def response_headers(self, status: int, headers: dict[str, str]) -> HeaderChanges:
        """Header changes for a successful (2xx) response being translated."""
        return HeaderChanges()

    def response_body(self, body: bytes) -> Translated:
        """A whole 2xx body (BUFFERED): its translation; GatewayError (502) if malformed."""
        raise NotImplementedError

    def stream_chunk(self, chunk: bytes, end_of_stream: bool) -> Translated:
        """The next chunk of a 2xx stream (STREAMED): its translation. Never raises: malformed
        provider output ends the stream with an error event and `[DONE]`."""
        translator = self.translator
        if translator is None:
            if not self.stream:
                raise RuntimeError("stream_chunk() on a request that did not ask for a stream")
            translator = self.translator = self.start_stream()
        return translator.feed(chunk, end_of_stream)

    def start_stream(self) -> ChunkTranslator:
        """A translator for this request's stream (made only when its body is read)."""
        raise NotImplementedError

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map a provider error response (status >= 300) to the client-facing error."""
        raise NotImplementedError


class TranslatingAdapter(ProviderAdapter):
    """Base for adapters that rebuild the provider's answer in OpenAI's shape.

    Successful streams are translated chunk by chunk (STREAMED, SSE out, no content-length);
    everything else, errors included, is translated whole.
    """

    # The translator class of this wire API's streams (`stream.StreamTranslator` subclasses).
    stream_translator: ClassVar[type[StreamTranslator]]
    rewrites_answers: ClassVar[bool] = True

    def start_stream(self) -> StreamTranslator:
        """This request's stream translator, writing OpenAI chunks named after the target's
        model until the provider names the one that answers."""
        writer = ChatStreamWriter(self.upstream_model, self.include_usage)
        return self.stream_translator(self.provider.name, writer)

    def response_mode(self, status: int, headers: dict[str, str]) -> ResponseMode:
        """STREAMED for a successful stream, BUFFERED for everything else."""
        if 200 <= status < 300 and self.stream:
            return ResponseMode.STREAMED
        return ResponseMode.BUFFERED

    def response_headers(self, status: int, headers: dict[str, str]) -> HeaderChanges:
        """SSE content type for streams (length unknown); JSON for whole answers."""
        if self.stream:
            return HeaderChanges({"content-type": SSE_CONTENT_TYPE}, ["content-length"])
        return HeaderChanges({"content-type": JSON_CONTENT_TYPE})
