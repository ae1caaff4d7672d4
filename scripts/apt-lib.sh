# Shared by the install scripts that take their tool from Debian (install-redis.sh,
# install-bwrap.sh): sourced, never run. Defines
#   fail MESSAGE               print "<script>: MESSAGE" to stderr and exit 1;
#   apt_install WHAT PACKAGE…  install the packages with apt-get (through sudo when not root),
#                              quietly: `apt-get update` only when the first install fails,
#                              waiting up to 300 s for the dpkg lock another apt-get holds,
#                              apt's output printed only on failure. WHAT names the tool in
#                              the messages.
# shellcheck shell=bash

fail() { echo "$(basename "$0"): $*" >&2; exit 1; }

apt_install() {
  local what="$1"
  shift
  local packages=("$@")
  command -v apt-get >/dev/null 2>&1 || fail "apt-get is required to install $what"
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: install $what yourself"
    sudo="sudo"
  fi
  apt_log="$(mktemp)"  # global: the EXIT trap reads it after this function returned
  trap 'rm -f "$apt_log"' EXIT
  local lock=(-o DPkg::Lock::Timeout=300)
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install "${lock[@]}" -y -qq "${packages[@]}" >"$apt_log" 2>&1; then
    $sudo apt-get "${lock[@]}" update -qq >>"$apt_log" 2>&1 || true
    $sudo apt-get install "${lock[@]}" -y -qq "${packages[@]}" >>"$apt_log" 2>&1 \
      || { cat "$apt_log" >&2; fail "apt-get install ${packages[*]} failed"; }
  fi
  rm -f "$apt_log"
}
