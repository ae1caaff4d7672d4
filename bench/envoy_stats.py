"""ext_proc streams and messages per request, counted by Envoy itself.

Envoy's ext_proc filter keeps counters per filter instance, under `<scope>.ext_proc.` (and the
filter's own `stat_prefix`, when it has one). The listener's filter counts under
`http.<connection manager stat_prefix>.ext_proc.` (the gateway's `http.gateway.ext_proc.`, the
floor's `http.plain.ext_proc.`); the upstream filter of a model cluster with failover (in its
upstream HTTP filters, one stream per attempt) under `cluster.<cluster name>.ext_proc.`. Plain
Envoy has none.

Read from `GET /stats?filter=\\.ext_proc\\.` (text: `name: value` lines) before and after each
8-client slice; the deltas, summed over a scenario's slices and divided by its responses, are its
ext_proc streams and messages per request. "Messages" are `stream_msgs_sent`: what Envoy sent to
the processor (request headers, request body, response headers, ...), one answer each.
Pure functions and a tally; `measure` reads, `report` prints.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STREAMS = "streams_started"
SENT = "stream_msgs_sent"
RECEIVED = "stream_msgs_received"
COUNTERS = (STREAMS, SENT, RECEIVED)
STATS_PATH = "/stats?" + urllib.parse.urlencode({"filter": r"\.ext_proc\."})

# filter (its stat scope, e.g. `http.gateway.ext_proc`) -> counter -> value
Counters = dict[str, dict[str, int]]


def parse_ext_proc_stats(text: str) -> Counters:
    """The ext_proc counters in the text of Envoy's `/stats`, by filter; other lines ignored."""
    found: Counters = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        scope, _, counter = name.rpartition(".")
        known = sep and counter in COUNTERS and ".ext_proc." in f".{scope}."
        if known and value.strip().isdigit():
            found.setdefault(scope, {})[counter] = int(value)
    return found


def read_ext_proc_stats(admin_url: str | None, timeout: float = 5.0) -> Counters | None:
    """The ext_proc counters of the Envoy at `admin_url`; None without an admin URL or filter."""
    if admin_url is None:
        return None
    with urllib.request.urlopen(admin_url + STATS_PATH, timeout=timeout) as response:
        text = response.read().decode("utf-8", "replace")
    return parse_ext_proc_stats(text) or None


@dataclass
class ExtProcTally:
    """Counter deltas per scenario, summed over its slices."""

    totals: dict[str, Counters] = field(default_factory=dict)

    def add(self, scenario: str, before: Counters | None, after: Counters | None) -> None:
        """Add one slice's deltas (nothing when the scenario's Envoy has no ext_proc filter)."""
        if before is None or after is None:
            return
        mine = self.totals.setdefault(scenario, {})
        for scope, counters in after.items():
            old = before.get(scope, {})
            sums = mine.setdefault(scope, dict.fromkeys(COUNTERS, 0))
            for counter in COUNTERS:
                sums[counter] += counters.get(counter, 0) - old.get(counter, 0)

    def per_request(self, scenario: str, responses: int) -> dict[str, Any] | None:
        """Streams and messages per response, in all and by filter (filters that counted any)."""
        totals = self.totals.get(scenario)
        if totals is None:
            return None
        n = max(1, responses)

        def total(counter: str) -> float:
            return sum(c[counter] for c in totals.values()) / n

        return {
            "streams_per_req": total(STREAMS),
            "msgs_per_req": total(SENT),
            "msgs_received_per_req": total(RECEIVED),
            "filters": {
                scope: {counter: value / n for counter, value in counters.items()}
                for scope, counters in sorted(totals.items())
                if any(counters.values())
            },
        }


def by_message_count(scenarios: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per distinct rounded number of messages per request, fewest first: the
    scenarios that sent that many (in the order given), their streams and processor CPU per
    request. Scenarios without ext_proc counts (plain Envoy) are left out."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for name, scenario in scenarios.items():
        ext_proc = scenario.get("ext_proc")
        if not ext_proc:
            continue
        groups.setdefault(round(ext_proc["msgs_per_req"]), []).append(
            {
                "name": name,
                "msgs_per_req": ext_proc["msgs_per_req"],
                "streams_per_req": ext_proc["streams_per_req"],
                "processor_cpu_ms_per_req": scenario.get("processor_cpu_ms_per_req"),
            }
        )
    return [{"msgs_per_req": count, "scenarios": groups[count]} for count in sorted(groups)]
