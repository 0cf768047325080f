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
#
# The copy leaves out lego's DNS-01 providers (ACME certificates by a DNS
# challenge, through a hundred DNS vendors' SDKs): the local cluster has no
# DNS to prove and no ACME server to ask, and they were a third of the
# packages built. The one call to them answers an error instead.
set -euo pipefail

TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
CACHE="${EHR_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ehr-operator}"
# TRAEFIK_DIR in hack/local-cluster/env.sh names the same directory.
out="$CACHE/traefik-$TRAEFIK_VERSION-nodns/traefik"

if [ -x "$out" ]; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "error: go is not on PATH; install Go 1.26 first" >&2; exit 1; }
log() { printf '[build-traefik %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

src=$(cd / && go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
[ -d "$src" ] || { log "go mod download of github.com/traefik/traefik/v3@$TRAEFIK_VERSION failed"; exit 1; }

work="$CACHE/traefik-scratch-$TRAEFIK_VERSION"
rm -rf "$work"; mkdir -p "$work" "$(dirname "$out")"
cp -r "$src/." "$work/"
chmod -R u+w "$work"

# Leave lego's DNS providers out (above); fail if this version's code differs.
acme="$work/pkg/provider/acme/provider.go"
import='	"github.com/go-acme/lego/v4/providers/dns"'
call='provider, err = dns.NewDNSChallengeProviderByName(p.DNSChallenge.Provider)'
stub='provider, err = nil, fmt.Errorf("DNS challenge provider %q: this Traefik is built without DNS providers", p.DNSChallenge.Provider)'
if [ "$(grep -cxF "$import" "$acme")" != 1 ] || [ "$(grep -cF "$call" "$acme")" != 1 ]; then
  log "$acme does not import and call lego's DNS providers as expected; update the patch in $0 for $TRAEFIK_VERSION"
  exit 1
fi
grep -vxF "$import" "$acme" | sed "s|$call|$stub|" >"$acme.new"
mv "$acme.new" "$acme"
grep -qF "$stub" "$acme" || { log "patching $acme failed"; exit 1; }

log "building traefik $TRAEFIK_VERSION without DNS providers (about 6 minutes cold on 2 cores)"
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
