"""`required_headers`: request headers a client must send, optionally in a given shape.

Checks presence (an empty value counts as missing) and, where configured, that the whole value
matches a regex; copies the `tag_from` headers a request has into tags. Refusals name the
header, never its value.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from extproc.policies.api import (
    ALLOW,
    MAX_TAG_VALUE_CHARS,
    Decision,
    Deny,
    Modify,
    Policy,
    PolicyRequest,
)
from extproc.policies.builtin._common import compile_regex, header_names, tag_sources


class RequiredHeadersOptions(BaseModel):
    """Options of `required_headers`: header → regex (or null: any value), header → tag name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    headers: Annotated[dict[str, str | None], Field(min_length=1)]
    tag_from: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        value = header_names(value, "headers")
        for name, regex in value.items():
            if regex is not None:
                try:
                    compile_regex(regex)
                except ValueError as error:
                    raise ValueError(f"headers: {name!r}: {error}") from None
        return value

    @field_validator("tag_from")
    @classmethod
    def _valid_tag_from(cls, value: dict[str, str]) -> dict[str, str]:
        return tag_sources(value, "tag_from")


class RequiredHeadersPolicy(Policy):
    """Refuse requests missing a listed header or with a value not matching its regex."""

    Options = RequiredHeadersOptions
    inline: ClassVar[bool] = True

    def __init__(self, options: RequiredHeadersOptions) -> None:
        super().__init__(options)
        self.headers = frozenset(options.headers) | frozenset(options.tag_from)
        self._rules = [
            (
                name,
                None if regex is None else compile_regex(regex),
                Deny(
                    message=f"the request header {name!r} is required",
                    status=400,
                    code="missing_header",
                ),
                Deny(
                    message=f"the request header {name!r} has an invalid value",
                    status=400,
                    code="invalid_header",
                ),
            )
            for name, regex in options.headers.items()
        ]
        self._tag_from = list(options.tag_from.items())

    def check(self, request: PolicyRequest) -> Decision:
        """Refuse on the first missing or invalid header; else tag from header values, or allow."""
        headers = request.headers
        for name, regex, missing, invalid in self._rules:
            value = headers.get(name)
            if not value:
                return missing
            if regex is not None and regex.fullmatch(value) is None:
                return invalid
        tags = {
            tag: value[:MAX_TAG_VALUE_CHARS]
            for name, tag in self._tag_from
            if (value := headers.get(name))
        }
        return Modify(tags=tags) if tags else ALLOW
