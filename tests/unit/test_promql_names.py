"""The PromQL tokenizer that finds which metrics the alert rules and the dashboard read."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.monitoring import as_promql, check_promql
from tests.promql import PromQLError, Selector, metric_names, selectors

EXAMPLES = [
    ('rate(gateway_requests_total{status=~"5.."}[5m])', {"gateway_requests_total"}),
    (
        "sum by (le, model) (rate(x_bucket[5m])) / on (job) group_left (team) y offset 1h",
        {"x_bucket", "y"},
    ),
    (
        'histogram_quantile(0.95, sum(rate(a_bucket{job=~"$job"}[$__rate_interval])) by (le))',
        {"a_bucket"},
    ),
    ("a and b or c unless d", {"a", "b", "c", "d"}),
    ("A AND B", {"A", "B"}),
    ('count_values("version", build_info)', {"build_info"}),
    ('{__name__="up", job="x"}', {"up"}),
    ('label_replace(a, "dst", "$1", "src", "(.*)")', {"a"}),
    ("max_over_time(a[10m:1m] @ end())", {"a"}),
    ("topk(5, a) > bool 1e3", {"a"}),
    ("a # comment naming b\n + c", {"a", "c"}),
    ("sum without (instance) (a) * ignoring (x) group_left b", {"a", "b"}),
    ("a > Inf or b < -inf or c != NaN", {"a", "b", "c"}),
    ("job:gateway_requests:rate5m > 0.2", {"job:gateway_requests:rate5m"}),
    ("rate (spaced [1h30m]) > 0x1F", {"spaced"}),
    ("sum(rate(by_name_total[5m]))", {"by_name_total"}),
    ("vector(1) + time()", set()),
]


@pytest.mark.parametrize(("expr", "names"), EXAMPLES)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_the_examples_are_promql_promtool_accepts(tmp_path: Path) -> None:
    result = check_promql([as_promql(expr) for expr, _ in EXAMPLES], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_selectors_keep_their_matchers() -> None:
    expr = 'sum(rate(a_total{job=~"$job", code!=""}[5m])) / sum(rate(a_total[5m])) > b'
    assert selectors(expr) == [
        Selector("a_total", 'job=~"$job",code!=""'),
        Selector("a_total", ""),
        Selector("b", ""),
    ]


@pytest.mark.parametrize(
    "expr", ["rate(a[5m]", "a}", "sum(a))", "a ; b", "a[5m", '{__name__=~"x"', '{job="x"}']
)
def test_what_it_cannot_read_is_an_error(expr: str) -> None:
    with pytest.raises(PromQLError):
        metric_names(expr)
