"""Small builders the render-time modules share (addresses, headers, protocol options)."""

from __future__ import annotations

import ipaddress
import json

from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    SocketAddress,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import HttpProtocolOptions
from envoy_data_plane.google.protobuf import Any

from extproc.contract import LISTENER_STAT_PREFIX

# The listener, its stats prefix and its virtual host.
LISTENER_NAME = LISTENER_STAT_PREFIX
# The fail-open model's cluster without the processor (see `clusters.fail_open_clusters`).
FAIL_OPEN_CLUSTER = "fail_open"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def protocol_options(options: HttpProtocolOptions) -> dict[str, Any]:
    """A cluster's `typed_extension_protocol_options` holding `options`."""
    return {HTTP_PROTOCOL_OPTIONS: Any.pack(options)}


def socket_address(host: str, port: int) -> Address:
    """A TCP socket address."""
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def header_option(name: str, value: str) -> HeaderValueOption:
    """A header to set, replacing any value it had."""
    return HeaderValueOption(
        header=HeaderValue(key=name, value=value),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def is_ip(host: str) -> bool:
    """True for an IP literal (no DNS lookup needed), False for a host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def openai_error_json(message: str, error_type: str, code: str) -> str:
    """An OpenAI-style error body as compact JSON text (for fixed Envoy replies)."""
    error = {"message": message, "type": error_type, "param": None, "code": code}
    return json.dumps({"error": error}, separators=(",", ":"))
