"""The Grafana dashboard in helm/llm-gateway/files/grafana-dashboard.json, offline.

Every query must be PromQL that promtool accepts, read its data source from the dashboard's
`datasource` variable and honour the `job` and `instance` selections; the panels must not overlap.
That the metrics it reads are exported is tests/e2e/test_dashboard_metrics.py.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from tests.monitoring import (
    Json,
    as_promql,
    check_promql,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
)
from tests.promql import metric_names, selectors

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def data_panels() -> list[Json]:
    return [panel for panel in dashboard_panels() if panel["type"] != "row"]


def test_every_query_is_promql_promtool_accepts(tmp_path: Path) -> None:
    expressions = list(dashboard_expressions())
    assert len(expressions) > 20
    result = check_promql([as_promql(expr) for _, expr in expressions], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_panels_and_queries_use_the_datasource_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    for panel in data_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE


def test_every_panel_query_selects_the_chosen_job_and_instance() -> None:
    for panel in data_panels():
        for target in panel["targets"]:
            for selector in selectors(target["expr"]):
                assert 'job=~"$job"' in selector.matchers, (panel["title"], selector)
                assert 'instance=~"$instance"' in selector.matchers, (panel["title"], selector)


def test_panels_are_titled_unique_and_do_not_overlap() -> None:
    panels = list(dashboard_panels())
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in data_panels():
        assert panel["title"] and panel["description"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((panel["title"], grid))
    for (a, ga), (b, gb) in combinations(boxes, 2):
        apart_x = ga["x"] + ga["w"] <= gb["x"] or gb["x"] + gb["w"] <= ga["x"]
        apart_y = ga["y"] + ga["h"] <= gb["y"] or gb["y"] + gb["h"] <= ga["y"]
        assert apart_x or apart_y, f"{a!r} overlaps {b!r}"


def row_panels(title: str) -> list[Json]:
    """The panels laid out under the row `title`, down to the next row."""
    panels = sorted(dashboard()["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    start = next(n for n, p in enumerate(panels) if p["type"] == "row" and p["title"] == title)
    below = []
    for panel in panels[start + 1 :]:
        if panel["type"] == "row":
            break
        below.append(panel)
    return below


def test_the_limits_and_spend_row_shows_every_governance_metric() -> None:
    read = {
        name
        for panel in row_panels("Limits and spend")
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }
    assert read == {
        "gateway_rate_limited_total",
        "gateway_cost_total",
        "gateway_usage_estimated_total",
        "gateway_prompt_estimate_ratio_bucket",
        "gateway_limiter_redis_up",
        "gateway_limiter_local_decisions_total",
        "gateway_limiter_redis_failures_total",
    }
