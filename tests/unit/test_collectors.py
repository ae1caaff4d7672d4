"""The hot-path collectors expose exactly what prometheus_client's own metrics would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from extproc.telemetry.collectors import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1, 10, 1048576)
VALUES = [0.0, 0.0005, 0.001, 0.0011, 0.01, 0.5, 1, 9.99, 10, 11, 5e6, 1048576]


def without_created(exposition: bytes) -> bytes:
    """prometheus_client also writes a `_created` series per child; ours have none."""
    return b"\n".join(line for line in exposition.split(b"\n") if b"_created" not in line)


def test_a_histogram_exposes_what_prometheus_client_s_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("x_seconds", "Help.", ["phase"], buckets=BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "Help.", ["phase"], buckets=BUCKETS, registry=theirs)
    for index, value in enumerate(VALUES):
        phase = "a" if index % 3 else "b"
        mine.labels(phase).observe(value)
        reference.labels(phase).observe(value)
    assert generate_latest(ours) == without_created(generate_latest(theirs))


def test_a_counter_exposes_what_prometheus_client_s_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopCounter("y_total", "Help.", ["code", "model"], registry=ours)
    reference = Counter("y_total", "Help.", ["code", "model"], registry=theirs)
    for labels, amount in [(("", "m"), 1), (("bad", "m"), 3), (("", "m"), 2.5)]:
        mine.labels(*labels).inc(amount)
        reference.labels(*labels).inc(amount)
    assert generate_latest(ours) == without_created(generate_latest(theirs))


def test_wrong_labels_and_buckets_are_refused() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("z_total", "Help.", ["a", "b"], registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("w", "Help.", [], buckets=(1, 0.5), registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("z_total", "Help.", [], registry=registry)
