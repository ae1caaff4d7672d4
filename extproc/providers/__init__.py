"""Provider adapters: one sub-package per translated wire API, one small interface (`base`).

`adapter_for(provider_type)` returns the adapter class for a configured type.
"""

from __future__ import annotations

from extproc.config.schema import ProviderType
from extproc.providers.anthropic.adapter import AnthropicAdapter
from extproc.providers.base import ProviderAdapter
from extproc.providers.bedrock.adapter import BedrockAdapter
from extproc.providers.google.adapter import GoogleGeminiAdapter
from extproc.providers.openai.adapter import AzureOpenAIAdapter, OpenAIAdapter

_ADAPTERS: dict[ProviderType, type[ProviderAdapter]] = {
    ProviderType.OPENAI: OpenAIAdapter,
    ProviderType.VLLM: OpenAIAdapter,
    ProviderType.OLLAMA: OpenAIAdapter,
    ProviderType.TOGETHER: OpenAIAdapter,
    ProviderType.AZURE: AzureOpenAIAdapter,
    ProviderType.ANTHROPIC: AnthropicAdapter,
    ProviderType.GOOGLE: GoogleGeminiAdapter,
    ProviderType.BEDROCK: BedrockAdapter,
}


def adapter_for(provider_type: ProviderType) -> type[ProviderAdapter]:
    """The adapter class for a provider type; NotImplementedError if there is none."""
    try:
        return _ADAPTERS[provider_type]
    except KeyError:
        raise NotImplementedError(
            f"provider type '{provider_type.value}' has no adapter yet"
        ) from None


__all__ = ["ProviderAdapter", "adapter_for"]
