"""The committed generated code in llm_gateway/ is what `make proto` makes of proto/llm_gateway/.

The test runs the same script `make proto` runs (`scripts/gen-proto.sh`) into a temp dir and
compares every generated file byte for byte, both ways: a proto edited without `make proto`, a
generated file edited by hand and a stale file left behind all fail here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
SCRIPT = REPO / "scripts" / "gen-proto.sh"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files(root: Path) -> dict[str, bytes]:
    """Every generated file under `root`/llm_gateway, by its path relative to `root`."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted((root / "llm_gateway").rglob("*"))
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = generated_files(tmp_path)
    committed = generated_files(REPO)
    assert fresh, "gen-proto.sh generated nothing"
    hint = "run `make proto` and commit llm_gateway/"
    assert sorted(committed) == sorted(fresh), hint
    stale = [name for name, content in fresh.items() if committed[name] != content]
    assert not stale, f"{', '.join(stale)} differ from the proto: {hint}"


def test_generated_code_loads_under_the_installed_runtime() -> None:
    # The gencode checks the protobuf and grpcio versions when imported, and a warning is an error.
    subprocess.run(
        [sys.executable, "-W", "error", "-c", "import llm_gateway.policy.v1.policy_pb2_grpc"],
        check=True,
        cwd=REPO,
        timeout=60,
    )
