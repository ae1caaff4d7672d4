"""OpenAI wire API: OpenAI itself and the compatible servers (vLLM, Ollama, Together).

Requests keep their shape; only the path, the model name and the upstream
credential change. Success responses pass through untouched; errors are mapped.
"""

from __future__ import annotations

from typing import Any

from extproc.providers.base import (
    Endpoint,
    ProviderAdapter,
    RequestContext,
    UpstreamRequest,
    rewrite_model,
    serialize,
    strip_thought_signatures,
)

ENDPOINT_SUFFIX = {Endpoint.CHAT: "/chat/completions", Endpoint.EMBEDDINGS: "/embeddings"}


class OpenAIAdapter(ProviderAdapter):
    """Adapter for OpenAI-compatible providers; `base_url` ends where `/chat/...` starts."""

    def request(
        self, context: RequestContext, body: dict[str, Any], body_changed: bool
    ) -> UpstreamRequest:
        """Rewrite path, model and credentials; re-serialize the body only if it changed."""
        changed = rewrite_model(body, context.upstream_model) or body_changed
        # Only Gemini takes carried thought signatures back; OpenAI refuses ids over 40 chars.
        changed = strip_thought_signatures(body) or changed
        out = UpstreamRequest(path=self.path(context))
        self.authenticate(out)
        if changed:
            out.body = serialize(body)
        return out

    def path(self, context: RequestContext) -> str:
        """The upstream path for this request."""
        return self.provider.base_path + ENDPOINT_SUFFIX[context.endpoint]

    def authenticate(self, out: UpstreamRequest) -> None:
        """Bearer auth with the provider key; without one, drop the client's header."""
        headers = self.credential_headers()
        if headers:
            out.set_headers.update(headers)
        else:
            out.remove_headers.append("authorization")
