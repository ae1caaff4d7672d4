"""The ext_proc gRPC servicer: one stream per HTTP request (or per attempt), a thin loop.

Each `ProcessingRequest` is handed to the stream's pipeline and the action it returns becomes a
`ProcessingResponse` (`messages.py`). No business decisions here; nothing a client sends can
crash the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.decisions.overload import LoadShedder
from extproc.errors import GatewayError, internal_error
from extproc.gateway import Gateway, LiveGateways
from extproc.pipeline import Pipeline
from extproc.pipeline.actions import Action, Continue, Deferred, Respond
from extproc.pipeline.attempt import UpstreamAttempt
from extproc.pipeline.request import RequestPipeline
from extproc.server.messages import attempt_target, headers_to_dict, last_message, to_response

if TYPE_CHECKING:  # the OpenTelemetry SDK loads only when tracing is on
    from extproc.telemetry.tracing import StreamTrace

log = logging.getLogger("extproc.server")


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Envoy ext_proc servicer: one `RequestPipeline` per stream.

    A stream runs on the gateway in force when it began (`LiveGateways.current`), even if a
    reload puts another one in force meanwhile.
    """

    def __init__(self, gateways: Gateway | LiveGateways) -> None:
        self.gateways = gateways if isinstance(gateways, LiveGateways) else LiveGateways(gateways)
        self.active = 0
        self.gateway.metrics.count_streams(lambda: self.active)
        # Requests (downstream streams) admitted and in flight; attempts' streams are part of
        # an admitted request and never shed.
        self.shedder = LoadShedder()
        shedder = self.shedder
        self.gateway.metrics.count_admission(lambda: shedder.in_flight, lambda: shedder.lag)

    @property
    def gateway(self) -> Gateway:
        """The gateway in force (new streams use it)."""
        return self.gateways.current

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
        gateway: Gateway | None = None
        phase_timers = self.gateway.metrics.processing_phase
        tracing = self.gateway.telemetry.tracing
        trace: StreamTrace | None = None
        admitted = False
        self.active += 1
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                phase = request.WhichOneof("request")
                if pipeline is None:
                    pipeline, gateway, failed = self._pipeline_for(request)
                    gateway.in_flight += 1
                    if isinstance(pipeline, RequestPipeline) and failed is None:
                        shed = self.shedder.enter(gateway.max_in_flight, gateway.max_loop_lag)
                        admitted = shed is None
                        pipeline.shed = shed
                    if tracing is not None:
                        # Envoy names its span of this call in the metadata: our parent.
                        attempt = isinstance(pipeline, UpstreamAttempt)
                        trace = tracing.stream(context.invocation_metadata(), attempt)
                    if failed is not None:
                        await context.write(to_response(phase or "", failed))
                        return
                started = time.perf_counter()
                action = self._handle(pipeline, phase, request)
                if isinstance(action, Deferred):  # a Redis round trip (rate limits)
                    action = await self._resolve(pipeline, phase, action)
                ended = time.perf_counter()
                timer = phase_timers.get(phase or "")
                if timer is not None:
                    timer.observe(ended - started)
                if trace is not None:
                    trace.phase(phase or "", started, ended, pipeline.record)
                    if phase == "response_body" and isinstance(action, Continue):
                        sent = action.body
                        trace.answer(request.response_body.body if sent is None else sent)
                if action is None:
                    continue
                await context.write(to_response(phase or "", action))
                if isinstance(action, Respond) or last_message(phase, request, action):
                    # Closing the stream ourselves, with OK, tells Envoy we are done; Envoy
                    # waits for that status (its graceful-close runtime flag) rather than
                    # cancelling the call, which grpc.aio would leak memory for (grpc#43360).
                    return
        except asyncio.CancelledError:
            self.gateway.metrics.streams_cancelled.inc()
            raise
        finally:
            self.active -= 1
            if admitted:
                self.shedder.leave()
            if gateway is not None:
                gateway.in_flight -= 1
            if pipeline is not None:
                pipeline.finish()
            if trace is not None:
                trace.stream_ended(pipeline if isinstance(pipeline, UpstreamAttempt) else None)

    def _pipeline_for(
        self, request: pb.ProcessingRequest
    ) -> tuple[Pipeline, Gateway, Action | None]:
        """Downstream filter streams get a RequestPipeline; upstream (per attempt) ones an
        UpstreamAttempt, recognised by the endpoint metadata attribute Envoy sends them, on
        the gateway that knows the target (the one that routed the request)."""
        gateway = self.gateways.current
        target = attempt_target(request)
        if target is None:
            return RequestPipeline(gateway), gateway, None
        resolved = self.gateways.target(target)
        if resolved is not None:
            owner, found = resolved
            return UpstreamAttempt(owner, found), owner, None
        log.error("unknown target id %r in endpoint metadata", target[:100])
        gateway.metrics.processor_failures.inc()
        pipeline = RequestPipeline(gateway)
        return pipeline, gateway, pipeline.fail(internal_error())

    async def _resolve(self, pipeline: Pipeline, phase: str | None, deferred: Deferred) -> Action:
        """The action a phase deferred to I/O, with the phase's error handling."""
        try:
            return await deferred.pending
        except GatewayError as error:
            return pipeline.fail(error)
        except Exception:
            return self._crashed(pipeline, phase)

    def _crashed(self, pipeline: Pipeline, phase: str | None) -> Respond:
        # Log the failure without request content: bodies and headers may carry secrets.
        # The client gets a generic 500.
        log.exception("processor failed in phase %s", phase)
        self.gateway.metrics.processor_failures.inc()
        return pipeline.fail(internal_error())

    def _handle(
        self, pipeline: Pipeline, phase: str | None, request: pb.ProcessingRequest
    ) -> Action | Deferred | None:
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
            return self._crashed(pipeline, phase)
