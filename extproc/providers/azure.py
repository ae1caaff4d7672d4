"""Azure OpenAI: deployment-scoped paths, `api-version` query and `api-key` header.

The target's upstream model name is the Azure deployment name; otherwise the
wire API is OpenAI's.
"""

from __future__ import annotations

from urllib.parse import quote

from extproc.providers.base import RequestContext, UpstreamRequest, api_key
from extproc.providers.openai import ENDPOINT_SUFFIX, OpenAIAdapter


class AzureOpenAIAdapter(OpenAIAdapter):
    """Adapter for Azure OpenAI deployments."""

    def path(self, context: RequestContext) -> str:
        """`/openai/deployments/{deployment}/...?api-version=...`."""
        deployment = quote(context.upstream_model, safe="")
        version = quote(self.provider.api_version or "", safe="")
        return (
            f"{self.provider.base_path}/openai/deployments/{deployment}"
            f"{ENDPOINT_SUFFIX[context.endpoint]}?api-version={version}"
        )

    def authenticate(self, out: UpstreamRequest) -> None:
        """Azure's key header; the client's `Authorization` is removed."""
        out.remove_headers.append("authorization")
        out.set_headers.update(self.credential_headers())

    def credential_headers(self) -> dict[str, str]:
        """Azure's `api-key` header."""
        return {"api-key": api_key(self.credential)} if self.credential is not None else {}
