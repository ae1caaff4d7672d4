"""ext_proc protobuf ⇄ pipeline actions, and the cache of answers that repeat.

Owns every conversion between Envoy's `ProcessingRequest`/`ProcessingResponse` messages and the
plain values the pipelines take and return (header maps, attributes, `Continue`/`Respond`).
No decisions: what to answer is the pipelines' business.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from extproc.contract import UPSTREAM_TARGET_ATTRIBUTE
from extproc.pipeline.actions import Action, Continue, Respond
from extproc.providers.base import ResponseMode

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_EMPTY_HEADERS = pb.HeadersResponse()
_EMPTY_BODY = pb.BodyResponse()


def _mode(response_body_mode: Any) -> mode_pb.ProcessingMode:
    # An override replaces the whole mode, and a header mode left at DEFAULT falls back to the
    # filter's configured one (the listener's skips response headers): spell all of it out.
    return mode_pb.ProcessingMode(
        request_header_mode=mode_pb.ProcessingMode.SEND,
        request_body_mode=mode_pb.ProcessingMode.BUFFERED,
        request_trailer_mode=mode_pb.ProcessingMode.SKIP,
        response_header_mode=mode_pb.ProcessingMode.SEND,
        response_body_mode=response_body_mode,
        response_trailer_mode=mode_pb.ProcessingMode.SKIP,
    )


# Every answer to request headers carries this mode: the listener's filter skips response
# headers until told otherwise (`bootstrap.extproc_filter.downstream_ext_proc_filter`), so that
# Envoy's replies to requests the processor never saw are not held for it. The upstream filter
# has the same mode already.
REQUEST_HEADERS_MODE = _mode(mode_pb.ProcessingMode.NONE)
_MODE_OVERRIDES = {
    ResponseMode.PASSTHROUGH: _mode(mode_pb.ProcessingMode.NONE),
    ResponseMode.BUFFERED: _mode(mode_pb.ProcessingMode.BUFFERED),
    ResponseMode.BUFFERED_PARTIAL: _mode(mode_pb.ProcessingMode.BUFFERED_PARTIAL),
    ResponseMode.STREAMED: _mode(mode_pb.ProcessingMode.STREAMED),
}


def headers_to_dict(header_map: Any) -> dict[str, str]:
    """Envoy's HeaderMap (values in `raw_value`) as a dict of lower-case names."""
    out: dict[str, str] = {}
    for header in header_map.headers:
        value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
        key = header.key.lower()
        if key in out:
            out[key] = f"{out[key]},{value}"
        else:
            out[key] = value
    return out


def _header_mutation(set_headers: dict[str, str], remove: list[str]) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode("utf-8")),
                append_action=_OVERWRITE,
            )
            for k, v in set_headers.items()
        ],
        remove_headers=remove,
    )


def attempt_target(request: pb.ProcessingRequest) -> str | None:
    """The target id of an upstream-filter stream, from its request attributes."""
    if not request.attributes:
        return None
    for struct in request.attributes.values():
        field = struct.fields.get(UPSTREAM_TARGET_ATTRIBUTE)
        if field is not None and field.string_value:
            return str(field.string_value)
    return None


def to_response(phase: str, action: Action) -> pb.ProcessingResponse:
    """Translate a pipeline action into the ProcessingResponse for `phase`.

    Answers without a body mutation repeat from request to request (the same target gets the
    same headers, metadata and route), so they are built once and shared: gRPC only reads
    them. Never mutate a returned response.
    """
    if isinstance(action, Respond):
        return pb.ProcessingResponse(
            immediate_response=pb.ImmediateResponse(
                status=http_status_pb2.HttpStatus(code=action.status),
                headers=_header_mutation(action.headers, []),
                body=action.body,
                details=action.details,
            )
        )
    if action.body is not None:
        return _build_response(phase, action)
    if not (
        action.set_headers
        or action.remove_headers
        or action.metadata
        or action.clear_route_cache
        or action.keep_mode
        or action.mode_override is not None
    ):  # a plain Continue (every chunk of a stream read as it passes): one answer per phase
        plain = _PLAIN_RESPONSES.get(phase)
        if plain is None:
            plain = _PLAIN_RESPONSES[phase] = _build_response(phase, action)
        return plain
    key = _response_key(phase, action)
    if key is None:
        return _build_response(phase, action)
    response = _RESPONSES.get(key)
    if response is None:
        if len(_RESPONSES) >= RESPONSE_CACHE_SIZE:
            _RESPONSES.clear()
        response = _RESPONSES[key] = _build_response(phase, action)
    return response


# Shared answers by `_response_key`; bounded (cleared when full) so per-request values, had an
# action any, could not grow it without limit.
RESPONSE_CACHE_SIZE = 1024
_RESPONSES: dict[tuple[Any, ...], pb.ProcessingResponse] = {}
# The answer to a plain `Continue()`, by phase (a handful of phases: bounded).
_PLAIN_RESPONSES: dict[str, pb.ProcessingResponse] = {}


def _response_key(phase: str, action: Continue) -> tuple[Any, ...] | None:
    """A hashable key for everything `_build_response` reads except the body; None unless
    every metadata value is a string (`1`, `1.0` and `True` hash alike but differ in a Struct;
    nested values are not hashable): such answers are built each time."""
    metadata: tuple[Any, ...] = ()
    if action.metadata:
        for fields in action.metadata.values():
            if not isinstance(fields, dict) or any(type(v) is not str for v in fields.values()):
                return None
        metadata = tuple(
            (namespace, tuple(fields.items())) for namespace, fields in action.metadata.items()
        )
    return (
        phase,
        tuple(action.set_headers.items()),
        tuple(action.remove_headers),
        metadata,
        action.clear_route_cache,
        action.mode_override,
        action.keep_mode,
    )


def _build_response(phase: str, action: Continue) -> pb.ProcessingResponse:
    if not (action.set_headers or action.remove_headers or action.body is not None) and not (
        action.metadata or action.clear_route_cache or action.mode_override
    ):
        common = None
    else:
        common = pb.CommonResponse(
            # clear_route_cache is honoured only alongside a header mutation.
            header_mutation=_header_mutation(action.set_headers, action.remove_headers),
            body_mutation=pb.BodyMutation(body=action.body) if action.body is not None else None,
            clear_route_cache=action.clear_route_cache,
        )
    response = pb.ProcessingResponse()
    if phase.endswith("_trailers"):
        getattr(response, phase).CopyFrom(pb.TrailersResponse())
    elif phase in ("request_headers", "response_headers"):
        if common is not None and action.body is not None:
            # A body in a headers answer needs this status: it replaces whatever body the
            # message has (or had none: end_of_stream), and Envoy sends none of it to us.
            common.status = pb.CommonResponse.CONTINUE_AND_REPLACE
        getattr(response, phase).CopyFrom(
            pb.HeadersResponse(response=common) if common else _EMPTY_HEADERS
        )
    else:
        getattr(response, phase).CopyFrom(
            pb.BodyResponse(response=common) if common else _EMPTY_BODY
        )
    if action.mode_override is not None:
        response.mode_override.CopyFrom(_MODE_OVERRIDES[action.mode_override])
    elif phase == "request_headers" and not action.keep_mode:
        response.mode_override.CopyFrom(REQUEST_HEADERS_MODE)
    if action.metadata:
        metadata = struct_pb2.Struct()
        metadata.update(action.metadata)
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def last_message(phase: str | None, request: pb.ProcessingRequest, action: Continue) -> bool:
    """Whether Envoy sends nothing more on this stream after this answer.

    Both filters' processing modes (`extproc.bootstrap.extproc_filter`) send no response body
    and no trailers unless the response-headers answer overrides the body mode; a body then
    ends with end_of_stream.
    """
    if phase == "response_headers":
        return request.response_headers.end_of_stream or action.mode_override is None
    if phase == "response_body":
        return bool(request.response_body.end_of_stream)
    return False
