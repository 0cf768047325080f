#!/usr/bin/env bash
# Tears the local cluster down (`make cluster-down`) and leaves the host as
# up.sh found it: no process, mount, cgroup, interface, route, iptables rule
# or sysctl change of ours remains. Safe to run on a cluster that died
# half-way, or when nothing is up. hack/local-cluster/check-clean.sh verifies
# the result.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"
need_root
T0=$SECONDS
step() { log "[$((SECONDS - T0))s] $*"; }
BASELINE="$EHR_CACHE/host-baseline"

pid_of() { [ -f "$STATE/pids/$1.pid" ] && cat "$STATE/pids/$1.pid"; }

# stop_pids PID...: TERM, up to GRACE (default 10) seconds, then KILL.
stop_pids() {
  local p live=()
  for p in "$@"; do kill -TERM "$p" 2>/dev/null && live+=("$p"); done
  local deadline=$((SECONDS + ${GRACE:-10}))
  while [ ${#live[@]} -gt 0 ] && [ $SECONDS -lt $deadline ]; do
    local still=()
    for p in "${live[@]}"; do kill -0 "$p" 2>/dev/null && still+=("$p"); done
    live=("${still[@]}")
    [ ${#live[@]} -gt 0 ] && sleep 0.2
  done
  for p in "${live[@]}"; do kill -KILL "$p" 2>/dev/null; done
  return 0
}

stop() {
  local c p pids=()
  for c in "$@"; do
    p=$(pid_of "$c") || continue
    # Only a process that still runs the binary we started under this PID.
    if kill -0 "$p" 2>/dev/null && grep -q "$c" "/proc/$p/cmdline" 2>/dev/null; then
      pids+=("$p")
    fi
    rm -f "$STATE/pids/$c.pid"
  done
  [ ${#pids[@]} -eq 0 ] || stop_pids "${pids[@]}"
}

# Processes of ours that have no PID file: containerd's shims (they outlive
# containerd by design) and whatever runs in the pods' cgroups.
leftover_pids() {
  local f p
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}; p=${p%/cmdline}
    { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "-address $CONTAINERD_SOCK" && echo "$p"
  done
  for f in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$f" ] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  return 0
}

delete_workloads() {
  alive() { p=$(pid_of "$1") && kill -0 "$p" 2>/dev/null; }
  alive kube-apiserver && alive kubelet && [ -f "$KUBECONFIG_PATH" ] || return 0
  step "deleting workloads while the kubelet still runs"
  # Nothing may recreate pods while they go.
  stop kube-controller-manager kube-scheduler
  kubectl_ delete pods --all -A --grace-period=3 --wait=false --request-timeout=10s >/dev/null 2>&1
  local deadline=$((SECONDS + 40))
  while [ $SECONDS -lt $deadline ]; do
    if [ -z "$(kubectl_ get pods -A -o name --request-timeout=5s 2>/dev/null)" ] &&
      ! ctr_ tasks ls -q 2>/dev/null | grep -q .; then
      return 0
    fi
    sleep 0.5
  done
  step "pods still present after 40s; stopping them forcefully"
}

kill_tasks() {
  [ -S "$CONTAINERD_SOCK" ] || return 0
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1
  done
  sleep 0.5
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks rm -f "$id" >/dev/null 2>&1; done
  return 0
}

# Mount points (octal escapes undone), deepest first.
our_mounts() {
  awk '{print $5}' /proc/self/mountinfo | while read -r m; do
    m=$(printf '%b' "$m")
    case "$m" in "$STATE"/* | /run/netns/cni-* | /var/run/netns/cni-*) echo "$m" ;; esac
  done | sort -r -u
}

unmount_all() {
  local m
  for _ in 1 2 3; do
    while read -r m; do
      [ -n "$m" ] && { umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
    done < <(our_mounts)
  done
  rm -f /run/netns/cni-* 2>/dev/null
  [ -z "$(our_mounts)" ] || log "warning: still mounted: $(our_mounts | tr '\n' ' ')"
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/unified/kubepods; do
    [ -d "$d" ] || continue
    grep -qx "$d" "$BASELINE/cgroups" 2>/dev/null && continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$d" ] && log "warning: could not remove cgroup $d"
  done
  return 0
}

# iptables: our guard, then every KUBE-*/CNI-* chain that was not there
# before the cluster (kube-proxy --cleanup removes most; the kubelet's
# canaries and hints it leaves).
iptables_cleanup() {
  local t hook
  for hook in "mangle POSTROUTING" "filter FORWARD" "filter OUTPUT"; do
    # shellcheck disable=SC2086 # "table chain"
    set -- $hook
    while iptables -t "$1" -D "$2" -j "$GUARD_CHAIN" 2>/dev/null; do :; done
  done
  for t in mangle filter; do
    iptables -t "$t" -F "$GUARD_CHAIN" 2>/dev/null && iptables -t "$t" -X "$GUARD_CHAIN" 2>/dev/null
  done
  [ -x "$K8S_BIN/kube-proxy" ] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1
  local v cmd save base chains line
  for v in 4 6; do
    if [ $v = 4 ]; then cmd=iptables save=iptables-save; else cmd=ip6tables save=ip6tables-save; fi
    for t in raw mangle nat filter; do
      base="$BASELINE/iptables-v$v"
      chains=$($save -t "$t" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p' | while read -r c; do
        grep -q "^:$c " "$base" 2>/dev/null || echo "$c"
      done)
      [ -n "$chains" ] || continue
      local re
      re=$(echo "$chains" | paste -sd'|')
      $save -t "$t" | grep -E -- "^-A .* -j ($re)( |$)" | while read -r line; do
        eval "$cmd -t $t -D ${line#-A }" 2>/dev/null
      done
      for c in $chains; do $cmd -t "$t" -F "$c" 2>/dev/null; done
      for c in $chains; do $cmd -t "$t" -X "$c" 2>/dev/null; done
    done
  done
  # iptables-nft creates a table on first use; one that did not exist before
  # and is now empty (builtin chains, no rules) is removed again.
  if iptables --version 2>/dev/null | grep -q nf_tables && command -v nft >/dev/null; then
    local fam
    for v in 4 6; do
      if [ $v = 4 ]; then save=iptables-save fam=ip; else save=ip6tables-save fam=ip6; fi
      for t in raw mangle nat filter; do
        grep -qx "\*$t" "$BASELINE/iptables-v$v" 2>/dev/null && continue
        nft list table "$fam" "$t" >/dev/null 2>&1 || continue
        if ! $save -t "$t" 2>/dev/null | grep -q '^-A' &&
          ! $save -t "$t" 2>/dev/null | grep '^:' | grep -qv ' ACCEPT '; then
          nft delete table "$fam" "$t"
        fi
      done
    done
  fi
  return 0
}

# kube-router's ipsets (its iptables chains are KUBE-*, gone above): every
# set that was not there before the cluster, once no rule refers to it.
ipset_cleanup() {
  command -v ipset >/dev/null || return 0
  local s
  for s in $(ipset list -n 2>/dev/null); do
    grep -qx -- "$s" "$BASELINE/ipsets" 2>/dev/null && continue
    ipset destroy "$s" 2>/dev/null || log "warning: could not destroy ipset $s"
  done
  return 0
}

network_down() {
  local l
  for l in "$CNI_BRIDGE" "$NODE_BRIDGE"; do ip link del "$l" 2>/dev/null; done
  # Routes go with the bridges; these only matter if a bridge was missing.
  ip route del "$SERVICE_CIDR" 2>/dev/null
  ip route del "$POD_CIDR" 2>/dev/null
  # veths of pods whose namespaces were torn down without CNI DEL vanish with
  # the namespace; a half-made one may remain.
  for l in $(ip -o link show type veth 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    ip -d link show "$l" 2>/dev/null | grep -q "master $CNI_BRIDGE" && ip link del "$l" 2>/dev/null
  done
  return 0
}

restore_host() {
  local kv
  if [ -f "$BASELINE/sysctl" ]; then
    while IFS= read -r kv; do
      [ "${kv#*=}" = absent ] || sysctl -qw "$kv" 2>/dev/null
    done <"$BASELINE/sysctl"
  fi
  # Paths outside $STATE that containerd, CNI and the kubelet create
  # whatever they are told; removed only if absent before the first run.
  local p
  if [ -f "$BASELINE/paths" ]; then
    while read -r p; do
      case "$p" in "- "*) p=${p#- }; rm -rf "$p" ;; esac
    done <"$BASELINE/paths"
  fi
}

main() {
  if [ ! -e "$STATE" ]; then
    log "nothing to tear down"
    return 0
  fi
  delete_workloads
  step "stopping kubelet, kube-proxy and kube-router"
  stop kubelet kube-proxy kube-router kube-controller-manager kube-scheduler
  step "stopping containers"
  kill_tasks
  step "stopping containerd, kube-apiserver, etcd, PostgreSQL and the e2e registry"
  # kube-apiserver drains its watches for a minute on TERM; nothing of
  # theirs is kept, so a short grace is enough.
  GRACE=2 stop containerd kube-apiserver etcd postgres registry
  rm -rf "$PG_DIR"
  local left
  left=$(leftover_pids | sort -u)
  if [ -n "$left" ]; then
    step "stopping leftover shim and container processes: $(echo "$left" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    stop_pids $left
  fi
  step "unmounting"
  unmount_all
  remove_cgroups
  step "removing network, iptables rules and host changes"
  iptables_cleanup
  ipset_cleanup
  network_down
  restore_host
  rm -rf "$STATE"
  step "down"
}

main "$@"
