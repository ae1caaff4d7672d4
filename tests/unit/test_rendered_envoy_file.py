"""The committed envoy/ files must be exactly what `make render-envoy` writes today."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.bootstrap import CDS_FILE, LDS_FILE, RDS_FILE, render_yaml, xds_files
from extproc.config.loading import load_config
from extproc.config.schema import GatewayConfig
from extproc.xds_files import INPUTS_PREFIX

ROOT = Path(__file__).parents[2]
STALE = "is stale: run `make render-envoy`"


def example_config() -> GatewayConfig:
    return load_config(ROOT / "examples" / "gateway.yaml", resolve_credentials=False).config


def test_committed_bootstrap_matches_a_fresh_render() -> None:
    committed = (ROOT / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    assert committed == render_yaml(example_config()), f"envoy/envoy.yaml {STALE}"


def without_inputs_line(text: str) -> str:
    """The file without its inputs digest, which also covers the renderer's own code (a comment
    edited there changes it, not what the files hold)."""
    lines = text.splitlines(keepends=True)
    assert lines[1].startswith(INPUTS_PREFIX), lines[:2]
    return "".join(lines[:1] + lines[2:])


@pytest.mark.parametrize("name", [CDS_FILE, RDS_FILE, LDS_FILE])
def test_committed_xds_files_match_a_fresh_render(name: str) -> None:
    rendered = {f.name: f.text for f in xds_files([example_config()])}
    committed = (ROOT / "envoy" / "xds" / name).read_text(encoding="utf-8")
    assert without_inputs_line(committed) == without_inputs_line(rendered[name]), (
        f"envoy/xds/{name} {STALE}"
    )
