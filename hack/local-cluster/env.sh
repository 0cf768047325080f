# shellcheck shell=bash disable=SC2034 # the settings are used by the scripts that source this file
# Shared settings of the local single-node cluster (sourced by up.sh, down.sh,
# check-clean.sh, load-images.sh). Every address below is routed onto bridges
# this cluster creates and guarded by iptables DROP rules, so no packet for
# them can leave through the host's real interface (README.md beside this file).

K8S_VERSION="${K8S_VERSION:-1.37.2}"
EHR_CACHE="${EHR_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ehr-operator}"
# Built Kubernetes binaries live outside the repository, so a second bring-up
# (and every clone) reuses them.
K8S_BIN="${K8S_BIN:-$EHR_CACHE/k8s-$K8S_VERSION}"
# The Kubernetes binaries built into K8S_BIN by hack/build-k8s-binaries.sh
# (up.sh, or make setup beforehand); kube-apiserver and etcd come from the
# envtest store when it has them.
K8S_BUILT=(kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# kube-router, run only as the NetworkPolicy controller (its firewall), is
# built from its Go module by hack/build-kube-router.sh into the cache.
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
KUBE_ROUTER_BIN="$EHR_CACHE/bin/kube-router-$KUBE_ROUTER_VERSION"
ENVTEST_STORE="${ENVTEST_ASSETS:-$HOME/.local/share/kubebuilder-envtest/k8s/$K8S_VERSION-linux-amd64}"
# Everything a running cluster writes: certificates, kubeconfig, etcd data,
# containerd root/state, kubelet root, logs, PIDs, and the host baseline.
STATE="${EHR_CLUSTER_STATE:-$EHR_CACHE/cluster}"
KUBECONFIG_PATH="$STATE/kubeconfig"

NODE_NAME=ehr-local
NODE_BRIDGE=ehrnode0     # holds the node address only
CNI_BRIDGE=ehrcni0       # made by the CNI bridge plugin; pods' veths attach here
NODE_IP=10.231.0.1
POD_CIDR=10.232.0.0/16
NODE_POD_CIDR=10.232.0.0/24   # the first /24 of POD_CIDR: what the controller-manager gives the only node
POD_GATEWAY=10.232.0.1
SERVICE_CIDR=10.233.0.0/16
API_SERVICE_IP=10.233.0.1
API_PORT=6443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
GUARD_CHAIN=EHR-LOCAL-GUARD

# The throwaway PostgreSQL of `make dev` and the e2e tests (test/e2e/framework):
# run as an unprivileged user, so its directory is outside $STATE (under
# /root, which that user cannot enter); its PID is kept in $STATE/pids so
# down.sh stops it with the cluster.
PG_DIR="${EHR_CLUSTER_PG_DIR:-/var/tmp/ehr-local-cluster-postgres}"

# The edge: Traefik, the cluster's ingress controller (README.md, "The
# edge"), built by hack/build-traefik.sh into the cache; the Gateway API CRDs
# (standard channel) come from the Go module cache. HTTPS (and plain HTTP for
# Gateway listeners that ask for it) is reachable at the node address only.
TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
TRAEFIK_IMAGE="localhost/traefik:$TRAEFIK_VERSION"
# hack/build-traefik.sh builds into TRAEFIK_DIR (without lego's DNS
# providers, hence the name); up.sh packs the image beside the binary.
TRAEFIK_DIR="$EHR_CACHE/traefik-$TRAEFIK_VERSION-nodns"
TRAEFIK_TAR="$TRAEFIK_DIR/traefik-image.tar"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.4.1}"
EDGE_NS=traefik
EDGE_HTTPS_PORT=8443
EDGE_HTTP_PORT=8000
# The e2e tests' private registry (hack/registry, started by test/e2e/framework):
# HTTPS with basic authentication at $NODE_IP:$REGISTRY_PORT only. containerd
# finds its CA in $CONTAINERD_CERTS_D/<host:port>/hosts.toml; pods
# authenticate with pull secrets.
REGISTRY_PORT=5000

CONTAINERD_SOCK="$STATE/containerd/containerd.sock"
CONTAINERD_CERTS_D="$STATE/containerd/certs.d"
PAUSE_IMAGE="localhost/ehr-pause:1"

# Host settings the components change; their values before the first
# bring-up are kept in $STATE/baseline and restored at teardown.
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

# Order matters: teardown stops them in reverse.
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)

log() { printf '[local-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctr_() { ctr --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root: the cluster needs network namespaces, mounts and iptables"; }

# iptables rules of the network guard, for both adding and deleting (-A/-D).
# The guard sits in mangle POSTROUTING (after routing and DNAT, before SNAT,
# which kube-proxy's ACCEPT rules in filter cannot bypass) and in filter
# FORWARD and OUTPUT.
guard_rules() {
  local r
  for r in "-o lo -j RETURN" "-o $NODE_BRIDGE -j RETURN" "-o $CNI_BRIDGE -j RETURN" \
    "-s $POD_CIDR -j DROP" "-d $POD_CIDR -j DROP" "-s $SERVICE_CIDR -j DROP" "-d $SERVICE_CIDR -j DROP" \
    "-s $NODE_IP/32 -j DROP" "-d $NODE_IP/32 -j DROP"; do
    echo "$r"
  done
}
