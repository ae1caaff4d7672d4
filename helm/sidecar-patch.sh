#!/bin/sh
# Print the llm-gateway sidecar patch (a strategic-merge patch for the application's Deployment)
# of a sidecar-mode release, offline:
#   helm/sidecar-patch.sh RELEASE [helm template args, e.g. -f values.yaml -n NAMESPACE]
# HELM (default: helm) and PYTHON (default: python3, with PyYAML) name the tools to use.
set -eu
if [ $# -lt 1 ]; then
  echo "usage: $0 RELEASE [helm template args...]" >&2
  exit 2
fi
release=$1
shift
chart="$(cd "$(dirname "$0")" && pwd)/llm-gateway"
rendered=$("${HELM:-helm}" template "$release" "$chart" --show-only templates/sidecar-patch.yaml "$@")
printf '%s\n' "$rendered" | "${PYTHON:-python3}" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
if len(docs) != 1 or "patch.yaml" not in docs[0].get("data", {}):
    sys.exit("sidecar-patch.sh: no sidecar patch rendered (set mode: sidecar)")
sys.stdout.write(docs[0]["data"]["patch.yaml"])
'
