"""Run the fake provider on a background thread with its own event loop.

Owns socket binding, the server thread's lifecycle and clean shutdown, so synchronous
tests can write `with FakeProviderServer() as fake:` and talk to `fake.base_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

from aiohttp import web

from extproc.dev.fakes.app import create_app
from extproc.dev.fakes.core import Behaviour, FakeProvider


def bind_socket(host: str, port: int) -> socket.socket:
    """Listening TCP socket on `host:port` (port 0 picks a free one), SO_REUSEADDR set."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family)


def format_base_url(host: str, port: int) -> str:
    """`http://host:port`, bracketing IPv6 literals."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class FakeProviderServer(FakeProvider):
    """A `FakeProvider` served over HTTP from a daemon thread; also a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        behaviour: Behaviour | None = None,
        shutdown_timeout: float = 1.0,
        keep: int | None = None,
    ) -> None:
        super().__init__(behaviour, keep)
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._shutdown_timeout = shutdown_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0)."""
        if self._port is None:
            raise RuntimeError("FakeProviderServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT`, without a trailing slash or path."""
        return format_base_url(self.host, self.port)

    def start(self, timeout: float = 10.0) -> Self:
        """Bind, start serving on a background thread and return once it accepts requests."""
        if self._thread is not None:
            raise RuntimeError("FakeProviderServer is already running")
        sock = bind_socket(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"fake-provider-{self._port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("fake provider did not start in time")
        error, self._error = self._error, None
        if error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("fake provider failed to start") from error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (in-flight delays and gated streams end early) and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed since the check
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError("fake provider thread did not stop in time")
        self._thread = self._loop = self._stop = None
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError("fake provider failed while serving") from error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as error:  # reported to start()/stop(), not lost in the thread
            self._error = error
        finally:
            sock.close()  # no-op when the server already closed it
            self._ready.set()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(
            create_app(self),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
