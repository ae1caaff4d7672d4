"""`tags`: fixed tags, and tags copied from request headers, for later policies and the logs.

Header values are cut to the longest a tag value may be; a header that is absent or empty
gives no tag. The tag names are checked when the config loads.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from extproc.policies.api import ALLOW, MAX_TAG_VALUE_CHARS, Decision, Modify, Policy, PolicyRequest
from extproc.policies.builtin._common import tag_name, tag_sources, tag_value


class TagsOptions(BaseModel):
    """Options of `tags`: tag name → value, and header name → tag name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: dict[str, str] = {}
    from_headers: dict[str, str] = {}

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            tag_value(tag_name(name), text)
        return value

    @field_validator("from_headers")
    @classmethod
    def _valid_from_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return tag_sources(value, "from_headers")

    @model_validator(mode="after")
    def _something_to_tag(self) -> TagsOptions:
        if not (self.tags or self.from_headers):
            raise ValueError("give at least one of tags or from_headers")
        both = sorted(set(self.tags) & set(self.from_headers.values()))
        if both:
            raise ValueError(f"tag {both[0]!r} is both in tags and from_headers")
        return self


class TagsPolicy(Policy):
    """Tag every request with the fixed tags and the values of the listed headers it has."""

    Options = TagsOptions
    inline: ClassVar[bool] = True

    def __init__(self, options: TagsOptions) -> None:
        super().__init__(options)
        self.headers = frozenset(options.from_headers)
        self._static = dict(options.tags)
        self._from_headers = list(options.from_headers.items())

    def check(self, request: PolicyRequest) -> Decision:
        """Return the tags; allow unchanged when there are none."""
        tags = dict(self._static)
        headers = request.headers
        for name, tag in self._from_headers:
            value = headers.get(name)
            if value:
                tags[tag] = value[:MAX_TAG_VALUE_CHARS]
        return Modify(tags=tags) if tags else ALLOW
