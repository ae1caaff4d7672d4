"""Envoy's own error replies rewritten as OpenAI-style JSON bodies (`local_reply_config`).

Replies that carry `contract.GATEWAY_ERROR_HEADER` are already in that shape and left alone;
every rewritten reply gets the marker too.
"""

from __future__ import annotations

from envoy_data_plane.envoy.config.accesslog.v3 import (
    AccessLogFilter,
    AndFilter,
    ComparisonFilter,
    ComparisonFilterOp,
    ExtensionFilter,
    ResponseFlagFilter,
    StatusCodeFilter,
)
from envoy_data_plane.envoy.config.core.v3 import (
    DataSource,
    RuntimeUInt32,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.google.protobuf import Any

from extproc.bootstrap.common import header_option, openai_error_json
from extproc.contract import GATEWAY_ERROR_HEADER, NOT_SENT_REPLIES
from extproc.errors import ERROR_TYPES

# The ext_proc filter's own failures (processor unreachable, gRPC error, bad message) are local
# replies whose response code details start with this prefix; they default to status 500, and a
# per-message timeout answers 504.
EXT_PROC_ERROR_DETAILS_PREFIX = "ext_proc_error_"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
# Envoy's own local replies (status, error type, error code, message), rewritten to OpenAI-style
# JSON. Each status appears once; the processor-specific mappers come before these.
_LOCAL_REPLY_ERRORS: tuple[tuple[int, str, str], ...] = (
    (413, "payload_too_large", "request body is too large"),
    (504, "provider_timeout", "the provider did not answer in time"),
    (408, "request_timeout", "the request was not received in time"),
    (503, "service_unavailable", "the provider is unavailable"),
    (502, "provider_error", "the provider returned an invalid response"),
    (404, "not_found", "not found"),
    # Requests Envoy's HTTP codec refuses before any filter sees them.
    (400, "invalid_http_request", "the request is not valid HTTP"),
    (426, "unsupported_http_version", "HTTP/1.0 is not supported: use HTTP/1.1 or HTTP/2"),
    (431, "headers_too_large", "the request headers are too large"),
)
# Envoy's 501 for a transfer encoding it does not know is the client's mistake, and a 5xx is
# one OpenAI SDKs retry: it is answered as a 400.
_UNSUPPORTED_ENCODING = (501, "unsupported_transfer_encoding", "unsupported transfer encoding")
# Last: a catch-all for Envoy's own 500s.
_LOCAL_REPLY_500 = (500, "internal_error", "internal gateway error")


def local_reply_config() -> LocalReplyConfig:
    """Rewrite Envoy's own local replies; leave replies that carry the marker header untouched.

    Rewritten replies get the marker too: the downstream filter then knows them for Envoy's
    (inline attempts must not take them for a provider's answer, see attempt.py).
    """
    ext_proc_failed = _cel_filter(
        f"response.code_details.startsWith('{EXT_PROC_ERROR_DETAILS_PREFIX}')"
    )
    mappers = [
        # First match wins, and a mapper that sets nothing leaves the reply as it is.
        ResponseMapper(filter=_cel_filter(f"'{GATEWAY_ERROR_HEADER}' in response.headers")),
        _error_mapper(
            AccessLogFilter(and_filter=AndFilter(filters=[_status_filter(504), ext_proc_failed])),
            "the gateway processor did not answer in time",
            "timeout_error",
            "processor_timeout",
        ),
        _error_mapper(
            ext_proc_failed,
            "the gateway processor is unavailable",
            "service_unavailable",
            "processor_unavailable",
            status=503,
        ),
    ]
    for flag, (code, message) in NOT_SENT_REPLIES.items():
        mappers.append(_error_mapper(_flag_filter(flag), message, ERROR_TYPES[503], code))
    for status, code, message in (*_LOCAL_REPLY_ERRORS, _LOCAL_REPLY_500):
        mappers.append(_error_mapper(_status_filter(status), message, ERROR_TYPES[status], code))
    status, code, message = _UNSUPPORTED_ENCODING
    mappers.append(
        _error_mapper(_status_filter(status), message, ERROR_TYPES[400], code, status=400)
    )
    return LocalReplyConfig(mappers=mappers)


def _error_mapper(
    match: AccessLogFilter, message: str, error_type: str, code: str, status: int | None = None
) -> ResponseMapper:
    mapper = ResponseMapper(
        filter=match,
        body_format_override=_json_body(message, error_type, code),
        headers_to_add=[header_option(GATEWAY_ERROR_HEADER, code)],
    )
    if status is not None:
        mapper.status_code = status
    return mapper


def _cel_filter(expression: str) -> AccessLogFilter:
    # AccessLogFilter.header_filter only sees request headers; a CEL expression also sees the
    # local reply's response headers (an ImmediateResponse's headers are set before mappers run)
    # and its response code details.
    cel = ExpressionFilter(expression=expression)
    return AccessLogFilter(
        extension_filter=ExtensionFilter(name=CEL_FILTER, typed_config=Any.pack(cel))
    )


def _flag_filter(flag: str) -> AccessLogFilter:
    return AccessLogFilter(response_flag_filter=ResponseFlagFilter(flags=[flag]))


def _status_filter(status: int) -> AccessLogFilter:
    return AccessLogFilter(
        status_code_filter=StatusCodeFilter(
            comparison=ComparisonFilter(
                op=ComparisonFilterOp.EQ,
                value=RuntimeUInt32(
                    default_value=status, runtime_key=f"gateway.local_reply.status_{status}"
                ),
            )
        )
    )


def _json_body(message: str, error_type: str, code: str) -> SubstitutionFormatString:
    body = openai_error_json(message, error_type, code)
    # The body is a fixed text format: a '%' would start a command operator.
    assert "%" not in body, body
    return SubstitutionFormatString(
        text_format_source=DataSource(inline_string=body), content_type="application/json"
    )
