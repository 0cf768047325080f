#!/usr/bin/env bash
# Builds the Traefik ingress controller of the local cluster from its Go
# module, for machines where release downloads and registries cannot be
# reached.
#
#   hack/build-traefik.sh            # prints the path of the cached binary
#
# The binary is cached outside the repository (like the Kubernetes binaries of
# hack/build-k8s-binaries.sh), so a second run costs nothing. Traefik's go.mod
# has replace directives, which `go install module@version` refuses, so the
# build runs inside a writable copy of the module's directory.
set -euo pipefail

TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
CACHE="${EHR_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ehr-operator}"
out="$CACHE/traefik-$TRAEFIK_VERSION/traefik"

if [ -x "$out" ]; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "error: go is not on PATH; install Go 1.26 first" >&2; exit 1; }
log() { printf '[build-traefik %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

src=$(cd / && go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$src" ] || { log "go mod download of github.com/traefik/traefik/v3@$TRAEFIK_VERSION failed"; exit 1; }

work="$CACHE/traefik-scratch-$TRAEFIK_VERSION"
rm -rf "$work"; mkdir -p "$work" "$(dirname "$out")"
cp -r "$src/." "$work/"
chmod -R u+w "$work"

log "building traefik $TRAEFIK_VERSION (about 9 minutes cold on 2 cores)"
start=$SECONDS
(
  cd "$work"
  export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
  go build -trimpath \
    -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
    -o "$out.tmp" ./cmd/traefik
) &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 15
  kill -0 "$pid" 2>/dev/null && log "still building traefik ($((SECONDS - start))s)"
done
wait "$pid"
mv "$out.tmp" "$out"
rm -rf "$work"
log "built traefik $TRAEFIK_VERSION in $((SECONDS - start))s"
echo "$out"
