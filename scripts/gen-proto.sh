#!/usr/bin/env bash
# Compile the project's own .proto files (proto/llm_gateway/...) into Python under OUT_DIR:
# messages (*_pb2.py), their type stubs (*_pb2.pyi) and the gRPC stubs (*_pb2_grpc.py).
# `make proto` runs it with OUT_DIR = the repo root (the committed llm_gateway/ package);
# tests/unit/test_policy_proto_fresh.py runs it on a temp dir and compares the files.
# Uses $PYTHON (default .venv/bin/python), which must have the pinned grpcio-tools.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: gen-proto.sh OUT_DIR" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[[ "$python" == */* && "$python" != /* ]] && python="$PWD/$python"  # relative to the caller
mkdir -p "$1"
out="$(cd "$1" && pwd)"

cd "$root/proto"
# Relative paths (-I .) keep each file's descriptor name, and so the output, the same anywhere.
mapfile -t protos < <(find llm_gateway -name '*.proto' | LC_ALL=C sort)
# grpc_tools.protoc adds the include path of its bundled well-known types (google/protobuf/...).
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" "${protos[@]}"
