"""The Gemini adapter: wires `request`, `response`, `stream` and `errors` to the interface.

`base_url` is e.g. `https://generativelanguage.googleapis.com/v1beta`; the key goes in
`x-goog-api-key`.
"""

from __future__ import annotations

from extproc.decisions.openai_request import Endpoint, ValidatedRequest
from extproc.errors import GatewayError
from extproc.providers.base import (
    JSON_CONTENT_TYPE,
    Translated,
    TranslatingAdapter,
    UpstreamRequest,
)
from extproc.providers.google.errors import response_error
from extproc.providers.google.request import chat_request, embeddings_request, model_path
from extproc.providers.google.response import EmbeddingsCall, translate_answer
from extproc.providers.google.stream import GeminiStreamTranslator
from extproc.providers.helpers import serialize


class GoogleGeminiAdapter(TranslatingAdapter):
    """Adapter for the Gemini API: chat (whole and streamed) and embeddings."""

    stream_translator = GeminiStreamTranslator

    key_header = "x-goog-api-key"
    key_prefix = ""
    # The translated embeddings call, for the answer (None for chat).
    _embeddings: EmbeddingsCall | None = None

    def request(self, request: ValidatedRequest) -> UpstreamRequest:
        """Build the Gemini call: translated body, `models/{m}:method` path, API key header."""
        if request.endpoint is Endpoint.CHAT:
            translated = chat_request(request, self.provider)
            method = ":streamGenerateContent?alt=sse" if request.stream else ":generateContent"
        else:
            self._embeddings = embeddings_request(request, self.upstream_model, self.provider)
            translated = self._embeddings.body
            method = ":" + self._embeddings.method
        self.remember(request)
        path = f"{self.provider.base_path}/{model_path(self.upstream_model)}{method}"
        return UpstreamRequest(
            path=path,
            set_headers={
                **self.credential_headers(self.provider, self.credential),
                "content-type": JSON_CONTENT_TYPE,
            },
            # The answer is translated, so it must arrive uncompressed.
            remove_headers=["authorization", "accept-encoding"],
            body=serialize(translated),
        )

    def response_body(self, body: bytes) -> Translated:
        """The whole answer (chat or embeddings) in OpenAI's shape (502 if malformed)."""
        return translate_answer(body, self.provider.name, self.upstream_model, self._embeddings)

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map a Google error body (`{"error": {code, message, status, details}}`)."""
        return response_error(status, headers, body, self.provider.name)
