#!/usr/bin/env bash
# One-time setup of a development machine (and of CI on a fresh one):
# PostgreSQL server binaries, PgBouncer and a C compiler, the pinned tools in ./bin, the envtest
# binaries, promtool, and the local cluster's Kubernetes binaries, kube-router
# and ingress controller (Traefik), all built from their Go modules (about
# half an hour on 2 cores, once). Everything is cached outside the repository
# or in ./bin, so a second run takes seconds.
#
#   hack/setup.sh            everything
#   hack/setup.sh postgres   only what the tests need from apt: the PostgreSQL
#                            server binaries, PgBouncer and a C compiler
set -euo pipefail
cd "$(dirname "$0")/.."

have_initdb() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

# apt_install PACKAGE WHAT HINT: install PACKAGE with apt-get as root, or
# say what is missing and how to get it.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing $2 with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  else
    echo "setup: $2: missing." >&2
    echo "       Install it (Debian/Ubuntu: sudo apt-get install $1)$3." >&2
    exit 1
  fi
}

have_initdb || apt_install postgresql "PostgreSQL server binaries (initdb, pg_ctl)" " or set TEST_DATABASE_URL"
# PgBouncer: test/contract puts receivers behind one (pgtest.NewPgBouncer).
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] ||
  apt_install pgbouncer "PgBouncer (test/contract starts one)" ""
# A C compiler: `make test` runs the receiver's packages under the race
# detector, which needs cgo.
command -v gcc >/dev/null 2>&1 || apt_install gcc "a C compiler (go test -race needs cgo)" ""

[ "${1:-}" = postgres ] && exit 0

# shellcheck source=local-cluster/env.sh
. hack/local-cluster/env.sh

# One build after another: a single Go build keeps both cores busy (two at
# once saved 55 s of 35 min, docs/decisions.md). The project's pinned tools,
# the envtest binaries and promtool first, then the local cluster's.
make --no-print-directory controller-gen helm golangci-lint setup-envtest promtool
# The local cluster's other Kubernetes binaries, from the same scratch module
# (up.sh links kube-apiserver and etcd from the envtest store).
K8S_VERSION="$K8S_VERSION" hack/build-k8s-binaries.sh "$K8S_BIN" "${K8S_BUILT[@]}"
# The local cluster's edge (hack/local-cluster/README.md, "The edge"): Traefik
# and the Gateway API CRDs its up.sh installs; and its NetworkPolicy
# controller, kube-router.
echo "setup: Traefik $TRAEFIK_VERSION at $(TRAEFIK_VERSION="$TRAEFIK_VERSION" hack/build-traefik.sh)"
(cd / && go mod download "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
KUBE_ROUTER_VERSION="$KUBE_ROUTER_VERSION" hack/build-kube-router.sh "$(dirname "$KUBE_ROUTER_BIN")" >/dev/null
echo "setup: done"
