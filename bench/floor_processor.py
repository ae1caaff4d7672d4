"""The benchmark's floor: a do-nothing Python ext_proc server (grpc.aio on uvloop).

It answers the same three phases the gateway's pass-through path uses (request headers,
buffered request body, response headers) with empty "continue" answers and closes each stream
after the last one, exactly as `extproc.server` does, but decides nothing. Envoy plus this
server is what any Python ext_proc processor costs before it does any work: the gap between
it and plain Envoy is gRPC and ext_proc, the gap between it and the gateway is our code.

Usage: python bench/floor_processor.py --socket PATH [--last-phase PHASE]

`--last-phase` (default `response_headers`) is the phase after which the stream is closed:
`bench/phases.py` runs it behind Envoys that send fewer phases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

import grpc
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

_ANSWERS = {
    "request_headers": pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "request_body": pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_headers": pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
}


class FloorProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Continue every phase unchanged; end the stream after `last_phase`."""

    def __init__(self, last_phase: str = "response_headers") -> None:
        self.last_phase = last_phase

    async def Process(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        """One stream: answer each message, close after the last phase."""
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            phase = request.WhichOneof("request")
            answer = _ANSWERS.get(phase)
            if answer is None:
                return
            await context.write(answer)
            if phase == self.last_phase:
                return


async def serve(socket_path: str, last_phase: str) -> None:
    """Serve on a unix socket until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(FloorProcessor(last_phase), server)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("floor processor ready", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--last-phase", choices=sorted(_ANSWERS), default="response_headers")
    args = parser.parse_args()
    uvloop.run(serve(args.socket, args.last_phase))


if __name__ == "__main__":
    main()
