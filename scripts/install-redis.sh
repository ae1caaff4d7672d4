#!/usr/bin/env bash
# Install Debian's redis-server when it is missing: the tests start their own redis-server
# processes (free ports, no persistence) to prove limits shared across processor replicas.
# Idempotent and quiet: does nothing when redis-server is on PATH; prints only on failure.
set -euo pipefail

command -v redis-server >/dev/null 2>&1 && exit 0

# shellcheck source=scripts/apt-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-lib.sh"
apt_install redis-server redis-server
command -v redis-server >/dev/null 2>&1 || fail "redis-server still missing after apt-get install"
