"""The endurance soak's verdict (`bench/soak.py`): slope fit, leak thresholds, failure reasons.

Pure functions on made-up samples; nothing is started and nothing is timed.
"""

from __future__ import annotations

import pytest

from bench.soak import MIX, Thresholds, complete, leak_check, slope, verdict, warmup

T = Thresholds()
OK_COUNTS = {"total": 10_000, "lost": 0, "5xx": 0, "unexpected": 0}


def samples(kib_per_request: float, noise: float = 0.0) -> list[tuple[float, float, float]]:
    """60 minutes, one sample a minute, 1 000 requests a minute, RSS 80 MiB + a slope."""
    return [
        (60.0 * m, 1000.0 * m, 80 * 1024 + kib_per_request * 1000 * m + noise * (-1) ** m)
        for m in range(61)
    ]


def test_slope_is_least_squares() -> None:
    assert slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert slope([(0, 0), (1, 1), (2, 0), (3, 1)]) == pytest.approx(0.2)
    assert slope([(1, 5)]) == 0.0
    assert slope([(1, 5), (1, 7)]) == 0.0


def test_flat_noisy_memory_is_no_leak() -> None:
    check = leak_check(samples(0.0, noise=512), warmup_s=600, t=T)
    assert check["samples_fitted"] == 51
    assert not check["leak"]
    assert abs(check["fitted_growth_kib"]) < T.noise_floor_kib


def test_a_per_request_leak_above_the_floor_fails() -> None:
    check = leak_check(samples(0.1), warmup_s=600, t=T)  # 100 bytes per request
    assert check["kib_per_1k_requests"] == pytest.approx(100.0)
    assert check["mib_per_hour"] == pytest.approx(100 * 60 / 1024, rel=1e-3)
    assert check["leak"]
    passed, reasons = verdict(OK_COUNTS, {"processor": check}, T)
    assert not passed
    assert "processor RSS grows" in reasons[0]


def test_a_steep_slope_over_too_little_growth_is_noise() -> None:
    # 100 bytes per request over 5 000 requests: 488 KiB, under the 2 MiB floor.
    short = [(float(s), 500.0 * s, 80 * 1024 + 50.0 * s) for s in range(11)]
    check = leak_check(short, warmup_s=0, t=T)
    assert check["kib_per_1k_requests"] == pytest.approx(100.0)
    assert not check["leak"]


def test_warm_up_growth_is_left_out() -> None:
    grows_then_flat = [(60.0 * m, 1000.0 * m, 80 * 1024 + min(m, 5) * 4096) for m in range(61)]
    assert leak_check(grows_then_flat, warmup_s=0, t=T)["leak"]
    assert not leak_check(grows_then_flat, warmup_s=600, t=T)["leak"]


def test_warmup_is_a_share_with_a_floor_and_a_cap() -> None:
    assert warmup(3600, T) == 720
    assert warmup(600, T) == 120
    assert warmup(120, T) == 60


def test_lost_5xx_and_unexpected_share_fail() -> None:
    flat = {"processor": leak_check(samples(0.0), 600, T)}
    assert verdict(OK_COUNTS, flat, T) == (True, [])
    for key, value, words in (
        ("lost", 1, "no answer"),
        ("5xx", 1, "5xx"),
        ("unexpected", 11, "unexpected answers 11 of 10000"),
    ):
        passed, reasons = verdict({**OK_COUNTS, key: value}, flat, T)
        assert not passed
        assert words in reasons[0]
    assert verdict({**OK_COUNTS, "unexpected": 10}, flat, T)[0]  # 0.1 % is the bound


def test_too_few_samples_or_no_requests_fail() -> None:
    check = leak_check(samples(0.0)[:3], warmup_s=120, t=T)
    passed, reasons = verdict(OK_COUNTS, {"envoy": check}, T)
    assert not passed and "run longer" in reasons[0]
    assert not verdict({**OK_COUNTS, "total": 0}, {}, T)[0]


def test_a_200_must_be_a_whole_answer() -> None:
    stream = next(k for k in MIX if k.stream)
    whole = next(k for k in MIX if not k.stream and 200 in k.expected)
    assert complete(stream, 200, b'data: {"x": 1}\n\ndata: [DONE]\n\n')
    assert not complete(stream, 200, b'data: {"x": 1}\n\n')
    assert complete(whole, 200, b'{"choices": [{"index": 0}]}')
    assert not complete(whole, 200, b"{}")
    assert not complete(whole, 200, b"not json")
    assert complete(whole, 429, b"")
