#!/usr/bin/env bash
# Builds Kubernetes and etcd binaries from their Go modules, for machines where
# the release downloads (setup-envtest, kind images) cannot be reached.
#
#   hack/build-k8s-binaries.sh DEST COMPONENT...
#
# COMPONENT is one of: kube-apiserver kube-controller-manager kube-scheduler
# kubelet kube-proxy kubectl etcd. Binaries already in DEST are kept, so the
# script is idempotent and a second run costs nothing. The scratch modules
# live in a cache directory outside the repository; Go's own build and module
# caches make a rebuild after a partial failure quick.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
CACHE="${EHR_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ehr-operator}"

dest="${1:?usage: $0 DEST COMPONENT...}"; shift
[ $# -gt 0 ] || { echo "usage: $0 DEST COMPONENT..." >&2; exit 2; }
mkdir -p "$dest"

missing=()
for c in "$@"; do [ -x "$dest/$c" ] || missing+=("$c"); done
[ ${#missing[@]} -gt 0 ] || exit 0

command -v go >/dev/null || { echo "error: go is not on PATH; install Go 1.26 first" >&2; exit 1; }
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED=0

log() { printf '[build-k8s %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Prints a dot every 15 seconds while a long build runs, so a person (or CI)
# sees that it is alive.
with_progress() {
  local what="$1"; shift
  local start=$SECONDS
  "$@" & local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null && log "still building $what ($((SECONDS - start))s)"
  done
  wait "$pid"
  log "built $what in $((SECONDS - start))s"
}

k8s_module() {
  local dir="$CACHE/k8s-scratch-v$K8S_VERSION"
  if [ ! -f "$dir/.ready" ]; then
    log "preparing scratch module for k8s.io/kubernetes v$K8S_VERSION in $dir"
    rm -rf "$dir"; mkdir -p "$dir"
    local gomod
    gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    {
      echo "module ehr-operator.local/k8s-scratch"
      echo
      echo "go 1.26.0"
      echo
      echo "require k8s.io/kubernetes v$K8S_VERSION"
      echo
      echo "replace ("
      # Every staging module k8s.io/kubernetes replaces with a local path is
      # published as k8s.io/<name> v0.<minor>.<patch>.
      sed -n '/^replace (/,/^)/p' "$gomod" | awk -v v="v0.${K8S_VERSION#1.}" \
        '$2 == "=>" && $3 ~ /^\.\/staging/ { printf "\t%s => %s %s\n", $1, $1, v }'
      echo ")"
    } > "$dir/go.mod"
    printf 'package scratch\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver/app"\n' > "$dir/tools.go"
    (cd "$dir" && go mod tidy >/dev/null) || { log "go mod tidy failed in $dir"; exit 1; }
    touch "$dir/.ready"
  fi
  echo "$dir"
}

ldflags_k8s() {
  local minor="${K8S_VERSION#1.}"; minor="${minor%%.*}"
  local p=k8s.io/component-base/version
  echo "-s -w -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean \
-X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
}

for c in "${missing[@]}"; do
  case "$c" in
    etcd)
      dir="$CACHE/etcd-scratch-$ETCD_VERSION"
      if [ ! -f "$dir/.ready" ]; then
        rm -rf "$dir"; mkdir -p "$dir"
        printf 'module ehr-operator.local/etcd-scratch\n\ngo 1.26.0\n' > "$dir/go.mod"
        printf 'package scratch\n\nimport _ "go.etcd.io/etcd/server/v3/etcdmain"\n' > "$dir/tools.go"
        (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 && go mod tidy >/dev/null)
        touch "$dir/.ready"
      fi
      log "building etcd $ETCD_VERSION (under a minute cold)"
      (cd "$dir" && with_progress etcd go build -trimpath -ldflags "-s -w" -o "$dest/etcd.tmp" go.etcd.io/etcd/server/v3)
      mv "$dest/etcd.tmp" "$dest/etcd"
      ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl)
      dir=$(k8s_module)
      log "building $c v$K8S_VERSION (kube-apiserver takes about 9 minutes cold on 2 cores)"
      (cd "$dir" && with_progress "$c" go build -trimpath -ldflags "$(ldflags_k8s)" -o "$dest/$c.tmp" "k8s.io/kubernetes/cmd/$c")
      mv "$dest/$c.tmp" "$dest/$c"
      ;;
    *) echo "unknown component $c" >&2; exit 2 ;;
  esac
done
log "binaries ready in $dest"
