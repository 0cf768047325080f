#!/usr/bin/env bash
# Builds kube-router (used on the local cluster only for its NetworkPolicy
# firewall) from its Go module, since no release download or image can be
# fetched here. The binary is cached outside the repository, so a second run
# costs nothing.
#
#   hack/build-kube-router.sh [DEST]    (default: the cache's bin/ directory)
#
# Prints the path of the binary on stdout.
set -euo pipefail

KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
CACHE="${EHR_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ehr-operator}"
dest="${1:-$CACHE/bin}"
bin="$dest/kube-router-$KUBE_ROUTER_VERSION"

if [ ! -x "$bin" ]; then
  command -v go >/dev/null || { echo "error: go is not on PATH; install Go 1.26 first" >&2; exit 1; }
  mkdir -p "$dest"
  log() { printf '[build-kube-router %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
  log "building kube-router $KUBE_ROUTER_VERSION (once; it pulls in large modules such as the AWS SDK, so it takes a while cold)"
  start=$SECONDS
  # go install @version builds the module with its own go.mod (it has no
  # replace directives), outside any workspace of ours.
  GOBIN="$dest/.tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
  mv "$dest/.tmp/kube-router" "$bin"; rmdir "$dest/.tmp" 2>/dev/null || true
  log "built kube-router in $((SECONDS - start))s"
fi
echo "$bin"
