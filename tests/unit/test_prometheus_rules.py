"""The alert rules in helm/llm-gateway/files/prometheus-rules.yaml, checked by the real promtool.

`promtool check rules` validates the file; `promtool test rules` runs the unit tests in
tests/unit/prometheus-rules.test.yaml (each alert fires when it should, and not just below its
threshold, on too little traffic or none). Mutated copies of the rules must fail those unit tests,
so they can tell a right threshold from a wrong one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import REPO, RULE_TESTS, RULES, alert_rules, run_promtool

OPERATIONS = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = run_promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    data: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in data["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never seen firing"
    assert names - quiet == set(), "alerts never seen staying quiet"


def operations_alert_sections() -> set[str]:
    """The one-word `###` headings (alert names) inside "## Alerts" of docs/operations.md."""
    text = OPERATIONS.read_text(encoding="utf-8")
    match = re.search(r"^## Alerts\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert match, "docs/operations.md has no '## Alerts' section"
    return set(re.findall(r"^### (\S+)$", match.group(1), re.MULTILINE))


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_a_severity_a_summary_and_its_runbook_section(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert f'docs/operations.md, section "Alerts", {name}.' in annotations["description"]
    assert name in operations_alert_sections()


def test_the_runbook_has_no_section_for_an_alert_that_does_not_exist() -> None:
    assert operations_alert_sections() == {rule["alert"] for rule in alert_rules()}


# A wrong rule each; the unit tests must catch every one. (old text, new text, occurrence)
MUTANTS = {
    "critical at 30 %": (") > 0.20", ") > 0.30", 1),
    "critical at 10 %": (") > 0.20", ") > 0.10", 1),
    "warning at 3 %": (") > 0.05", ") > 0.03", 1),
    "warning at 7 %": (") > 0.05", ") > 0.07", 1),
    "no minimum traffic for critical": (">= 30", ">= 0", 1),
    "minimum traffic 40 for warning": (">= 30", ">= 40", 2),
    "4xx counted as errors": ('status=~"5.."}[5m])', 'status=~"[45].."}[5m])', 1),
    "error rate per replica": (
        "sum by (namespace, job) (rate(gateway_requests_total[5m]))",
        "sum by (namespace, job, instance) (rate(gateway_requests_total[5m]))",
        1,
    ),
    "breaker alert only while open": ("gateway_breaker_state > 0", "gateway_breaker_state == 2", 1),
    "no healthy provider on one open breaker": (
        "min by (namespace, job, instance) (gateway_breaker_state)",
        "max by (namespace, job, instance) (gateway_breaker_state)",
        1,
    ),
    "no healthy provider on one failing health check": (
        "max by (namespace, job, instance) (gateway_provider_healthy)",
        "min by (namespace, job, instance) (gateway_provider_healthy)",
        1,
    ),
    "latency at 14 s": (") > 10", ") > 14", 1),
    "latency at 9 s": (") > 10", ") > 9", 1),
    "latency p90": ("histogram_quantile(0.95", "histogram_quantile(0.90", 1),
    "breaker alert after 4 minutes": ("for: 5m", "for: 4m", 2),
    "limiter Redis alert while it answers": (
        "(gateway_limiter_redis_up) == 0",
        "(gateway_limiter_redis_up) <= 1",
        1,
    ),
    "limiter Redis alert after 1 minute": ("for: 2m", "for: 1m", 2),
    "limiter Redis alert after 5 minutes": ("for: 2m", "for: 5m", 2),
}


def replace_nth(text: str, old: str, new: str, occurrence: int) -> str:
    parts = text.split(old)
    assert len(parts) > occurrence, f"{old!r} occurs fewer than {occurrence} times"
    return old.join(parts[:occurrence]) + new + old.join(parts[occurrence:])


@pytest.mark.parametrize(("old", "new", "occurrence"), MUTANTS.values(), ids=MUTANTS.keys())
def test_the_unit_tests_catch_a_wrong_rule(
    tmp_path: Path, old: str, new: str, occurrence: int
) -> None:
    rules = replace_nth(RULES.read_text(encoding="utf-8"), old, new, occurrence)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "prometheus-rules.yaml").write_text(rules, encoding="utf-8")
    tests: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    tests["rule_files"] = ["rules/prometheus-rules.yaml"]
    (tmp_path / "rules.test.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")

    assert (
        run_promtool("check", "rules", tmp_path / "rules" / "prometheus-rules.yaml").returncode == 0
    )
    result = run_promtool("test", "rules", "rules.test.yaml", cwd=tmp_path)
    assert result.returncode != 0, f"the unit tests pass with {new!r} instead of {old!r}"
    assert "FAILED" in result.stdout + result.stderr
