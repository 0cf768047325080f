#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster on this machine
# (`make cluster-up`): etcd, containerd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kube-router
# (NetworkPolicies), from binaries built from their Go modules (cached
# outside the repository), with a bridge CNI network that cannot reach
# beyond this machine, and Traefik as its ingress controller (Ingress and
# Gateway API) at the node address.
#
# Idempotent: a healthy cluster is left as it is; the remains of a run that
# died half-way are torn down first. `hack/local-cluster/down.sh` removes
# everything again. See README.md beside this file and docs/operations.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"
need_root
T0=$SECONDS
step() { log "[$((SECONDS - T0))s] $*"; }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every half second.
wait_for() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${limit}s waiting for $what; last lines of the logs:"
      tail -n 15 "$STATE"/logs/*.log >&2 || true
      die "cluster did not come up; state in $STATE, tear down with hack/local-cluster/down.sh"
    fi
    sleep 0.5
  done
}

# start NAME COMMAND...: runs COMMAND in its own session (so a Ctrl-C on the
# caller does not reach it), output in $STATE/logs/NAME.log, PID recorded.
start() {
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name.pid"
}

alive() { [ -f "$STATE/pids/$1.pid" ] && kill -0 "$(cat "$STATE/pids/$1.pid")" 2>/dev/null; }

healthy() {
  local c
  for c in "${COMPONENTS[@]}"; do alive "$c" || return 1; done
  kubectl_ get --raw /readyz >/dev/null 2>&1 &&
    [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

print_access() {
  cat >&2 <<EOF

Local cluster ready (Kubernetes v$K8S_VERSION, node $NODE_NAME at $NODE_IP).
Edge: Traefik $TRAEFIK_VERSION (IngressClass and GatewayClass traefik) at https://$NODE_IP:$EDGE_HTTPS_PORT
  export KUBECONFIG=$KUBECONFIG_PATH
  export PATH=$K8S_BIN:\$PATH     # kubectl v$K8S_VERSION
  kubectl get nodes,pods -A
Logs of the components: $STATE/logs/   Tear down: make cluster-down
EOF
  echo "$KUBECONFIG_PATH"
}

check_tools() {
  local t missing=()
  for t in containerd runc ctr iptables iptables-save ip6tables-save ip openssl conntrack curl setsid nft ipset; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  for t in bridge host-local loopback; do [ -x "/usr/lib/cni/$t" ] || missing+=("/usr/lib/cni/$t"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local pkgs=(containerd runc containernetworking-plugins iptables nftables conntrack socat openssl curl ipset)
  # A fresh machine (CI's included) gets them from Debian; containerd is not
  # started as a service (there is no systemd): up.sh runs its own.
  if command -v apt-get >/dev/null; then
    step "installing ${missing[*]} with apt-get (${pkgs[*]})"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
  else
    die "missing ${missing[*]}: install ${pkgs[*]}"
  fi
  command -v go >/dev/null || die "go is not on PATH: install Go 1.26"
}

# Kubernetes binaries: kube-apiserver and etcd are shared with the envtest
# store when it has them (hard links, no second build); the rest are built
# from the Go modules once by hack/build-k8s-binaries.sh.
binaries() {
  mkdir -p "$K8S_BIN"
  local c missing=()
  for c in kube-apiserver etcd; do
    if [ ! -x "$K8S_BIN/$c" ] && [ -x "$ENVTEST_STORE/$c" ]; then
      ln "$ENVTEST_STORE/$c" "$K8S_BIN/$c" 2>/dev/null || cp "$ENVTEST_STORE/$c" "$K8S_BIN/$c"
    fi
  done
  for c in etcd kube-apiserver "${K8S_BUILT[@]}"; do
    [ -x "$K8S_BIN/$c" ] || missing+=("$c")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    step "building ${missing[*]} into $K8S_BIN (once; about 12 minutes on 2 cores from empty caches)"
    K8S_VERSION="$K8S_VERSION" "$ROOT/hack/build-k8s-binaries.sh" "$K8S_BIN" "${missing[@]}"
  fi
  if [ ! -x "$KUBE_ROUTER_BIN" ]; then
    step "building kube-router $KUBE_ROUTER_VERSION (once; it pulls in large modules such as the AWS SDK, so it takes a while cold)"
    KUBE_ROUTER_VERSION="$KUBE_ROUTER_VERSION" "$ROOT/hack/build-kube-router.sh" "$(dirname "$KUBE_ROUTER_BIN")" >/dev/null
  fi
  if [ ! -f "$TRAEFIK_TAR" ]; then
    local traefik
    traefik=$(TRAEFIK_VERSION="$TRAEFIK_VERSION" "$ROOT/hack/build-traefik.sh")
    step "packing Traefik $TRAEFIK_VERSION into image $TRAEFIK_IMAGE"
    "$ROOT/hack/image/build.sh" traefik "$traefik" "$TRAEFIK_IMAGE" "$TRAEFIK_TAR"
  fi
  if [ ! -f "$EHR_CACHE/pause.tar" ]; then
    step "building the pause image"
    "$ROOT/hack/image/build.sh" pause "$EHR_CACHE/pause.tar"
  fi
}

# The host's state before the cluster touched it, for teardown (sysctls to
# restore) and for check-clean.sh (everything else to compare against).
record_baseline() {
  local b="$EHR_CACHE/host-baseline" s
  rm -rf "$b"; mkdir -p "$b"
  for s in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$s" "$(sysctl -n "$s" 2>/dev/null || echo absent)"
  done >"$b/sysctl"
  "$HERE/check-clean.sh" --snapshot "$b"
}

network_up() {
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
  ip addr replace "$NODE_IP/32" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # The service range and the whole pod range lead onto our bridges (the
  # CNI bridge's own /24 is more specific), with the node address as source,
  # so nothing for them follows the default route out of the machine.
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  ip route replace "$POD_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  local t hook rule
  for t in mangle filter; do
    iptables -t "$t" -N "$GUARD_CHAIN" 2>/dev/null || iptables -t "$t" -F "$GUARD_CHAIN"
    while read -r rule; do
      # shellcheck disable=SC2086
      iptables -t "$t" -A "$GUARD_CHAIN" $rule
    done < <(guard_rules)
  done
  for hook in "mangle POSTROUTING" "filter FORWARD" "filter OUTPUT"; do
    # shellcheck disable=SC2086 # "table chain"
    set -- $hook
    iptables -t "$1" -C "$2" -j "$GUARD_CHAIN" 2>/dev/null || iptables -t "$1" -I "$2" 1 -j "$GUARD_CHAIN"
  done
  # Pod → ClusterIP → pod on the same bridge needs forwarding; the guard
  # above keeps it on this machine.
  sysctl -qw net.ipv4.ip_forward=1
}

certs() {
  local p="$STATE/pki"
  mkdir -p "$p"; cd "$p"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=ehr-local-ca" -keyout ca.key -out ca.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  # name CN O EXTENDED-KEY-USAGE [SUBJECT-ALT-NAMES]
  mk() {
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n%s' \
      "$4" "${5:+subjectAltName=$5}" >"$1.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" \
      -subj "/CN=$2${3:+/O=$3}" -out "$1.csr" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  mk apiserver kube-apiserver "" serverAuth \
    "IP:$NODE_IP,IP:127.0.0.1,IP:$API_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  mk apiserver-kubelet-client kube-apiserver-kubelet-client system:masters clientAuth
  mk admin kubernetes-admin system:masters clientAuth
  mk controller-manager system:kube-controller-manager "" clientAuth
  mk scheduler system:kube-scheduler "" clientAuth
  mk kube-proxy system:kube-proxy "" clientAuth
  # kube-router watches pods, namespaces, policies, nodes and services, and
  # writes nothing: an admin of this throwaway cluster under its own name.
  mk kube-router kube-router system:masters clientAuth
  mk kubelet-client "system:node:$NODE_NAME" system:nodes clientAuth
  mk kubelet "$NODE_NAME" "" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
  chmod 600 ./*.key
  cd - >/dev/null
}

# kubeconfig FILE USER: a kubeconfig with embedded credentials of pki/USER.
kubeconfig() {
  local p="$STATE/pki"
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ehr-local
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$p/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$p/$2.crt")
    client-key-data: $(base64 -w0 <"$p/$2.key")
contexts:
- name: ehr-local
  context: {cluster: ehr-local, user: $2}
current-context: ehr-local
EOF
  chmod 600 "$1"
}

configs() {
  local c="$STATE/config"
  mkdir -p "$c" "$STATE/cni/net.d" "$STATE/containerd" "$STATE/pod-logs"
  kubeconfig "$KUBECONFIG_PATH" admin
  kubeconfig "$c/controller-manager.kubeconfig" controller-manager
  kubeconfig "$c/scheduler.kubeconfig" scheduler
  kubeconfig "$c/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$c/kube-router.kubeconfig" kube-router
  kubeconfig "$c/kubelet.kubeconfig" kubelet-client

  cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # No CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  # Registries' CAs (certs.d/<host:port>/hosts.toml, read at each pull);
  # no credentials here: pods bring theirs in pull secrets.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CONTAINERD_CERTS_D"
EOF
  mkdir -p "$CONTAINERD_CERTS_D"

  # Bridge network; pods get routes to the service range and the node
  # address only: no default route, so nothing from a pod can leave.
  cat >"$STATE/cni/net.d/10-ehr-local.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "ehr-local",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}, {"dst": "$NODE_IP/32"}]
      }
    }
  ]
}
EOF

  # Pods get no resolver that could send a query off the machine.
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$c/resolv.conf"

  cat >"$c/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# Images cannot be pulled again here: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
clusterDomain: cluster.local
resolvConf: $c/resolv.conf
podLogsDir: $STATE/pod-logs
volumePluginDir: $STATE/kubelet/volume-plugins
serializeImagePulls: false
maxPods: 60
EOF

  cat >"$c/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
clientConnection: {kubeconfig: $c/kube-proxy.kubeconfig}
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: false}
EOF
}

# The edge: the Gateway API CRDs of the version Traefik speaks, then Traefik
# itself (traefik.yaml), Ready and answering at the node address.
edge_up() {
  local crds
  crds=$(cd / && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$crds/config/crd/standard" ] || die "no Gateway API CRDs: go mod download sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION failed"
  step "installing the Gateway API $GATEWAY_API_VERSION CRDs (standard channel)"
  kubectl_ apply --server-side -f "$crds/config/crd/standard" >/dev/null
  kubectl_ wait --for=condition=Established --timeout=60s -f "$crds/config/crd/standard" >/dev/null
  step "starting Traefik $TRAEFIK_VERSION (namespace $EDGE_NS)"
  ctr_ images import "$TRAEFIK_TAR" >/dev/null
  sed -e "s|@NODE_IP@|$NODE_IP|g" -e "s|@IMAGE@|$TRAEFIK_IMAGE|g" \
    -e "s|@HTTPS_PORT@|$EDGE_HTTPS_PORT|g" -e "s|@HTTP_PORT@|$EDGE_HTTP_PORT|g" "$HERE/traefik.yaml" |
    kubectl_ apply -f - >/dev/null
  wait_for 120 "Traefik to be Ready" kubectl_ -n "$EDGE_NS" rollout status deployment/traefik --timeout=1s
  # Nothing routes /, so the answer is Traefik's own 404 (over its default
  # certificate) once kube-proxy forwards the node address to it.
  wait_for 30 "Traefik at https://$NODE_IP:$EDGE_HTTPS_PORT" \
    bash -c "[ \"\$(curl -sk -m 5 -o /dev/null -w '%{http_code}' https://$NODE_IP:$EDGE_HTTPS_PORT/)\" = 404 ]"
}

main() {
  check_tools
  if healthy; then
    step "already up"
    print_access
    return 0
  fi
  if [ -e "$STATE" ]; then
    step "cleaning up a previous run first"
    "$HERE/down.sh"
    "$HERE/check-clean.sh" >&2 || log "warning: the previous run left the differences above; the new baseline includes them"
  fi
  binaries
  record_baseline
  mkdir -p "$STATE/logs" "$STATE/pids"
  step "network: $NODE_BRIDGE $NODE_IP/32, services $SERVICE_CIDR, pods $POD_CIDR (guarded by iptables chain $GUARD_CHAIN)"
  network_up
  step "certificates and configuration in $STATE"
  certs
  configs

  step "starting etcd"
  start etcd "$K8S_BIN/etcd" --name ehr-local --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "ehr-local=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
  step "starting containerd"
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for 60 etcd curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
  wait_for 60 containerd ctr --address "$CONTAINERD_SOCK" version

  step "starting kube-apiserver"
  local p="$STATE/pki"
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --advertise-address "$NODE_IP" --bind-address "$NODE_IP" --secure-port "$API_PORT" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$p/ca.crt" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" --kubelet-client-key "$p/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$p/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --profiling=false --v=1
  step "importing the pause image"
  ctr_ images import "$EHR_CACHE/pause.tar" >/dev/null
  wait_for 120 kube-apiserver kubectl_ get --raw /readyz

  step "starting kube-controller-manager and kube-scheduler"
  local c="$STATE/config"
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$c/controller-manager.kubeconfig" --authentication-kubeconfig "$c/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$c/controller-manager.kubeconfig" --bind-address 127.0.0.1 \
    --allocate-node-cidrs=true --cluster-cidr "$POD_CIDR" --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SERVICE_CIDR" --cluster-signing-cert-file "$p/ca.crt" \
    --cluster-signing-key-file "$p/ca.key" --root-ca-file "$p/ca.crt" \
    --service-account-private-key-file "$p/sa.key" --use-service-account-credentials=true \
    --leader-elect=false --profiling=false --v=1
  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$c/scheduler.kubeconfig" --authentication-kubeconfig "$c/scheduler.kubeconfig" \
    --authorization-kubeconfig "$c/scheduler.kubeconfig" --bind-address 127.0.0.1 \
    --leader-elect=false --profiling=false --v=1

  step "starting kubelet and kube-proxy"
  start kubelet "$K8S_BIN/kubelet" --config "$c/kubelet.yaml" --kubeconfig "$c/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" --v=1
  start kube-proxy "$K8S_BIN/kube-proxy" --config "$c/kube-proxy.yaml" --v=1

  step "waiting for node $NODE_NAME to be Ready"
  wait_for 120 "node $NODE_NAME" kubectl_ get node "$NODE_NAME"
  # NetworkPolicies are enforced by kube-router's firewall alone: no routing
  # (the CNI bridge does that), no service proxy (kube-proxy does that), no
  # health or metrics listener. It exits if the node is not registered yet.
  step "starting kube-router (NetworkPolicy firewall only)"
  start kube-router "$KUBE_ROUTER_BIN" --run-firewall=true --run-router=false --run-service-proxy=false \
    --kubeconfig "$c/kube-router.kubeconfig" --hostname-override "$NODE_NAME" \
    --service-cluster-ip-range "$SERVICE_CIDR" --enable-cni=false --enable-ipv6=false \
    --health-port=0 --metrics-port=0 --v=1
  wait_for 120 "node $NODE_NAME Ready" kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  # Its first sync puts the jump into KUBE-ROUTER-FORWARD; from then on a
  # NetworkPolicy is enforced.
  wait_for 60 "kube-router's firewall" iptables -S KUBE-ROUTER-FORWARD
  step "waiting for the default ServiceAccount"
  wait_for 60 "ServiceAccount default" kubectl_ -n default get serviceaccount default
  edge_up
  step "up"
  print_access
}

main "$@"
