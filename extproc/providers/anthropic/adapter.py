"""The Anthropic adapter: wires `request`, `response`, `stream` and `errors` to the interface.

`base_url` like `https://api.anthropic.com/v1`; `x-api-key` and `anthropic-version` headers.
"""

from __future__ import annotations

from extproc.config.credentials import Credential
from extproc.config.schema import ProviderConfig
from extproc.decisions.openai_request import Endpoint, ValidatedRequest
from extproc.errors import GatewayError
from extproc.providers.anthropic.errors import response_error
from extproc.providers.anthropic.request import translate_request
from extproc.providers.anthropic.response import translate_message
from extproc.providers.anthropic.stream import AnthropicStreamTranslator
from extproc.providers.base import (
    JSON_CONTENT_TYPE,
    Translated,
    TranslatingAdapter,
    UpstreamRequest,
)
from extproc.providers.helpers import serialize

DEFAULT_VERSION = "2023-06-01"


class AnthropicAdapter(TranslatingAdapter):
    """Adapter for the Anthropic Messages API (chat only)."""

    stream_translator = AnthropicStreamTranslator

    unsupported_endpoints = frozenset({Endpoint.EMBEDDINGS})

    key_header = "x-api-key"
    key_prefix = ""

    @classmethod
    def credential_headers(
        cls, provider: ProviderConfig, credential: Credential | None
    ) -> dict[str, str]:
        """`x-api-key` (with a key) and the `anthropic-version` every request needs."""
        version = {"anthropic-version": provider.anthropic_version or DEFAULT_VERSION}
        return {**version, **super().credential_headers(provider, credential)}

    def request(self, request: ValidatedRequest) -> UpstreamRequest:
        """Translate a validated chat request into a Messages API request."""
        body = translate_request(
            request, self.provider, self.upstream_model, self.default_max_tokens
        )
        self.remember(request)
        return UpstreamRequest(
            path=self.provider.base_path + "/messages",
            set_headers={
                **self.credential_headers(self.provider, self.credential),
                "content-type": JSON_CONTENT_TYPE,
            },
            # accept-encoding: the translators need the body uncompressed.
            remove_headers=["authorization", "anthropic-beta", "accept-encoding"],
            body=serialize(body),
        )

    def response_body(self, body: bytes) -> Translated:
        """The whole Messages response as a `chat.completion` (502 if malformed)."""
        return translate_message(body, self.provider.name, self.upstream_model)

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map an Anthropic error response (`{"type": "error", "error": {...}}`)."""
        return response_error(status, headers, body, self.provider.name)
