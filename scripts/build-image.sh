#!/usr/bin/env bash
# `make image`: build ./Dockerfile into a local image without a daemon or a registry, then prove it.
#
# Debian's buildah (vfs storage, chroot isolation) builds it. The base image is made here, since no
# image registry may be reachable: a minimal Debian root filesystem (debootstrap, from the mirror
# this machine's apt uses) with python3, python3-venv and ca-certificates, committed once as
# $BASE_IMAGE and reused. pip inside the build uses this machine's pip settings (index, CA bundle)
# through build secrets. The proof runs the built image's `extproc` and `envoy` as uid 10001.
#
# Needs root (debootstrap, buildah's chroot). Environment:
#   IMAGE            name of the built image (default localhost/llm-gateway:<version>)
#   BASE_IMAGE       use this base instead of the debootstrapped one (it must exist locally)
#   DEBIAN_SUITE     suite of the debootstrapped base (default bookworm: Python 3.11)
#   DEBIAN_MIRROR    mirror for debootstrap (default: the first Debian URI in /etc/apt/sources*)
#   IMAGE_ARCHIVE    also write the image there as a docker-archive (for `docker load`)
# The image checks' shell code runs inside the image, so it is single-quoted on purpose.
# shellcheck disable=SC2016
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fail() { echo "build-image.sh: $*" >&2; exit 1; }
step() { printf '\n== %s (%ss so far)\n' "$*" "$SECONDS"; }

[[ "$(id -u)" == 0 ]] || fail "run as root (debootstrap and buildah's chroot isolation need it)"

version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
image="${IMAGE:-localhost/llm-gateway:$version}"
suite="${DEBIAN_SUITE:-bookworm}"
base="${BASE_IMAGE:-localhost/llm-gateway-base:$suite}"

# vfs: no overlay mounts needed; chroot: no user namespaces or OCI runtime needed.
bh() { buildah --storage-driver vfs "$@"; }
export BUILDAH_ISOLATION=chroot

step "tools"
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get to install them"
  echo "installing ${missing[*]} with apt"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >/dev/null || fail "'apt-get install ${missing[*]}' failed"
fi
bh --version

# The mirror apt uses here: the first URI of deb822 .sources files, else of one-line .list files,
# skipping the security archive (debootstrap wants the main one).
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] && awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] && sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f"
  done
} 2>/dev/null

if ! bh inspect --type image "$base" >/dev/null 2>&1; then
  [[ -z "${BASE_IMAGE:-}" ]] || fail "BASE_IMAGE=$base is not in buildah's local storage"
  step "base image $base: debootstrap $suite"
  mirror="${DEBIAN_MIRROR:-$(debian_mirror | grep -v -- '-security' | head -n 1 || true)}"
  [[ -n "$mirror" ]] || fail "no Debian mirror in /etc/apt/sources*; set DEBIAN_MIRROR"
  rootfs="$(mktemp -d /var/tmp/llm-gateway-base.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; fail "debootstrap failed (log: $rootfs.log)"; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  ctr="$(bh from scratch)"
  mnt="$(bh mount "$ctr")"
  tar -C "$rootfs" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
  bh umount "$ctr" >/dev/null
  bh config --cmd '["/bin/sh"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.description=debootstrap --variant=minbase $suite" "$ctr"
  bh commit --quiet --rm "$ctr" "$base" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
else
  step "base image $base: already built"
fi

# pip's effective settings here, as a pip.conf for the build: the index (and extra indexes) it
# reaches over the network and its CA bundle. Local paths (file:// indexes, find-links,
# constraints) do not exist inside the build and are left out. Printed nowhere.
secrets="$(mktemp -d)"
trap 'rm -rf "$secrets"' EXIT
pip_python="python3"
[[ -x .venv/bin/python ]] && pip_python=".venv/bin/python"
"$pip_python" -m pip config list 2>/dev/null | SECRETS="$secrets" python3 -c '
import os, re, shutil, sys

settings = {}
for line in sys.stdin:
    m = re.match(r"^(global|install|:env:)\.([a-z-]+)=(.*)$", line.strip())
    if not m:
        continue
    scope, key, value = m.groups()
    value = value.strip().strip("\x27\"")
    if scope == ":env:" or key not in settings:  # the environment wins, as in pip
        settings[key] = value
conf = ["[global]"]
for key in ("index-url", "extra-index-url", "trusted-host", "default-timeout", "timeout", "retries"):
    if key not in settings:
        continue
    words = settings[key].split()
    if key.endswith("index-url"):
        words = [w for w in words if w.startswith(("http://", "https://"))]
    if words:
        conf.append(f"{key} = {chr(32).join(words)}")
cert = settings.get("cert") or os.environ.get("PIP_CERT", "")
if cert and os.path.isfile(cert):
    shutil.copyfile(cert, os.path.join(os.environ["SECRETS"], "pip_cert"))
with open(os.path.join(os.environ["SECRETS"], "pip_conf"), "w") as f:
    f.write("\n".join(conf) + "\n")
'
touch "$secrets/pip_cert"

step "build $image from Dockerfile (base $base)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
[[ -z "$(git status --porcelain 2>/dev/null)" ]] || revision="$revision-dirty"
source_url="$(git remote get-url origin 2>/dev/null || true)"
previous="$(bh inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)"
bh build --isolation chroot --pull=never \
  --build-arg "BASE_IMAGE=$base" \
  --build-arg "VERSION=$version" \
  --build-arg "VCS_REVISION=$revision" \
  --build-arg "VCS_SOURCE=$source_url" \
  --secret "id=pip_conf,src=$secrets/pip_conf" \
  --secret "id=pip_cert,src=$secrets/pip_cert" \
  --tag "$image" --file Dockerfile .
# vfs keeps whole copies: drop the image this build replaced, unless something else still uses it.
current="$(bh inspect --type image --format '{{.FromImageID}}' "$image")"
if [[ -n "$previous" && "$previous" != "$current" ]]; then
  bh rmi "$previous" >/dev/null 2>&1 || true
fi

step "prove $image"
ctr="$(bh from --pull=never "$image")"
trap 'bh rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$secrets"' EXIT
as_user() { bh run --isolation chroot --user 10001:10001 "$ctr" -- "$@"; }
check() { echo "-- $1"; shift; "$@" || fail "image check failed: $*"; }

user="$(bh inspect --type image --format '{{.OCIv1.Config.User}}' "$image")"
[[ "$user" == "10001:10001" ]] || fail "the image's USER is '$user', not 10001:10001"
echo "-- USER $user"
label="$(bh inspect --type image --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}' "$image")"
[[ "$label" == "$version" ]] || fail "the image's version label is '$label', not $version"
echo "-- version label $label"
check "uid and gid are 10001" as_user sh -c '[ "$(id -u):$(id -g)" = 10001:10001 ]'
check "extproc --help" as_user extproc --help
bh copy "$ctr" examples/gateway.yaml /tmp/gateway.yaml >/dev/null
check "extproc check-config" as_user extproc check-config --skip-credentials /tmp/gateway.yaml
check "envoy --version" as_user envoy --version
# The chart's Envoy container runs `sh -c 'extproc render-envoy ... && exec envoy ...'`.
check "render-envoy, then envoy --mode validate" as_user sh -c \
  'extproc render-envoy --config /tmp/gateway.yaml --static -o /tmp/envoy.yaml \
   && exec envoy --mode validate -c /tmp/envoy.yaml --log-level warn'
check "opentelemetry-proto's own files (ScopeSpans)" as_user python -c \
  'from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans'
check "CA bundle at /etc/ssl/certs/ca-certificates.crt" as_user python -c \
  'import ssl; ssl.create_default_context(cafile="/etc/ssl/certs/ca-certificates.crt")'
check "the venv readable and not writable by uid 10001" as_user sh -c \
  '[ -z "$(find /opt/venv ! -readable -print -quit)" ] && [ -z "$(find /opt/venv -writable -print -quit)" ]'
check "bytecode compiled at build time" as_user sh -c \
  '[ -n "$(find /opt/venv -name "*.pyc" -print -quit)" ]'
check "no compiler or build tool" as_user sh -c \
  'for t in gcc cc c++ g++ clang make ld as cpp; do
     if command -v "$t"; then echo "found $t" >&2; exit 1; fi
   done'
check "no build secret left in the image" as_user sh -c \
  '[ ! -e /run/secrets/pip_conf ] && [ ! -e /run/secrets/pip_cert ] && [ ! -d /src ]'

if [[ -n "${IMAGE_ARCHIVE:-}" ]]; then
  step "write $IMAGE_ARCHIVE"
  bh push --quiet "$image" "docker-archive:$IMAGE_ARCHIVE:$image"
fi

step "done: $image"
bh images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$image"
