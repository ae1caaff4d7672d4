"""OpenAI and Azure OpenAI adapters: requests keep their shape; path, model and key change.

Success responses pass through untouched (`response.py` reads their usage and model when the
processor is asked to look); errors are mapped (`errors.py`). Azure names the deployment in the
path, adds the `api-version` query and authenticates with `api-key`.
"""

from __future__ import annotations

from urllib.parse import quote

from extproc.decisions.openai_request import Endpoint, ValidatedRequest
from extproc.errors import GatewayError
from extproc.providers.base import ProviderAdapter, ResponseMode, Translated, UpstreamRequest
from extproc.providers.helpers import rewrite_model, serialize
from extproc.providers.openai.errors import map_openai_error
from extproc.providers.openai.response import OpenAIStreamReader, read_answer
from extproc.providers.tool_ids import strip_thought_signatures

ENDPOINT_SUFFIX = {Endpoint.CHAT: "/chat/completions", Endpoint.EMBEDDINGS: "/embeddings"}


class OpenAIAdapter(ProviderAdapter):
    """Adapter for OpenAI-compatible providers; `base_url` ends where `/chat/...` starts.

    Streams pass through untouched; when the processor reads one, an `OpenAIStreamReader`
    reports usage and model and closes a stream cut before `[DONE]`. With usage accounting,
    whole answers are read (BUFFERED) and streams too (STREAMED), and a stream is asked for
    its usage chunk (`stream_options.include_usage`), removed again if the client did not ask.
    """

    strip_usage = False

    def request(self, request: ValidatedRequest) -> UpstreamRequest:
        """Rewrite path, model and credentials; re-serialize the body only if it changed."""
        body = request.body
        self.remember(request)
        changed = rewrite_model(body, self.upstream_model) or request.body_changed
        # Only Gemini takes carried thought signatures back; OpenAI refuses ids over 40 chars.
        if request.tool_calls:
            changed = strip_thought_signatures(body) or changed
        if self.account_usage and request.stream and not request.include_usage:
            options = body.get("stream_options")
            body["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
            self.strip_usage = changed = True
        out = UpstreamRequest(path=self.path(request.endpoint))
        self.authenticate(out)
        if changed:
            out.body = serialize(body)
        return out

    def path(self, endpoint: Endpoint) -> str:
        """The upstream path for this request."""
        return self.provider.base_path + ENDPOINT_SUFFIX[endpoint]

    def authenticate(self, out: UpstreamRequest) -> None:
        """Bearer auth with the provider key; without one, drop the client's header."""
        headers = self.credential_headers(self.provider, self.credential)
        if headers:
            out.set_headers.update(headers)
        else:
            out.remove_headers.append("authorization")

    def response_mode(self, status: int, headers: dict[str, str]) -> ResponseMode:
        """Pass a success through, or read it when accounting for usage; buffer errors."""
        if not 200 <= status < 300:
            return ResponseMode.BUFFERED
        if not self.account_usage:
            return ResponseMode.PASSTHROUGH
        return ResponseMode.STREAMED if self.stream else ResponseMode.BUFFERED

    def start_stream(self) -> OpenAIStreamReader:
        """A reader of the pass-through stream (bytes unchanged but the usage chunk the
        gateway asked for)."""
        return OpenAIStreamReader(self.provider.name, self.strip_usage)

    def response_body(self, body: bytes) -> Translated:
        """The answer unchanged, with the usage and model it reports (502 if unparsable)."""
        usage, model = read_answer(body, self.provider.name)
        return Translated(body, usage, model)

    def response_error(self, status: int, headers: dict[str, str], body: bytes) -> GatewayError:
        """Map an OpenAI-style error (`{"error": {message, type, code, param}}`)."""
        return map_openai_error(status, headers, body, self.provider.name)


class AzureOpenAIAdapter(OpenAIAdapter):
    """Adapter for Azure OpenAI deployments (the target's upstream model is the deployment)."""

    def path(self, endpoint: Endpoint) -> str:
        """`/openai/deployments/{deployment}/...?api-version=...`."""
        deployment = quote(self.upstream_model, safe="")
        version = quote(self.provider.api_version or "", safe="")
        return (
            f"{self.provider.base_path}/openai/deployments/{deployment}"
            f"{ENDPOINT_SUFFIX[endpoint]}?api-version={version}"
        )

    def authenticate(self, out: UpstreamRequest) -> None:
        """Azure's key header; the client's `Authorization` is removed."""
        out.remove_headers.append("authorization")
        out.set_headers.update(self.credential_headers(self.provider, self.credential))

    key_header = "api-key"
    key_prefix = ""
