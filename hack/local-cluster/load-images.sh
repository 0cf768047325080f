#!/usr/bin/env bash
# Imports image tars into the local cluster's containerd (`make cluster-load`),
# where pods with imagePullPolicy: Never find them. The pause image is
# imported too, in case the cluster was started before it was rebuilt.
#
#   load-images.sh TAR...
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=env.sh
. "$HERE/env.sh"
need_root
[ -S "$CONTAINERD_SOCK" ] || die "the local cluster is not up (no $CONTAINERD_SOCK): make cluster-up"
[ $# -gt 0 ] || die "usage: $0 TAR..."
for t in "$@" "$EHR_CACHE/pause.tar"; do
  [ -f "$t" ] || die "$t does not exist: make image"
  ctr_ images import "$t" | sed 's/^/  /' >&2
done
ctr_ images ls -q | grep -v '^sha256:' | sed 's/^/  loaded: /' >&2
