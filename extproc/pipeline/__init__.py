"""Request-time decisions per ext_proc phase, with no gRPC in sight.

`request.RequestPipeline` holds one HTTP request across its phases (downstream filter);
`attempt` translates one try of it for one target (inline, or on the upstream filter);
`actions` are what a phase decides: go on (with changes) or answer now.
"""

from __future__ import annotations

from typing import Protocol

from extproc.errors import GatewayError
from extproc.pipeline.actions import Action, Deferred, Respond
from extproc.telemetry.record import RequestRecord


class Pipeline(Protocol):
    """What the servicer drives for one ext_proc stream, phase by phase.

    `request.RequestPipeline` (the downstream filter: one HTTP request) and
    `attempt.UpstreamAttempt` (the upstream filter: one try of it) both satisfy it.
    """

    # The request's record, once a phase created (or, for an attempt, found) it.
    record: RequestRecord | None

    def on_request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        """The request headers arrived."""
        ...

    def on_request_body(self, body: bytes, end_of_stream: bool) -> Action | Deferred:
        """The whole request body arrived (BUFFERED)."""
        ...

    def on_response_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        """The response headers arrived."""
        ...

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> Action:
        """The response body (whole, or the next chunk of a stream) arrived."""
        ...

    def fail(self, error: GatewayError) -> Respond:
        """The answer for an error raised while handling a phase."""
        ...

    def finish(self) -> None:
        """The stream ended (answered or not); settle what is still open."""
        ...
