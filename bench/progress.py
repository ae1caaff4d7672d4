"""Progress lines of a benchmark run, each with the time since the run started.

Owns only that clock and the line format; what is measured lives in `measure` and `hey`.
"""

from __future__ import annotations

import time

_T0 = time.monotonic()


def log(message: str) -> None:
    """One progress line, with the time since the run started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def elapsed_s() -> float:
    """Seconds since the run started."""
    return time.monotonic() - _T0
