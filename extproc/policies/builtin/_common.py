"""Option checks the built-in policies share: header names, tag names and values, regexes.

Each function is a pydantic validator body: it returns the normalised value or raises
`ValueError` with a message naming the bad value. Nothing here runs per request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from extproc.policies.api import MAX_TAG_VALUE_CHARS, TAG_PATTERN

# An RFC 9110 token, lower-case; the leading ':' admits Envoy's pseudo-headers (`:authority`).
_V = TypeVar("_V")

_HEADER_NAME = re.compile(r"^:?[a-z0-9!#$%&'*+.^_`|~-]{1,128}$")

# Copying these into a tag would put a credential in the access log and the metrics.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"}
)


def header_name(name: str) -> str:
    """`name` lower-cased, or `ValueError` when it is not a valid header name."""
    lowered = name.lower()
    if not _HEADER_NAME.match(lowered):
        raise ValueError(f"{name!r} is not a valid header name")
    return lowered


def header_names(names: Mapping[str, _V], what: str) -> dict[str, _V]:
    """The mapping with lower-cased header names; two names differing only in case are an error."""
    out: dict[str, _V] = {}
    for name, value in names.items():
        lowered = header_name(name)
        if lowered in out:
            raise ValueError(f"{what}: header {lowered!r} is listed twice (names ignore case)")
        out[lowered] = value
    return out


def tag_sources(names: Mapping[str, str], what: str) -> dict[str, str]:
    """A header name → tag name mapping checked: valid names, no credential, no tag twice."""
    out: dict[str, str] = {}
    for header, tag in header_names(names, what).items():
        if header in CREDENTIAL_HEADERS:
            raise ValueError(f"{what}: header {header!r} carries credentials; it cannot be a tag")
        tag_name(tag)
        if tag in out.values():
            raise ValueError(f"{what}: tag {tag!r} comes from two headers")
        out[header] = tag
    return out


def tag_name(name: str) -> str:
    """`name`, or `ValueError` when it is not a valid tag name."""
    if not TAG_PATTERN.match(name):
        raise ValueError(f"tag name {name!r} must match {TAG_PATTERN.pattern}")
    return name


def tag_value(name: str, value: str) -> str:
    """`value`, or `ValueError` when it is longer than a tag value may be."""
    if len(value) > MAX_TAG_VALUE_CHARS:
        raise ValueError(f"tag {name!r}: the value is longer than {MAX_TAG_VALUE_CHARS} characters")
    return value


def compile_regex(pattern: object) -> re.Pattern[str]:
    """`pattern` compiled, or `ValueError` saying why it is not a valid regular expression."""
    if isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise ValueError("a regular expression must be a string")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None
