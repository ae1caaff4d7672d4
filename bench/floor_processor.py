"""The benchmark's floor: a do-nothing Python ext_proc server (grpc.aio on uvloop).

It answers the same three phases the gateway's pass-through path uses (request headers,
buffered request body, response headers) with empty "continue" answers and closes each stream
after the last one, exactly as `extproc.server` does, but decides nothing. Envoy plus this
server is what any Python ext_proc processor costs before it does any work: the gap between
it and plain Envoy is gRPC and ext_proc, the gap between it and the gateway is our code.

Usage: python bench/floor_processor.py --socket PATH
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
    """Continue every phase unchanged; end the stream after the response headers."""

    async def Process(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        """One stream: answer each message, close after the response headers."""
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            phase = request.WhichOneof("request")
            answer = _ANSWERS.get(phase)
            if answer is None:
                return
            await context.write(answer)
            if phase == "response_headers":
                return


async def serve(socket_path: str) -> None:
    """Serve on a unix socket until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    pb_grpc.add_ExternalProcessorServicer_to_server(FloorProcessor(), server)
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
    """Parse `--socket` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    uvloop.run(serve(parser.parse_args().socket))


if __name__ == "__main__":
    main()
