"""The chart's alert rules and Grafana dashboard as the tests read them; promtool to check them.

promtool comes from `scripts/install-promtool.sh` (run by `make tools`, which `make test` runs);
without it the tests fail rather than skip. `PROMTOOL_BIN` names another promtool.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).parents[1]
FILES = REPO / "helm" / "llm-gateway" / "files"
RULES = FILES / "prometheus-rules.yaml"
DASHBOARD = FILES / "grafana-dashboard.json"
RULE_TESTS = REPO / "tests" / "unit" / "prometheus-rules.test.yaml"

# Grafana's interval variables, and a value of the same type for promtool.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}

Json = dict[str, Any]


def promtool() -> Path:
    """The promtool binary, or the test fails."""
    override = os.environ.get("PROMTOOL_BIN")
    binary = Path(override) if override else REPO / ".tools" / "promtool"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"promtool not found at {binary}: run scripts/install-promtool.sh (make tools), "
            "or set PROMTOOL_BIN to a promtool executable"
        )
    return binary


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool with `args`; the caller checks the result."""
    return subprocess.run(
        [str(promtool()), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def alert_rules(path: Path = RULES) -> list[Json]:
    """Every alerting rule of the rules file."""
    data: Json = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def rule_expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every rule."""
    data: Json = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in data["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]


def dashboard() -> Json:
    """The dashboard JSON."""
    data: Json = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_panels(data: Json | None = None) -> Iterator[Json]:
    """Every panel, those inside rows included."""
    for panel in (data or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _variable_query(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query (None when it has none)."""
    query = query.strip()
    if match := re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", query, re.DOTALL):
        return match.group(1)
    if match := re.fullmatch(r"query_result\((.*)\)", query, re.DOTALL):
        return match.group(1)
    if re.fullmatch(r"label_values\(\s*[A-Za-z_]\w*\s*\)|label_names\(\)|metrics\(.*\)", query):
        return None
    raise ValueError(f"unknown Grafana variable query {query!r}")


def dashboard_expressions(data: Json | None = None) -> Iterator[tuple[str, str]]:
    """(where, PromQL with Grafana variables) of every panel query and variable query."""
    data = data or dashboard()
    for panel in dashboard_panels(data):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        expr = _variable_query(text)
        if expr is not None:
            yield f"variable {variable['name']}", expr


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's interval variables replaced by durations.

    Other variables (`$job`) stand inside label-matcher strings, where they are valid as they are.
    """
    for variable, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(variable, value)
    return expr


def check_promql(exprs: list[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on a rule file with one recording rule per expression."""
    rules = [{"record": f"check:expression_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    path = workdir / "expressions.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}), "utf-8")
    return run_promtool("check", "rules", path)
