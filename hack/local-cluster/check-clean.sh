#!/usr/bin/env bash
# Checks that the host is as it was before the local cluster's first
# bring-up: no process of ours, and the same iptables rules (IPv4 and IPv6),
# ipsets, links, routes, mounts, kubepods cgroups, host paths and sysctls as the
# baseline up.sh recorded. Prints each difference and exits 1 if any.
#
#   check-clean.sh              compare the host with the baseline
#   check-clean.sh --snapshot D write a snapshot into D (used by up.sh)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"
BASELINE="$EHR_CACHE/host-baseline"

# Paths outside the state directory that containerd, CNI or the kubelet may
# create on their own.
HOST_PATHS=(/run/containerd /run/netns /var/run/netns /var/lib/cni /var/log/pods /var/log/containers
  /etc/cni /opt/cni /var/lib/kubelet /etc/kubernetes /usr/libexec/kubernetes /run/runc /var/lib/containerd
  /opt/containerd /run/flannel)

snapshot() {
  local d=$1
  mkdir -p "$d"
  # Counters and comments are not state.
  iptables-save 2>/dev/null | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//' >"$d/iptables-v4"
  ip6tables-save 2>/dev/null | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//' >"$d/iptables-v6"
  { ipset list -n 2>/dev/null || true; } | sort >"$d/ipsets"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort >"$d/links"
  { ip -4 route show table all; ip -6 route show table all | sed 's/ expires [0-9]*sec//'; } | sort >"$d/routes"
  ip -4 -o addr show | awk '{print $2, $4}' | sort >"$d/addresses"
  awk '{print $5}' /proc/self/mountinfo | sort >"$d/mounts"
  find /sys/fs/cgroup -maxdepth 2 -type d -name 'kubepods*' 2>/dev/null | sort >"$d/cgroups"
  local p
  for p in "${HOST_PATHS[@]}"; do
    if [ -e "$p" ]; then echo "+ $p"; else echo "- $p"; fi
  done >"$d/paths"
  local s
  for s in "${SYSCTLS[@]}"; do
    printf '%s=%s\n' "$s" "$(sysctl -n "$s" 2>/dev/null || echo absent)"
  done >"$d/sysctl-now"
}

our_processes() {
  local f p cmd
  for f in /proc/[0-9]*/cmdline; do
    p=${f#/proc/}; p=${p%/cmdline}
    cmd=$({ tr '\0' ' ' <"$f"; } 2>/dev/null) || continue
    case "$cmd" in
      *"$STATE"* | "$K8S_BIN"/* | *"$PG_DIR"*) echo "  pid $p: ${cmd:0:160}" ;;
    esac
  done
}

if [ "${1:-}" = --snapshot ]; then
  snapshot "$2"
  exit 0
fi

[ -d "$BASELINE" ] || { echo "no baseline in $BASELINE: the cluster was never brought up here"; exit 1; }
now=$(mktemp -d)
trap 'rm -rf "$now"' EXIT
snapshot "$now"
dirty=0
report() { echo "DIRTY: $1"; dirty=1; }

procs=$(our_processes)
[ -z "$procs" ] || report "processes still running:
$procs"
[ -e "$STATE" ] && report "state directory $STATE still exists"
# The e2e registry runs from $STATE (so our_processes sees it); nothing may
# listen on its port either.
listen=$(ss -Htln "sport = :$REGISTRY_PORT" 2>/dev/null)
[ -z "$listen" ] || report "something still listens on port $REGISTRY_PORT (the e2e registry's):
$listen"
[ -e "$PG_DIR" ] && report "PostgreSQL directory $PG_DIR still exists"
for f in iptables-v4 iptables-v6 ipsets links routes addresses mounts cgroups paths; do
  if ! out=$(diff -u "$BASELINE/$f" "$now/$f"); then
    report "$f differs from the baseline (- before the cluster, + now):
$(echo "$out" | tail -n +3)"
  fi
done
if ! out=$(diff -u "$BASELINE/sysctl" "$now/sysctl-now"); then
  report "sysctls differ:
$(echo "$out" | tail -n +3)"
fi

if [ $dirty = 0 ]; then
  echo "clean: no process, mount, cgroup, link, address, route, iptables rule (v4/v6), ipset, host path or sysctl of the local cluster remains"
fi
exit $dirty
