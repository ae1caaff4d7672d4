"""Driving provider adapters the way the gateway does: the body is validated first (the one
`ValidatedRequest` every adapter reads), then handed to `request()`."""

from __future__ import annotations

import copy
from typing import Any

from extproc.decisions.openai_request import Endpoint, ValidatedRequest
from extproc.decisions.validation import check_model_id, validate
from extproc.providers.base import ProviderAdapter, UpstreamRequest


def validated(body: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT) -> ValidatedRequest:
    """The validated request for a copy of `body` (GatewayError if a rule refuses it)."""
    body = copy.deepcopy(body)
    return validate(endpoint, body, check_model_id(body))


def prepare(
    adapter: ProviderAdapter, body: dict[str, Any], endpoint: Endpoint = Endpoint.CHAT
) -> UpstreamRequest:
    """Translate `body` with `adapter`, as the attempt does (sets its per-request state)."""
    return adapter.request(validated(body, endpoint))
