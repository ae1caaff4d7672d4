"""A throwaway `redis-server` for tests and the benchmark: a free port, no persistence.

Development only. `kill()` stops it hard (SIGKILL, as a crash would) and `start()` brings it back
on the same port, empty, so tests can prove what the gateway does while Redis is gone and after
it returns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from extproc.dev.stack import free_port, spawn, stop_process


def find_redis_server() -> str:
    """The redis-server binary: $REDIS_SERVER, else PATH (`scripts/install-redis.sh`)."""
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise FileNotFoundError(
            "no redis-server: run scripts/install-redis.sh (make tools) or set REDIS_SERVER"
        )
    return found


class RedisServer:
    """One redis-server child process on 127.0.0.1."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> Self:
        """Start it (again, on the same port) and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        self.proc = spawn(argv, self.workdir / "redis.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}); see redis.log")
            if self.ping():
                return self
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def ping(self) -> bool:
        """True when it answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL it, like a crash (its data is gone: no persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Stop it cleanly."""
        stop_process(self.proc)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
