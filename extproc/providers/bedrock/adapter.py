"""The Bedrock adapter: wires `request`, `response`, `stream` and `errors` to the interface and
signs each translated request (SigV4) for `POST .../model/{id}/converse[-stream]`.

Needs `aws_region` and `AwsCredentials`. Embeddings are not part of Converse.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from extproc.config.credentials import AwsCredentials
from extproc.decisions.openai_request import Endpoint, ValidatedRequest
from extproc.errors import GatewayError
from extproc.providers.base import (
    JSON_CONTENT_TYPE,
    Translated,
    TranslatingAdapter,
    UpstreamRequest,
)
from extproc.providers.bedrock.errors import response_error
from extproc.providers.bedrock.request import converse_request
from extproc.providers.bedrock.response import translate_converse
from extproc.providers.bedrock.sigv4 import sign_headers
from extproc.providers.bedrock.stream import BedrockStreamTranslator
from extproc.providers.helpers import serialize

SERVICE: Final = "bedrock"
EVENTSTREAM_CONTENT_TYPE: Final = "application/vnd.amazon.eventstream"


class BedrockAdapter(TranslatingAdapter):
    """Adapter for the Bedrock Runtime Converse API (chat only)."""

    stream_translator = BedrockStreamTranslator

    unsupported_endpoints = frozenset({Endpoint.EMBEDDINGS})
    stream_content_type = EVENTSTREAM_CONTENT_TYPE

    key_header = None  # every request is signed instead (health checks go unsigned)

    def request(self, request: ValidatedRequest) -> UpstreamRequest:
        """Translate to a Converse body, then sign it for this provider and moment."""
        credentials = self.credential
        if not isinstance(credentials, AwsCredentials):
            raise TypeError("bedrock providers need AwsCredentials")
        payload = serialize(converse_request(request, self.provider))
        self.remember(request)
        operation = "converse-stream" if request.stream else "converse"
        path = f"{self.provider.base_path}/model/{quote(self.upstream_model, safe='')}/{operation}"
        authority = self.provider.authority
        headers = sign_headers(
            credentials,
            self.provider.aws_region or "",
            SERVICE,
            "POST",
            f"{self.provider.scheme}://{authority}{path}",
            {"host": authority, "content-type": JSON_CONTENT_TYPE},
            payload,
        )
        del headers["host"]  # Envoy sets Host to the provider authority, which was signed
        headers["accept"] = EVENTSTREAM_CONTENT_TYPE if request.stream else JSON_CONTENT_TYPE
        remove = ["x-amz-content-sha256"]
        if "x-amz-security-token" not in headers:
            remove.append("x-amz-security-token")
        return UpstreamRequest(path=path, set_headers=headers, remove_headers=remove, body=payload)

    def response_body(self, body: bytes) -> Translated:
        """A whole Converse response as a `chat.completion` (502 if malformed)."""
        return translate_converse(body, self.provider.name, self.upstream_model)

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map an AWS error (`x-amzn-errortype` header, `{"message"}` body)."""
        return response_error(status, headers, body, self.provider.name)
