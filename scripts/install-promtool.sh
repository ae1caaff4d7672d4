#!/usr/bin/env bash
# Install promtool (checks and unit-tests the chart's Prometheus rules) into .tools/promtool.
#
# promtool ships in Debian's `prometheus` package. Installing that package would also install the
# Prometheus server with an init script that starts it (on :9090, the processor's admin port), so
# only the package file is downloaded (`apt-get download`) and promtool alone is extracted from it
# (a Go binary that needs nothing but libc). No root needed, except for an `apt-get update` when
# the package lists are empty.
# Idempotent and quiet: does nothing when .tools/promtool already runs; prints only on failure.
set -euo pipefail

PACKAGE="prometheus"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
promtool="$tools/promtool"

if [[ -x "$promtool" ]] && "$promtool" --version >/dev/null 2>&1; then
  exit 0
fi

fail() { echo "install-promtool.sh: $*" >&2; exit 1; }

command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 \
  || fail "apt-get and dpkg-deb are required (Debian's '$PACKAGE' package ships promtool)"

mkdir -p "$tools"
tmp="$(mktemp -d "$tools/promtool.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/apt.log"

download() { (cd "$tmp" && apt-get download -q "$PACKAGE") >"$log" 2>&1; }

if ! download; then
  # A fresh machine has no package lists yet: fetch them (as root, like the Makefile's
  # python3-venv fallback), then try again.
  [[ "$(id -u)" == 0 ]] || { cat "$log" >&2; fail "'apt-get download $PACKAGE' failed (run 'apt-get update' as root)"; }
  apt-get update -qq >>"$log" 2>&1 || { cat "$log" >&2; fail "apt-get update failed"; }
  download || { cat "$log" >&2; fail "'apt-get download $PACKAGE' failed"; }
fi

deb="$(ls "$tmp"/"$PACKAGE"_*.deb 2>/dev/null | head -n 1)"
[[ -n "$deb" ]] || fail "no $PACKAGE .deb downloaded"

# Only ./usr/bin/promtool; written beside its final place, then moved in atomically so an
# interrupted run never leaves a half-written .tools/promtool.
dpkg-deb --fsys-tarfile "$deb" | tar -x -O ./usr/bin/promtool >"$tmp/promtool" \
  || fail "./usr/bin/promtool not found in $(basename "$deb")"
chmod 0755 "$tmp/promtool"
mv -f "$tmp/promtool" "$promtool"
"$promtool" --version >/dev/null 2>&1 || fail "$promtool does not run"
