#!/usr/bin/env bash
# `make verify` (and CI): formatting, go vet, golangci-lint and tidy go.mod
# files in both modules (the product's and hack/'s), and generated files
# (deepcopy, CRDs, RBAC, the chart's copies) current and committed.
# Every check runs; the script fails at the end if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

LOCALBIN="${LOCALBIN:-$PWD/bin}"
GOLANGCI_LINT="${GOLANGCI_LINT:-$LOCALBIN/golangci-lint}"
failed=()
step() { printf '\n==> %s\n' "$*"; }
fail() { failed+=("$1"); printf 'FAIL: %s\n' "$2" >&2; }

step "gofmt"
mapfile -t gofiles < <(git ls-files --cached --others --exclude-standard -- '*.go' | while read -r f; do [ -f "$f" ] && echo "$f"; done)
unformatted="$(gofmt -l "${gofiles[@]}")"
[ -z "$unformatted" ] || fail gofmt "not gofmt-ed (run \`make fmt\`):
$unformatted"

modules=(. hack)
for m in "${modules[@]}"; do
  step "go vet ./... ($m)"
  # -tags e2e: the end-to-end tests are vetted too (make test leaves them out).
  go -C "$m" vet -tags e2e ./... || fail vet "go vet found problems in $m"
done

step "go.mod and go.sum tidy"
for m in "${modules[@]}"; do
  go -C "$m" mod tidy -diff || fail tidy "$m/go.mod or go.sum is not tidy (run \`go -C $m mod tidy\`)"
done

step "golangci-lint ($GOLANGCI_LINT)"
if [ -x "$GOLANGCI_LINT" ]; then
  for m in "${modules[@]}"; do
    (cd "$m" && "$GOLANGCI_LINT" run ./...) || fail lint "golangci-lint found problems in $m"
  done
else
  fail lint "no $GOLANGCI_LINT: run \`make golangci-lint\`"
fi

step "generated files are current"
# Compare against a snapshot rather than git, so a developer whose
# uncommitted API change is correctly regenerated passes too; CI's clean
# checkout makes the two the same.
generated() {
  local p
  for p in config/crd/bases config/rbac/role.yaml charts/ehr-operator/generated; do
    [ -e "$p" ] && echo "$p"
  done
  find . -name 'zz_generated*.go' -not -path './bin/*' -not -path './.git/*' | sed 's|^\./||'
}
snap="$(mktemp -d)"
trap 'rm -rf "$snap"' EXIT
while read -r p; do cp -a --parents "$p" "$snap/"; done < <(generated)
if make -s generate manifests >/dev/null; then
  stale=()
  while read -r p; do
    diff -rq "$snap/$p" "$p" >/dev/null 2>&1 || stale+=("$p")
  done < <(generated)
  [ ${#stale[@]} -eq 0 ] || fail generated "generated files were stale (now regenerated: review and commit them; never edit them by hand): ${stale[*]}"
  untracked="$(git ls-files --others --exclude-standard -- $(generated))"
  [ -z "$untracked" ] || fail generated "generated files not in git (git add them):
$untracked"
else
  fail generated "make generate manifests failed"
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf '\nverify failed: %s\n' "${failed[*]}" >&2
  exit 1
fi
printf '\nverify: all checks passed\n'
