"""The event-loop lag watch: a timer that measures how late the loop runs it.

A loop busy with more work than it can do runs every callback late, a timer's too; how late
is the lag. Fed to the load shedder (`processor.max_loop_lag_ms`) and to
`gateway_event_loop_lag_seconds`. One wake-up per interval: nothing on the request path.
"""

from __future__ import annotations

import asyncio

from extproc.decisions.overload import LoadShedder

LAG_INTERVAL_SECONDS = 0.1


async def watch_loop_lag(shedder: LoadShedder, interval: float = LAG_INTERVAL_SECONDS) -> None:
    """Measure the loop's lag every `interval` seconds until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        planned = loop.time() + interval
        await asyncio.sleep(interval)
        shedder.lagged(loop.time() - planned)
