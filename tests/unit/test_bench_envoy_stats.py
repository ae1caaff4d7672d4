"""ext_proc streams and messages per request from Envoy's counters (`bench/envoy_stats.py`).

The texts below are Envoy 1.40's `GET /stats?filter=ext_proc`, copied from a real run: the
bench's gateway Envoy after its start-up probes and 10 `gateway-passthrough` requests, the lines
that changed after 10 more `gateway-all-features` ones (a model with two targets: the listener's
filter and the model cluster's upstream filter), and the end of the floor Envoy's (its ext_proc
cluster's own lines match the filter too). Nothing is started and nothing is timed.
"""

from __future__ import annotations

from bench.envoy_stats import ExtProcTally, by_message_count, parse_ext_proc_stats
from bench.report import messages_table

GATEWAY_AFTER_PASSTHROUGH = """\
cluster.bench-all-unlimited_2c552482.ext_proc.clear_route_cache_disabled: 0
cluster.bench-all-unlimited_2c552482.ext_proc.clear_route_cache_ignored: 0
cluster.bench-all-unlimited_2c552482.ext_proc.clear_route_cache_upstream_ignored: 0
cluster.bench-all-unlimited_2c552482.ext_proc.failure_mode_allowed: 0
cluster.bench-all-unlimited_2c552482.ext_proc.http_not_ok_resp_received: 0
cluster.bench-all-unlimited_2c552482.ext_proc.immediate_responses_sent: 0
cluster.bench-all-unlimited_2c552482.ext_proc.message_timeouts: 0
cluster.bench-all-unlimited_2c552482.ext_proc.override_message_timeout_ignored: 0
cluster.bench-all-unlimited_2c552482.ext_proc.override_message_timeout_received: 0
cluster.bench-all-unlimited_2c552482.ext_proc.rejected_header_mutations: 0
cluster.bench-all-unlimited_2c552482.ext_proc.server_half_closed: 0
cluster.bench-all-unlimited_2c552482.ext_proc.spurious_msgs_received: 0
cluster.bench-all-unlimited_2c552482.ext_proc.stream_msgs_received: 0
cluster.bench-all-unlimited_2c552482.ext_proc.stream_msgs_sent: 0
cluster.bench-all-unlimited_2c552482.ext_proc.streams_closed: 0
cluster.bench-all-unlimited_2c552482.ext_proc.streams_failed: 0
cluster.bench-all-unlimited_2c552482.ext_proc.streams_started: 0
cluster.bench-all_96158f42.ext_proc.clear_route_cache_disabled: 0
cluster.bench-all_96158f42.ext_proc.clear_route_cache_ignored: 0
cluster.bench-all_96158f42.ext_proc.clear_route_cache_upstream_ignored: 0
cluster.bench-all_96158f42.ext_proc.failure_mode_allowed: 0
cluster.bench-all_96158f42.ext_proc.http_not_ok_resp_received: 0
cluster.bench-all_96158f42.ext_proc.immediate_responses_sent: 0
cluster.bench-all_96158f42.ext_proc.message_timeouts: 0
cluster.bench-all_96158f42.ext_proc.override_message_timeout_ignored: 0
cluster.bench-all_96158f42.ext_proc.override_message_timeout_received: 0
cluster.bench-all_96158f42.ext_proc.rejected_header_mutations: 0
cluster.bench-all_96158f42.ext_proc.server_half_closed: 0
cluster.bench-all_96158f42.ext_proc.spurious_msgs_received: 0
cluster.bench-all_96158f42.ext_proc.stream_msgs_received: 0
cluster.bench-all_96158f42.ext_proc.stream_msgs_sent: 0
cluster.bench-all_96158f42.ext_proc.streams_closed: 0
cluster.bench-all_96158f42.ext_proc.streams_failed: 0
cluster.bench-all_96158f42.ext_proc.streams_started: 0
http.gateway.ext_proc.clear_route_cache_disabled: 0
http.gateway.ext_proc.clear_route_cache_ignored: 0
http.gateway.ext_proc.clear_route_cache_upstream_ignored: 0
http.gateway.ext_proc.failure_mode_allowed: 0
http.gateway.ext_proc.http_not_ok_resp_received: 0
http.gateway.ext_proc.immediate_responses_sent: 1
http.gateway.ext_proc.message_timeouts: 0
http.gateway.ext_proc.override_message_timeout_ignored: 0
http.gateway.ext_proc.override_message_timeout_received: 0
http.gateway.ext_proc.rejected_header_mutations: 0
http.gateway.ext_proc.server_half_closed: 0
http.gateway.ext_proc.spurious_msgs_received: 0
http.gateway.ext_proc.stream_msgs_received: 45
http.gateway.ext_proc.stream_msgs_sent: 45
http.gateway.ext_proc.streams_closed: 12
http.gateway.ext_proc.streams_failed: 0
http.gateway.ext_proc.streams_started: 12
"""

# The same text after the 10 all-features requests: these lines changed, the others are as above.
ALL_FEATURES_CHANGED = """\
cluster.bench-all_96158f42.ext_proc.stream_msgs_received: 40
cluster.bench-all_96158f42.ext_proc.stream_msgs_sent: 40
cluster.bench-all_96158f42.ext_proc.streams_closed: 10
cluster.bench-all_96158f42.ext_proc.streams_started: 10
http.gateway.ext_proc.stream_msgs_received: 75
http.gateway.ext_proc.stream_msgs_sent: 75
http.gateway.ext_proc.streams_closed: 22
http.gateway.ext_proc.streams_started: 22
"""


def _changed(text: str, changes: str) -> str:
    """`text` with the lines of the same stats in `changes` replaced."""
    new = dict(line.split(": ", 1) for line in changes.splitlines())
    return "".join(
        f"{name}: {new.get(name, value)}\n"
        for name, value in (line.split(": ", 1) for line in text.splitlines())
    )


GATEWAY_AFTER_ALL_FEATURES = _changed(GATEWAY_AFTER_PASSTHROUGH, ALL_FEATURES_CHANGED)

FLOOR_END = """\
cluster.floor_ext_proc.upstream_rq_rx_reset: 0
cluster.floor_ext_proc.upstream_rq_rx_reset_no_error: 0
cluster.floor_ext_proc.upstream_rq_timeout: 0
cluster.floor_ext_proc.upstream_rq_total: 11
cluster.floor_ext_proc.upstream_rq_tx_reset: 0
cluster.floor_ext_proc.version: 0
cluster.floor_ext_proc.warming_state: 0
http.plain.ext_proc.clear_route_cache_disabled: 0
http.plain.ext_proc.clear_route_cache_ignored: 0
http.plain.ext_proc.clear_route_cache_upstream_ignored: 0
http.plain.ext_proc.failure_mode_allowed: 0
http.plain.ext_proc.http_not_ok_resp_received: 0
http.plain.ext_proc.immediate_responses_sent: 1
http.plain.ext_proc.message_timeouts: 0
http.plain.ext_proc.override_message_timeout_ignored: 0
http.plain.ext_proc.override_message_timeout_received: 0
http.plain.ext_proc.rejected_header_mutations: 0
http.plain.ext_proc.server_half_closed: 1
http.plain.ext_proc.spurious_msgs_received: 0
http.plain.ext_proc.stream_msgs_received: 33
http.plain.ext_proc.stream_msgs_sent: 34
http.plain.ext_proc.streams_closed: 11
http.plain.ext_proc.streams_failed: 1
http.plain.ext_proc.streams_started: 12
cluster.floor_ext_proc.http2.cookie_count: No recorded values
cluster.floor_ext_proc.http2.cookie_size: No recorded values
cluster.floor_ext_proc.http2.header_count: No recorded values
cluster.floor_ext_proc.http2.header_list_size: No recorded values
cluster.floor_ext_proc.internal.upstream_rq_time: No recorded values
cluster.floor_ext_proc.upstream_cx_connect_ms: No recorded values
cluster.floor_ext_proc.upstream_cx_length_ms: No recorded values
cluster.floor_ext_proc.upstream_rq_per_cx: No recorded values
cluster.floor_ext_proc.upstream_rq_time: No recorded values
"""

DOWNSTREAM = "http.gateway.ext_proc"
UPSTREAM = "cluster.bench-all_96158f42.ext_proc"


def test_counters_are_read_per_filter() -> None:
    counters = parse_ext_proc_stats(GATEWAY_AFTER_PASSTHROUGH)
    assert set(counters) == {DOWNSTREAM, UPSTREAM, "cluster.bench-all-unlimited_2c552482.ext_proc"}
    assert counters[DOWNSTREAM] == {
        "streams_started": 12,
        "stream_msgs_sent": 45,
        "stream_msgs_received": 45,
    }
    assert counters[UPSTREAM] == dict.fromkeys(counters[UPSTREAM], 0)


def test_other_lines_and_histograms_are_ignored() -> None:
    assert parse_ext_proc_stats(FLOOR_END) == {
        "http.plain.ext_proc": {
            "stream_msgs_received": 33,
            "stream_msgs_sent": 34,
            "streams_started": 12,
        }
    }
    assert parse_ext_proc_stats("") == {}  # plain Envoy: no ext_proc filter


def test_all_features_is_two_streams_and_seven_messages() -> None:
    tally = ExtProcTally()
    before = parse_ext_proc_stats(GATEWAY_AFTER_PASSTHROUGH)
    tally.add("all", before, parse_ext_proc_stats(GATEWAY_AFTER_ALL_FEATURES))
    figures = tally.per_request("all", 10)
    assert figures == {
        "streams_per_req": 2.0,
        "msgs_per_req": 7.0,
        "msgs_received_per_req": 7.0,
        "filters": {  # the unlimited model's cluster counted nothing: left out
            UPSTREAM: {
                "streams_started": 1.0,
                "stream_msgs_sent": 4.0,
                "stream_msgs_received": 4.0,
            },
            DOWNSTREAM: {
                "streams_started": 1.0,
                "stream_msgs_sent": 3.0,
                "stream_msgs_received": 3.0,
            },
        },
    }


def test_slices_add_up() -> None:
    tally = ExtProcTally()
    before = parse_ext_proc_stats(GATEWAY_AFTER_PASSTHROUGH)
    after = parse_ext_proc_stats(GATEWAY_AFTER_ALL_FEATURES)
    tally.add("all", before, after)
    tally.add("all", before, after)
    figures = tally.per_request("all", 20)
    assert figures is not None
    assert (figures["streams_per_req"], figures["msgs_per_req"]) == (2.0, 7.0)


def test_no_filter_no_figures() -> None:
    tally = ExtProcTally()
    tally.add("plain", None, None)
    assert tally.per_request("plain", 100) is None


def scenario(
    msgs: float | None, streams: float = 1.0, cpu: float | None = 0.3
) -> dict[str, object]:
    ext_proc = None if msgs is None else {"msgs_per_req": msgs, "streams_per_req": streams}
    return {"processor_cpu_ms_per_req": cpu, "ext_proc": ext_proc}


def test_rows_by_rounded_message_count_fewest_first() -> None:
    rows = by_message_count(
        {
            "plain-envoy": scenario(None, cpu=None),
            "floor": scenario(3.0, cpu=0.15),
            "passthrough": scenario(4.0, cpu=0.4),
            "all-features": scenario(7.01, streams=2.0, cpu=0.9),
            "unread": scenario(2.99, cpu=0.3),
            "cache-hit": scenario(2.0, cpu=0.2),
        }
    )
    assert [row["msgs_per_req"] for row in rows] == [2, 3, 4, 7]
    assert [[m["name"] for m in row["scenarios"]] for row in rows] == [
        ["cache-hit"],
        ["floor", "unread"],  # in the order given
        ["passthrough"],
        ["all-features"],
    ]
    assert rows[1]["scenarios"][1] == {
        "name": "unread",
        "msgs_per_req": 2.99,
        "streams_per_req": 1.0,
        "processor_cpu_ms_per_req": 0.3,
    }
    assert rows[3]["scenarios"][0]["streams_per_req"] == 2.0


def test_the_table_lists_scenarios_and_their_cpu_per_message() -> None:
    table = messages_table(
        {
            "plain-envoy": scenario(None, cpu=None),
            "floor": scenario(3.0, cpu=0.15),
            "unread": scenario(2.99, cpu=0.3),
            "all-features": scenario(7.0, streams=2.0, cpu=0.91),
        }
    )
    caption, *lines = table.strip().splitlines()
    assert caption.startswith("By ext_proc messages per request")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines]
    assert cells[0] == ["msgs/req", "streams/req", "scenarios (processor CPU ms/req)", "CPU ms/msg"]
    assert cells[2:] == [  # plain Envoy (no ext_proc filter) is left out
        ["3", "1.00", "floor (0.150); unread (0.300)", "0.050-0.100"],
        ["7", "2.00", "all-features (0.910)", "0.130"],
    ]
