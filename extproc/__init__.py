"""LLM inference gateway: the Envoy ext_proc service that makes the LLM-aware decisions."""

__version__ = "0.1.0"
