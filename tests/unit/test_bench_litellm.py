"""The bench's LiteLLM proxy row (`bench/litellm.py`): config, skip switch, install, figures.

The rendered config, the skip switch, an install that fails, the figures and their targets on
made-up results. Nothing is downloaded, LiteLLM is never started and nothing is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import litellm
from bench.systems import ALL_FEATURES, PASSTHROUGH, PLAIN, System
from extproc.dev.stack import ProcessGroup

# --- the config LiteLLM runs on ----------------------------------------------------------------


def test_the_config_maps_the_model_to_the_fake_as_an_openai_endpoint() -> None:
    config = litellm.proxy_config("http://127.0.0.1:4000", "bench-passthrough", "sk-m", "sk-up")
    assert config["model_list"] == [
        {
            "model_name": "bench-passthrough",
            "litellm_params": {
                "model": "openai/bench-passthrough",
                "api_base": "http://127.0.0.1:4000/v1",
                "api_key": "sk-up",
            },
        }
    ]
    assert config["general_settings"] == {"master_key": "sk-m"}
    # No database: nothing in the config names one.
    assert "database_url" not in config["general_settings"]
    assert yaml.safe_load(yaml.safe_dump(config)) == config


def test_the_proxy_runs_offline_and_the_bench_pins_its_version() -> None:
    assert litellm.OFFLINE_ENV["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert litellm.OFFLINE_ENV["LITELLM_TELEMETRY_DISABLED"] == "true"
    assert "DATABASE_URL" not in litellm.OFFLINE_ENV
    assert litellm.requirement() == f"litellm[proxy]=={litellm.LITELLM_VERSION}"
    assert litellm.LITELLM == "litellm-proxy (2 workers)"


@pytest.mark.parametrize(
    ("flag", "environ", "skipped"),
    [
        (False, {}, False),
        (False, {"BENCH_LITELLM": "1"}, False),
        (True, {}, True),
        (False, {"BENCH_LITELLM": "0"}, True),
        (False, {"BENCH_LITELLM": "off"}, True),
    ],
)
def test_the_row_can_be_skipped(flag: bool, environ: dict[str, str], skipped: bool) -> None:
    reason = litellm.skip_reason(flag, environ)
    assert (reason is not None) == skipped
    if skipped:
        row = litellm.prepare(flag, environ)
        assert isinstance(row, litellm.LiteLLMRow)
        assert not row.available and row.reason == reason


# --- installing ----------------------------------------------------------------------------------


def test_no_venv_has_no_version(tmp_path: Path) -> None:
    assert litellm.installed_version(tmp_path / "absent") is None


def test_a_venv_without_litellm_has_no_version(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)  # a Python without LiteLLM (the project's)
    assert litellm.installed_version(tmp_path / "venv") is None


def test_a_failed_install_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    # `python -m venv` cannot create a venv below a file: it fails at once, offline.
    with pytest.raises(litellm.InstallError, match="venv"):
        litellm.ensure_installed(blocker / "venv")


def test_worker_restarts_are_counted_from_the_log(tmp_path: Path) -> None:
    log = tmp_path / "litellm.log"
    assert litellm.worker_restarts(log) == 0
    log.write_text(
        "INFO:     Started server process [11]\n"
        "INFO:     Child process [11] died\n"
        "INFO:     Waiting for child process [12]\n"
        "INFO:     Child process [12] died\n"
    )
    assert litellm.worker_restarts(log) == 2


# --- the figures and their targets ---------------------------------------------------------------


def scenario(rps: float, p50_ms: float) -> dict[str, Any]:
    return {"one_client": {"p50_ms": p50_ms}, "eight_clients": {"rps": rps}}


def test_throughput_and_added_p50_ratios() -> None:
    scenarios = {
        PLAIN: scenario(4000, 0.6),
        PASSTHROUGH: scenario(900, 2.6),  # added 2.0 ms
        ALL_FEATURES: scenario(600, 3.6),  # added 3.0 ms
        litellm.LITELLM: scenario(100, 30.6),  # added 30 ms
    }
    assert litellm.figures(scenarios) == pytest.approx(
        {
            "throughput_passthrough": 9.0,
            "added_p50_passthrough": 15.0,
            "throughput_all_features": 6.0,
            "added_p50_all_features": 10.0,
        }
    )
    verdicts = {t["key"]: t["verdict"] for t in litellm.targets({"scenarios": scenarios})}
    assert verdicts == {
        "litellm_throughput_passthrough": "MISS",
        "litellm_added_p50_passthrough": "PASS",
        "litellm_throughput_all_features": "MISS",
        "litellm_added_p50_all_features": "PASS",  # exactly 10x meets ">= 10x"
    }


def test_targets_carry_the_report_fields() -> None:
    scenarios = {
        PLAIN: scenario(4000, 0.6),
        PASSTHROUGH: scenario(1200, 1.6),
        litellm.LITELLM: scenario(100, 40.6),
    }
    (throughput, added) = litellm.targets({"scenarios": scenarios})  # no all-features row
    assert throughput == {
        "key": "litellm_throughput_passthrough",
        "target": f"{PASSTHROUGH} / LiteLLM throughput, 8 clients",
        "threshold": ">= 10x",
        "measured": pytest.approx(12.0),
        "measured_text": "12.0x",
        "verdict": "PASS",
    }
    assert added["measured"] == pytest.approx(40.0)
    assert added["verdict"] == "PASS"


def test_without_a_litellm_row_the_targets_are_not_applicable() -> None:
    scenarios = {PLAIN: scenario(4000, 0.6), PASSTHROUGH: scenario(900, 2.6)}
    assert litellm.figures(scenarios) == {}
    found = litellm.targets({"scenarios": scenarios})
    assert [(t["measured"], t["verdict"]) for t in found] == [(None, "n/a"), (None, "n/a")]


def test_a_gateway_adding_nothing_gives_no_ratio() -> None:
    scenarios = {
        PLAIN: scenario(4000, 0.6),
        PASSTHROUGH: scenario(900, 0.6),  # added 0 ms: no ratio, not a division by zero
        litellm.LITELLM: scenario(100, 30.6),
    }
    assert litellm.figures(scenarios)["added_p50_passthrough"] is None


def test_render_says_why_the_row_is_missing() -> None:
    row = {**litellm.LiteLLMRow(False, "skipped (--no-litellm)").__dict__}
    text = litellm.render({"litellm": row, "scenarios": {}})
    assert "unavailable, skipped (--no-litellm)" in text


def test_a_proxy_that_does_not_start_leaves_the_row_unavailable(tmp_path: Path) -> None:
    broken = tmp_path / "litellm"
    broken.write_text("#!/bin/sh\necho 'no such option' >&2\nexit 2\n")
    broken.chmod(0o755)
    system = System(0, 0, {}, None, "http://127.0.0.1:9")  # type: ignore[arg-type]
    with ProcessGroup() as group:
        row = litellm.add_row(system, group, tmp_path, broken, system.fake_url)
    assert not row.available
    assert row.reason is not None and "exited with code 2" in row.reason
    assert litellm.LITELLM not in system.targets
    rendered = yaml.safe_load((tmp_path / "litellm.yaml").read_text())
    assert rendered["model_list"][0]["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1"
