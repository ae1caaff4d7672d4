"""Azure OpenAI: deployment-scoped paths, `api-version` query and `api-key` header.

The target's upstream model name is the Azure deployment name.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from extproc.providers.base import (
    Endpoint,
    ProviderAdapter,
    RequestContext,
    UpstreamRequest,
    api_key,
    rewrite_model,
    serialize,
)

_SUFFIX = {Endpoint.CHAT: "/chat/completions", Endpoint.EMBEDDINGS: "/embeddings"}


class AzureOpenAIAdapter(ProviderAdapter):
    """Adapter for Azure OpenAI deployments."""

    def request(
        self, context: RequestContext, body: dict[str, Any], body_changed: bool
    ) -> UpstreamRequest:
        """Build `/openai/deployments/{deployment}/...?api-version=` with the `api-key` header."""
        changed = rewrite_model(body, context.upstream_model) or body_changed
        endpoint = context.endpoint
        upstream_model = context.upstream_model
        path = (
            f"{self.provider.base_path}/openai/deployments/{quote(upstream_model, safe='')}"
            f"{_SUFFIX[endpoint]}?api-version={quote(self.provider.api_version or '', safe='')}"
        )
        out = UpstreamRequest(path=path, remove_headers=["authorization"])
        if self.credential is not None:
            out.set_headers["api-key"] = api_key(self.credential)
        if changed:
            out.body = serialize(body)
        return out
