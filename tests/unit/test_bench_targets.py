"""The benchmark's targets (issue 16) from a report's figures: computed, then PASS/MISS."""

from __future__ import annotations

from typing import Any

from bench.report import evaluate_targets
from bench.systems import ALL_FEATURES, FLOOR, PASSTHROUGH, PLAIN


def report(floor_cpu: float, cpu: float, all_cpu: float, msgs: float) -> dict[str, Any]:
    def scenario(rps: float, processor: float | None, ext_proc: Any = None) -> dict[str, Any]:
        return {
            "eight_clients": {"rps": rps},
            "processor_cpu_ms_per_req": processor,
            "ext_proc": ext_proc,
        }

    return {
        "scenarios": {
            PLAIN: scenario(4000, None),
            FLOOR: scenario(1000, floor_cpu),
            PASSTHROUGH: scenario(900, cpu),
            ALL_FEATURES: scenario(600, all_cpu, {"msgs_per_req": msgs}),
        },
        "big_prompt": {PASSTHROUGH: {"median_ms": 30.0}, PLAIN: {"median_ms": 22.0}},
        "memory": {"growth_pct": 0.5},
    }


def verdicts(data: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    return {t["key"]: (t["measured"], t["verdict"]) for t in evaluate_targets(data)}


def test_targets_met() -> None:
    got = verdicts(report(floor_cpu=0.5, cpu=0.6, all_cpu=0.85, msgs=4.0))
    measured = {key: value for key, (value, _) in got.items()}
    assert abs(measured["cpu_above_floor"] - (0.6 - 0.5)) < 1e-9
    assert measured["throughput_vs_floor"] == 900 / 1000
    assert abs(measured["all_features_cpu_ratio"] - 0.85 / 0.6) < 1e-9
    assert measured["several_targets_messages"] == 4.0
    assert measured["added_1mb"] == 8.0
    assert {verdict for _, verdict in got.values()} == {"PASS"}


def test_targets_missed_and_missing_figures() -> None:
    got = verdicts(report(floor_cpu=0.5, cpu=0.7, all_cpu=1.2, msgs=6.0))
    for key in ("cpu_above_floor", "all_features_cpu_ratio", "several_targets_messages"):
        assert got[key][1] == "MISS"
    data = report(floor_cpu=0.5, cpu=0.6, all_cpu=0.8, msgs=4.0)
    data["scenarios"][ALL_FEATURES]["ext_proc"] = None  # its Envoy's counters were not read
    assert verdicts(data)["several_targets_messages"] == (None, "MISS")
