"""A cheap, bounded estimate of a request's prompt tokens (no tokenizer).

Per text string: ASCII characters count one token per `chars_per_token` (4: OpenAI's rule of
thumb for English), other characters one per `non_ascii_chars_per_token` (1: CJK text runs near
one token per character). `str.isascii()` and `len()` cost nothing; only strings with non-ASCII
text are encoded once (C speed, about 1 ms per MB) to count them. The walk visits at most
`MAX_NODES` JSON values; past that, the rest of the body counts by its raw size.
"""

from __future__ import annotations

import math
from typing import Any

# Tokens a chat message costs besides its text (role, separators), and an image part.
PER_MESSAGE_TOKENS = 4
IMAGE_PART_TOKENS = 256
MAX_NODES = 20_000
# Keys whose values are structure, not text sent to the model as such.
_FRAMING = frozenset({"role", "type"})


class PromptEstimator:
    """Estimates prompt tokens from a validated request body."""

    __slots__ = ("_ascii", "_other")

    def __init__(self, chars_per_token: float = 4.0, non_ascii_chars_per_token: float = 1.0):
        self._ascii = 1.0 / chars_per_token
        self._other = 1.0 / non_ascii_chars_per_token

    def text(self, value: str) -> float:
        """Estimated tokens of one string."""
        length = len(value)
        if value.isascii():
            return length * self._ascii
        # A non-ASCII character takes 2-4 bytes in UTF-8, mostly 3 (CJK): count extra bytes / 2.
        other = (len(value.encode("utf-8", "surrogatepass")) - length) / 2
        other = min(other, length)
        return (length - other) * self._ascii + other * self._other

    def prompt(self, body: dict[str, Any], raw_size: int) -> int:
        """Estimated prompt tokens of a chat or embeddings request body (`raw_size`: its bytes)."""
        budget = [MAX_NODES]
        total = 0.0
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in messages:
                total += PER_MESSAGE_TOKENS
                if isinstance(message, dict):
                    total += self._walk(message, budget)
                if budget[0] <= 0:
                    break
        else:
            total += self._walk(body.get("input"), budget)
        for extra in ("tools", "functions", "response_format"):
            if extra in body:
                total += self._walk(body[extra], budget)
        if budget[0] <= 0:  # too many values to visit: count the body's size instead
            total = max(total, raw_size * self._ascii)
        return max(1, math.ceil(total))

    def _walk(self, value: Any, budget: list[int]) -> float:
        budget[0] -= 1
        if budget[0] <= 0:
            return 0.0
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            if value.get("type") in ("image_url", "input_image", "image"):
                return IMAGE_PART_TOKENS
            return sum(self._walk(v, budget) for k, v in value.items() if k not in _FRAMING)
        if isinstance(value, list):
            if value and isinstance(value[0], int):  # token ids (embeddings input)
                return float(len(value))
            return sum(self._walk(v, budget) for v in value)
        return 0.0
