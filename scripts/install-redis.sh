#!/usr/bin/env bash
# Install Debian's redis-server when it is missing: the tests start their own redis-server
# processes (free ports, no persistence) to prove limits shared across processor replicas.
# Idempotent and quiet: does nothing when redis-server is on PATH; prints only on failure.
set -euo pipefail

command -v redis-server >/dev/null 2>&1 && exit 0

fail() { echo "install-redis.sh: $*" >&2; exit 1; }
command -v apt-get >/dev/null 2>&1 || fail "apt-get is required to install redis-server"
sudo=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: install redis-server yourself"
  sudo="sudo"
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y -qq redis-server >"$log" 2>&1; then
  $sudo apt-get update -qq >>"$log" 2>&1 || true
  $sudo apt-get install -y -qq redis-server >>"$log" 2>&1 || { cat "$log" >&2; fail "apt-get install redis-server failed"; }
fi
command -v redis-server >/dev/null 2>&1 || fail "redis-server still missing after apt-get install"
