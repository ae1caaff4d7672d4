"""The ext_proc gRPC servicer and server lifecycle.

A thin loop: each `ProcessingRequest` is handed to the request's
`RequestPipeline`, and the action it returns becomes a `ProcessingResponse`.
No business decisions here; nothing a client sends can crash the loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from extproc.actions import Action, Continue, Respond
from extproc.attempt import TARGET_ATTRIBUTE, AttemptPipeline
from extproc.errors import GatewayError, internal_error
from extproc.pipeline import RequestPipeline
from extproc.providers.base import ResponseMode
from extproc.runtime import Gateway

log = logging.getLogger("extproc.server")
Pipeline = RequestPipeline | AttemptPipeline

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_EMPTY_HEADERS = pb.HeadersResponse()
_EMPTY_BODY = pb.BodyResponse()
_MODE_OVERRIDES = {
    ResponseMode.PASSTHROUGH: mode_pb.ProcessingMode(
        response_body_mode=mode_pb.ProcessingMode.NONE
    ),
    ResponseMode.BUFFERED: mode_pb.ProcessingMode(
        response_body_mode=mode_pb.ProcessingMode.BUFFERED
    ),
    ResponseMode.STREAMED: mode_pb.ProcessingMode(
        response_body_mode=mode_pb.ProcessingMode.STREAMED
    ),
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
        field = struct.fields.get(TARGET_ATTRIBUTE)
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
        getattr(response, phase).CopyFrom(
            pb.HeadersResponse(response=common) if common else _EMPTY_HEADERS
        )
    else:
        getattr(response, phase).CopyFrom(
            pb.BodyResponse(response=common) if common else _EMPTY_BODY
        )
    if action.mode_override is not None:
        response.mode_override.CopyFrom(_MODE_OVERRIDES[action.mode_override])
    if action.metadata:
        metadata = struct_pb2.Struct()
        metadata.update(action.metadata)
        response.dynamic_metadata.CopyFrom(metadata)
    return response


def _last_message(phase: str | None, request: pb.ProcessingRequest, action: Continue) -> bool:
    """Whether Envoy sends nothing more on this stream after this answer.

    Both filters' processing modes (envoy_config) send no response body and no trailers unless
    the response-headers answer overrides the body mode; a body then ends with end_of_stream.
    """
    if phase == "response_headers":
        return request.response_headers.end_of_stream or action.mode_override is None
    if phase == "response_body":
        return bool(request.response_body.end_of_stream)
    return False


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Envoy ext_proc servicer: one `RequestPipeline` per stream."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.active = 0
        gateway.metrics.count_streams(lambda: self.active)

    async def Process(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Handle one HTTP request's (or one attempt's) phases, in order, as Envoy sends them.

        Uses the context's read/write calls rather than an async generator, so the servicer
        decides itself when the call ends (after the last answer, see `_last_message`).
        """
        pipeline: Pipeline | None = None
        self.active += 1
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                phase = request.WhichOneof("request")
                if pipeline is None:
                    pipeline, failed = self._pipeline_for(request)
                    if failed is not None:
                        await context.write(to_response(phase or "", failed))
                        return
                action = self._handle(pipeline, phase, request)
                if action is None:
                    continue
                await context.write(to_response(phase or "", action))
                if isinstance(action, Respond) or _last_message(phase, request, action):
                    # Closing the stream ourselves, with OK, tells Envoy we are done; Envoy
                    # waits for that status (its graceful-close runtime flag) rather than
                    # cancelling the call, which grpc.aio would leak memory for (grpc#43360).
                    return
        except asyncio.CancelledError:
            self.gateway.metrics.streams_cancelled.inc()
            raise
        finally:
            self.active -= 1
            if pipeline is not None:
                pipeline.finish()

    def _pipeline_for(self, request: pb.ProcessingRequest) -> tuple[Pipeline, Action | None]:
        """Downstream filter streams get a RequestPipeline; upstream (per attempt) ones an
        AttemptPipeline, recognised by the endpoint metadata attribute Envoy sends them."""
        target = attempt_target(request)
        if target is None:
            return RequestPipeline(self.gateway), None
        resolved = self.gateway.targets.get(target)
        if resolved is not None:
            return AttemptPipeline(self.gateway, resolved), None
        log.error("unknown target id %r in endpoint metadata", target[:100])
        self.gateway.metrics.processor_failures.inc()
        pipeline = RequestPipeline(self.gateway)
        return pipeline, pipeline.fail(internal_error())

    def _handle(
        self, pipeline: Pipeline, phase: str | None, request: pb.ProcessingRequest
    ) -> Action | None:
        try:
            if phase == "request_headers":
                msg = request.request_headers
                return pipeline.on_request_headers(headers_to_dict(msg.headers), msg.end_of_stream)
            if phase == "request_body":
                return pipeline.on_request_body(
                    request.request_body.body, request.request_body.end_of_stream
                )
            if phase == "response_headers":
                msg = request.response_headers
                return pipeline.on_response_headers(headers_to_dict(msg.headers), msg.end_of_stream)
            if phase == "response_body":
                return pipeline.on_response_body(
                    request.response_body.body, request.response_body.end_of_stream
                )
            if phase in ("request_trailers", "response_trailers"):
                # Not requested by the processing mode; pass through.
                return Continue()
            return None
        except GatewayError as error:
            return pipeline.fail(error)
        except Exception:
            # Log the failure without request content: bodies and headers may
            # carry secrets. The client gets a generic 500.
            log.exception("processor failed in phase %s", phase)
            self.gateway.metrics.processor_failures.inc()
            return pipeline.fail(internal_error())


def _unix_target(path: Path) -> str:
    return f"unix:{path}"


class ProcessorServer:
    """Owns the grpc.aio server: bind, serve, drain on shutdown."""

    def __init__(self, gateway: Gateway, max_message_bytes: int) -> None:
        self.gateway = gateway
        self.servicer = ExternalProcessor(gateway)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, self.server)
        self.addresses: list[str] = []

    def bind(self, unix_socket: Path | None, tcp_address: str | None) -> None:
        """Listen on a unix socket and/or a TCP address."""
        if unix_socket is not None:
            unix_socket.parent.mkdir(parents=True, exist_ok=True)
            if unix_socket.exists() or unix_socket.is_symlink():
                unix_socket.unlink()
            target = _unix_target(unix_socket)
            self.server.add_insecure_port(target)
            self.addresses.append(target)
        if tcp_address is not None:
            port = self.server.add_insecure_port(tcp_address)
            host = tcp_address.rpartition(":")[0]
            self.addresses.append(f"{host}:{port}")

    async def start(self) -> None:
        """Start serving."""
        await self.server.start()

    async def stop(self, grace: float) -> None:
        """Refuse new streams, let in-flight ones finish for up to `grace` seconds."""
        await self.server.stop(grace)


def install_signal_handlers(stop: Callable[[], None]) -> None:
    """Call `stop` on SIGTERM and SIGINT (once each; the loop keeps running)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
