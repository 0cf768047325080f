#!/usr/bin/env bash
# Builds the images the local cluster runs, as docker-archive tars, with
# go-containerregistry (hack/image/main.go); no Docker engine is needed.
#
#   build.sh operator BINARY RECEIVER TAG OUT
#                                      the project image from static bin/ehr-operator (/ehr-operator,
#                                      the entrypoint) and bin/ehr-receiver (/ehr-receiver, what
#                                      receiver pods run)
#   build.sh traefik BINARY TAG OUT    the local cluster's ingress controller from a static traefik
#   build.sh pause [OUT]               the pod sandbox (pause) image, tagged localhost/ehr-pause:1,
#                                      by default into the local cluster's cache (hack/local-cluster/env.sh)
#   build.sh probe OUT                 the e2e tests' network prober (hack/image/probe), tagged localhost/ehr-probe:1
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# hack/image is in the hack module (hack/go.mod); it runs from here, so
# relative paths mean the same as for this script.
go -C hack build -o "$tmp/image" ./image

case "${1:-}" in
  operator)
    bin=${2:?binary} receiver=${3:?receiver} tag=${4:?tag} out=${5:?out}
    for b in "$bin" "$receiver"; do
      file "$b" 2>/dev/null | grep -q 'statically linked' ||
        { echo "error: $b is not a static binary; build it with CGO_ENABLED=0 (make build)" >&2; exit 1; }
    done
    "$tmp/image" --binary "$bin" --path /ehr-operator --cmd manager --uid 65532 \
      --extra "$receiver" --extra-path /ehr-receiver \
      --version "${tag##*:}" --tag "$tag" --out "$out" \
      --ca-certs /etc/ssl/certs/ca-certificates.crt
    ;;
  traefik)
    bin=${2:?binary} tag=${3:?tag} out=${4:?out}
    mkdir -p "$(dirname "$out")"
    "$tmp/image" --binary "$bin" --path /traefik --uid 65532 \
      --version "${tag##*:}" --tag "$tag" --out "$out" --source https://github.com/traefik/traefik
    ;;
  pause)
    out=${2:-${EHR_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ehr-operator}/pause.tar}
    CGO_ENABLED=0 go -C hack build -trimpath -ldflags "-s -w" -o "$tmp/pause" ./image/pause
    mkdir -p "$(dirname "$out")"
    "$tmp/image" --binary "$tmp/pause" --path /pause --uid 65535 --version 1 \
      --tag localhost/ehr-pause:1 --out "$out"
    ;;
  probe)
    out=${2:?out}
    CGO_ENABLED=0 go -C hack build -trimpath -ldflags "-s -w" -o "$tmp/probe" ./image/probe
    "$tmp/image" --binary "$tmp/probe" --path /probe --uid 65532 --version 1 \
      --tag localhost/ehr-probe:1 --out "$out"
    ;;
  *) echo "usage: $0 operator BINARY RECEIVER TAG OUT | traefik BINARY TAG OUT | pause OUT | probe OUT" >&2; exit 2 ;;
esac
echo "wrote $out" >&2
