#!/usr/bin/env bash
# Puts kube-apiserver, etcd and kubectl for envtest into DEST (architecture.md, "Development and tests").
#
#   hack/setup-envtest.sh VERSION DEST
#
# DEST is setup-envtest's usual store (…/kubebuilder-envtest/k8s/VERSION-linux-amd64),
# so every clone and every later run reuses it. When DEST already has the
# binaries this exits at once. Otherwise it first asks setup-envtest to
# download them (quickly given up where downloads are blocked), then builds
# them from their Go modules with hack/build-k8s-binaries.sh (~9 min once).
set -euo pipefail

SETUP_ENVTEST_VERSION="${SETUP_ENVTEST_VERSION:-v0.25.1}"
SETUP_ENVTEST_TIMEOUT="${SETUP_ENVTEST_TIMEOUT:-120}"

version="${1:?usage: $0 VERSION DEST}"
dest="${2:?usage: $0 VERSION DEST}"
here="$(cd "$(dirname "$0")" && pwd)"
log() { printf '[setup-envtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have_all() { [ -x "$dest/kube-apiserver" ] && [ -x "$dest/etcd" ] && [ -x "$dest/kubectl" ]; }
have_all && exit 0
mkdir -p "$dest"

# kubectl (for `kubectl explain` against envtest): the one on PATH will do.
if [ ! -x "$dest/kubectl" ] && kc="$(command -v kubectl)"; then
  # A symlink, not a copy: some kubectl builds (gcloud's) dispatch to
  # binaries beside their real path.
  ln -sf "$(readlink -f "$kc")" "$dest/kubectl"
  "$dest/kubectl" version --client >/dev/null 2>&1 || rm -f "$dest/kubectl"
fi

if [ ! -x "$dest/kube-apiserver" ] || [ ! -x "$dest/etcd" ]; then
  log "trying setup-envtest $SETUP_ENVTEST_VERSION for Kubernetes $version (gives up after ${SETUP_ENVTEST_TIMEOUT}s)"
  store="$(mktemp -d)"
  trap 'rm -rf "$store"' EXIT
  if dir="$(cd "$store" && GOFLAGS= timeout "$SETUP_ENVTEST_TIMEOUT" go run \
      "sigs.k8s.io/controller-runtime/tools/setup-envtest@$SETUP_ENVTEST_VERSION" \
      use "$version" --bin-dir "$store" -p path 2>"$store/err.log")" && [ -x "$dir/kube-apiserver" ]; then
    for b in kube-apiserver etcd kubectl; do
      if [ -x "$dir/$b" ] && [ ! -x "$dest/$b" ]; then cp "$dir/$b" "$dest/$b.tmp" && mv "$dest/$b.tmp" "$dest/$b"; fi
    done
    log "downloaded with setup-envtest"
  else
    log "setup-envtest could not download ($(grep -v '^exit status' "$store/err.log" 2>/dev/null | tail -n 1 | cut -c1-160)); building from Go modules instead"
  fi
fi

missing=()
for b in kube-apiserver etcd kubectl; do [ -x "$dest/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -gt 0 ]; then
  K8S_VERSION="$version" "$here/build-k8s-binaries.sh" "$dest" "${missing[@]}"
fi
have_all || { echo "error: envtest binaries still missing in $dest" >&2; exit 1; }
log "envtest binaries ready in $dest"
