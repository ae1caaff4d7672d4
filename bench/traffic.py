"""The client side of the long runs (`soak.py`, `chaos.py`): a few client threads sending one
request after another to a live stack until stopped.

Owns only the threads and their loop (one `httpx.Client` per thread, the pause between two
requests, the optional pacing, stop and join); what each request is, how its answer is judged
and what is recorded is the subclass's `send_one`. The stack itself is `systems.start_stack`.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Self

import httpx


class ClientThreads:
    """`clients` threads, each with its own `httpx.Client(timeout=timeout)`, calling
    `send_one` until `halt()`; `lock` guards what `send_one` records.

    With `rate`, each thread is paced to `rate` requests per second from its start (after a
    request that took longer than its slot, the next one is sent at once); without, a thread
    sends its next request right after the pause `send_one` asked for.
    """

    def __init__(self, clients: int, timeout: float, rate: float | None = None) -> None:
        self.lock = threading.Lock()
        self._clients = clients
        self._timeout = timeout
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def send_one(self, client: httpx.Client, index: int, turn: int) -> float:
        """Send client `index`'s request number `turn` (0, 1, …) and record its outcome; the
        pause before that client's next request, in seconds (0: none)."""
        raise NotImplementedError

    def start(self) -> Self:
        """Start the client threads."""
        for index in range(self._clients):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def halt(self, join_s: float) -> bool:
        """Stop sending and wait up to `join_s` per thread for its request in flight; whether
        every thread has ended."""
        self._stop.set()
        for thread in self._threads:
            thread.join(join_s)
        return not any(thread.is_alive() for thread in self._threads)

    def _run(self, index: int) -> None:
        next_at = time.monotonic()
        with httpx.Client(timeout=self._timeout) as client:
            for turn in itertools.count():
                if self._stop.is_set():
                    return
                pause = self.send_one(client, index, turn)
                if self._interval:
                    next_at += self._interval
                    pause = max(pause, next_at - time.monotonic())
                if pause > 0:
                    self._stop.wait(pause)
