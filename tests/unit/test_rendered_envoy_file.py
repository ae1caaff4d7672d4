"""The committed envoy/envoy.yaml must be exactly what the renderer produces today."""

from __future__ import annotations

from pathlib import Path

from extproc.bootstrap import render_yaml
from extproc.config.loading import load_config

ROOT = Path(__file__).parents[2]


def test_committed_bootstrap_matches_a_fresh_render() -> None:
    config = load_config(ROOT / "examples" / "gateway.yaml", resolve_credentials=False).config
    committed = (ROOT / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    assert committed == render_yaml(config), "envoy/envoy.yaml is stale: run `make render-envoy`"
