#!/usr/bin/env bash
# Install Debian's bubblewrap (`bwrap`) and util-linux's setpriv/nsenter when missing: the
# end-to-end test of the Helm chart's pod (tests/e2e/pod.py) runs each container of the rendered
# pod in a bwrap sandbox with its volumes at their mount paths.
# Idempotent and quiet: does nothing when both are on PATH; prints only on failure.
set -euo pipefail

command -v bwrap >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1 \
  && command -v nsenter >/dev/null 2>&1 && exit 0

# shellcheck source=scripts/apt-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-lib.sh"
apt_install bubblewrap bubblewrap util-linux
for tool in bwrap setpriv nsenter; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool still missing after apt-get install"
done
