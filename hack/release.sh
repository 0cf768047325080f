#!/usr/bin/env bash
# Releases VERSION to REGISTRY, without a Docker engine and without touching
# the working tree:
#   - REGISTRY/ehr-operator:VERSION, an OCI image index of linux/amd64 and
#     linux/arm64 (static binaries cross-compiled here, the same content as
#     `make image`: /ehr-operator, the entrypoint, and /ehr-receiver, what
#     receiver pods run), each image with an SPDX 2.3 SBOM attached as an
#     OCI artifact (its subject is the image), made from /ehr-operator's own
#     module list, which hack/image checks covers /ehr-receiver's;
#   - the chart, packaged from a copy with version X.Y.Z, appVersion VERSION
#     and image.repository REGISTRY/ehr-operator, pushed to
#     oci://REGISTRY/charts/ehr-operator.
#
#   VERSION=v1.2.3 REGISTRY=host:port/path [REGISTRY_CA=ca.pem] hack/release.sh
#
# Credentials: the image push reads the Docker config ($DOCKER_CONFIG, else
# ~/.docker/config.json), helm its registry config ($HELM_REGISTRY_CONFIG,
# or `helm registry login`). REGISTRY_CA: a private CA the registry's
# certificate chains to.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VERSION=${VERSION:?VERSION=vX.Y.Z}
REGISTRY=${REGISTRY:?REGISTRY=host:port/path}
HELM=${HELM:-$ROOT/bin/helm}
REGISTRY=${REGISTRY%/}
[[ "$VERSION" =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] ||
  { echo "VERSION=$VERSION is not a release tag such as v1.2.3" >&2; exit 1; }
[[ "$REGISTRY" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] ||
  { echo "REGISTRY=$REGISTRY is not host[:port][/path]" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
image="$REGISTRY/ehr-operator:$VERSION"
ca_args=()
[ -z "${REGISTRY_CA:-}" ] || ca_args=(--ca-file "$REGISTRY_CA")

# Both architectures and both binaries from the same tree, with the same
# flags; the build cache makes the second release of the same code a link
# step only.
ldflags="-s -w -X github.com/insighthealth/ehr-operator/internal/version.Version=$VERSION"
platforms=()
for arch in amd64 arm64; do
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "$ldflags" \
    -o "$tmp/ehr-operator-linux-$arch" .
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "$ldflags" \
    -o "$tmp/ehr-receiver-linux-$arch" ./cmd/ehr-receiver
  platforms+=(--platform "linux/$arch=$tmp/ehr-operator-linux-$arch"
    --extra-platform "linux/$arch=$tmp/ehr-receiver-linux-$arch")
done
go -C hack build -o "$tmp/image" ./image
"$tmp/image" --push "$image" "${platforms[@]}" "${ca_args[@]}" \
  --path /ehr-operator --extra-path /ehr-receiver --cmd manager --uid 65532 --version "$VERSION" \
  --ca-certs /etc/ssl/certs/ca-certificates.crt

mkdir "$tmp/chart"
cp -r charts/ehr-operator "$tmp/chart/"
chart="$tmp/chart/ehr-operator"
sed -i -E -e "s/^version: .*/version: ${VERSION#v}/" -e "s/^appVersion: .*/appVersion: \"$VERSION\"/" "$chart/Chart.yaml"
# The chart's default image is the one just pushed, so `helm install
# oci://…` needs no --set for it.
grep -q '^  repository: ' "$chart/values.yaml" || { echo "charts/ehr-operator/values.yaml has no image.repository" >&2; exit 1; }
sed -i -E "0,/^  repository: .*/s##  repository: $REGISTRY/ehr-operator#" "$chart/values.yaml"
"$HELM" package "$chart" -d "$tmp" >/dev/null
"$HELM" push "$tmp/ehr-operator-${VERSION#v}.tgz" "oci://$REGISTRY/charts" "${ca_args[@]}" 2>&1
echo "released $VERSION: image $image, chart oci://$REGISTRY/charts/ehr-operator --version ${VERSION#v}"
