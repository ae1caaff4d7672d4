"""CLI: `python -m extproc.dev.fakes --host 127.0.0.1 --port 18000` serves the fake provider.

Owns argument parsing and signal handling; runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from extproc.dev.fakes.app import create_app
from extproc.dev.fakes.core import Behaviour, FakeProvider
from extproc.dev.fakes.runner import bind_socket, format_base_url


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m extproc.dev.fakes",
        description="Fake LLM provider upstream (OpenAI, Azure, Anthropic, Gemini, Bedrock) "
        "for tests, `make run` and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000, help="0 picks a free port")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay before answering")
    parser.add_argument(
        "--chunk-interval-s", type=float, default=0.0, help="pause between stream events"
    )
    parser.add_argument(
        "--stream-chunk-count", type=int, default=None, help="split replies into N stream chunks"
    )
    parser.add_argument("--reply", default=None, help="fixed reply instead of the echo")
    parser.add_argument("--access-log", action="store_true", help="log each request to stderr")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT/SIGTERM, printing the listening URL once bound."""
    behaviour = Behaviour(
        latency_s=args.latency_s,
        chunk_interval_s=args.chunk_interval_s,
        stream_chunk_count=args.stream_chunk_count,
        reply=args.reply,
    )
    sock = bind_socket(args.host, args.port)
    runner = web.AppRunner(
        create_app(FakeProvider(behaviour, keep=0)),
        handle_signals=False,
        shutdown_timeout=2.0,
        access_log=logging.getLogger("aiohttp.access") if args.access_log else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        url = format_base_url(args.host, sock.getsockname()[1])
        print(f"fake provider listening on {url}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    if args.access_log:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
