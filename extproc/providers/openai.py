"""OpenAI wire API: OpenAI itself and the compatible servers (vLLM, Ollama, Together).

Requests keep their shape; only the path prefix, the model name and the
upstream credential change. Responses pass through untouched.
"""

from __future__ import annotations

from typing import Any

from extproc.providers.base import (
    Endpoint,
    ProviderAdapter,
    RequestContext,
    UpstreamRequest,
    api_key,
    rewrite_model,
    serialize,
)

_PATHS = {Endpoint.CHAT: "/chat/completions", Endpoint.EMBEDDINGS: "/embeddings"}


class OpenAIAdapter(ProviderAdapter):
    """Adapter for OpenAI-compatible providers; `base_url` ends where `/chat/...` starts."""

    def request(
        self, context: RequestContext, body: dict[str, Any], body_changed: bool
    ) -> UpstreamRequest:
        """Rewrite path and model; bearer auth with the provider key when one is set."""
        changed = rewrite_model(body, context.upstream_model) or body_changed
        endpoint = context.endpoint
        out = UpstreamRequest(path=self.provider.base_path + _PATHS[endpoint])
        if self.credential is not None:
            out.set_headers["authorization"] = "Bearer " + api_key(self.credential)
        else:
            out.remove_headers.append("authorization")
        if changed:
            out.body = serialize(body)
        return out
