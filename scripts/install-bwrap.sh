#!/usr/bin/env bash
# Install Debian's bubblewrap (`bwrap`) and util-linux's setpriv/nsenter when missing: the
# end-to-end test of the Helm chart's pod (tests/e2e/pod.py) runs each container of the rendered
# pod in a bwrap sandbox with its volumes at their mount paths.
# Idempotent and quiet: does nothing when both are on PATH; prints only on failure.
set -euo pipefail

command -v bwrap >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 \
  && command -v nsenter >/dev/null 2>&1 && exit 0

fail() { echo "install-bwrap.sh: $*" >&2; exit 1; }
command -v apt-get >/dev/null 2>&1 || fail "apt-get is required to install bubblewrap"
sudo=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: install bubblewrap yourself"
  sudo="sudo"
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
packages=(bubblewrap util-linux)
if ! $sudo apt-get install -o DPkg::Lock::Timeout=300 -y -qq "${packages[@]}" >"$log" 2>&1; then
  $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq >>"$log" 2>&1 || true
  $sudo apt-get install -o DPkg::Lock::Timeout=300 -y -qq "${packages[@]}" >>"$log" 2>&1 \
    || { cat "$log" >&2; fail "apt-get install ${packages[*]} failed"; }
fi
for tool in bwrap setpriv nsenter; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool still missing after apt-get install"
done
