#!/usr/bin/env bash
# Copies controller-gen's output into the Helm chart, verbatim: the CRDs from
# config/crd/bases and the manager's RBAC rules from config/rbac/role.yaml.
# The chart's templates read these copies with .Files, so the chart never
# carries a hand-edited CRD or rule. Run by `make manifests`; test/chart fails
# when the copies are stale.
set -euo pipefail
cd "$(dirname "$0")/.."

src_crds=config/crd/bases
src_role=config/rbac/role.yaml
dst=charts/ehr-operator/generated

shopt -s nullglob
crds=("$src_crds"/*.yaml)
if [ ${#crds[@]} -eq 0 ] || [ ! -f "$src_role" ]; then
	echo "chart-sync: no CRDs in $src_crds or no $src_role: run controller-gen first (make manifests)" >&2
	exit 1
fi

rm -rf "$dst/crds" "$dst/rbac"
mkdir -p "$dst/crds" "$dst/rbac"
cp "${crds[@]}" "$dst/crds/"
cp "$src_role" "$dst/rbac/role.yaml"
echo "chart-sync: copied ${#crds[@]} CRD(s) and role.yaml into $dst"
