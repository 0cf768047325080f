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
# A released version is never replaced. The chart is packaged first and
# compared with the registry's X.Y.Z, if there is one, before anything is
# built: other content stops the release before it pushes anything; the
# same content (a re-run of the same commit) is not pushed again, since
# `helm package` stamps times into the .tgz and a new push would move the
# tag to a new digest. The image's tag is checked the same way by
# hack/image (refuseMovingTag) before it pushes.
#
#   VERSION=v1.2.3 REGISTRY=host:port/path [REGISTRY_CA=ca.pem] hack/release.sh
#
# CHART_DIR: the chart to release (default charts/ehr-operator; the
# end-to-end tests release a modified copy to see it refused).
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
CHART_DIR=${CHART_DIR:-charts/ehr-operator}
REGISTRY=${REGISTRY%/}
[[ "$VERSION" =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] ||
  { echo "VERSION=$VERSION is not a release tag such as v1.2.3" >&2; exit 1; }
[[ "$REGISTRY" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$ ]] ||
  { echo "REGISTRY=$REGISTRY is not host[:port][/path]" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
image="$REGISTRY/ehr-operator:$VERSION"
chart_ref="oci://$REGISTRY/charts/ehr-operator"
chart_version=${VERSION#v}
ca_args=()
[ -z "${REGISTRY_CA:-}" ] || ca_args=(--ca-file "$REGISTRY_CA")

# The chart first: whether this version's chart is already released, and
# with what, decides whether the release may go on at all.
mkdir "$tmp/chart"
cp -r "$CHART_DIR/." "$tmp/chart/ehr-operator"
chart="$tmp/chart/ehr-operator"
sed -i -E -e "s/^version: .*/version: $chart_version/" -e "s/^appVersion: .*/appVersion: \"$VERSION\"/" "$chart/Chart.yaml"
# The chart's default image is the one pushed below, so `helm install
# oci://…` needs no --set for it.
grep -q '^  repository: ' "$chart/values.yaml" || { echo "$CHART_DIR/values.yaml has no image.repository" >&2; exit 1; }
sed -i -E "0,/^  repository: .*/s##  repository: $REGISTRY/ehr-operator#" "$chart/values.yaml"
"$HELM" package "$chart" -d "$tmp" >/dev/null
package="$tmp/ehr-operator-$chart_version.tgz"

# The registry's chart of this version, if any, compared by content (the
# files of both packages; their tar headers' times always differ). Only
# "not found" means not released yet: any other failure (credentials,
# TLS, the registry down) stops the release.
chart_released=
mkdir "$tmp/released"
if pulled=$("$HELM" pull "$chart_ref" --version "$chart_version" -d "$tmp/released" "${ca_args[@]}" 2>&1); then
  mkdir "$tmp/released/ours" "$tmp/released/theirs"
  tar -xzmf "$package" -C "$tmp/released/ours"
  tar -xzmf "$tmp/released/ehr-operator-$chart_version.tgz" -C "$tmp/released/theirs"
  if ! changes=$(diff -r "$tmp/released/theirs" "$tmp/released/ours"); then
    {
      echo "$chart_ref:$chart_version already exists with other content: a released version is never replaced; release a new version"
      echo "(diff from the released chart to this one, before anything was built or pushed:)"
      echo "$changes" | sed "s#$tmp/released/theirs#released#g; s#$tmp/released/ours#this#g"
    } >&2
    exit 1
  fi
  chart_released=$(sed -n 's/^Digest: //p' <<<"$pulled")
  [[ "$chart_released" =~ ^sha256:[0-9a-f]{64}$ ]] ||
    { printf 'helm pull of %s:%s reported no digest:\n%s\n' "$chart_ref" "$chart_version" "$pulled" >&2; exit 1; }
elif [[ "$(tail -n 1 <<<"$pulled")" != *" ${chart_ref#oci://}:$chart_version: not found" ]]; then
  printf 'while checking whether %s:%s is already released:\n%s\n' "$chart_ref" "$chart_version" "$pulled" >&2
  exit 1
fi

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

if [ -n "$chart_released" ]; then
  # The same lines as helm push's, for whoever reads the digest from them.
  echo "$chart_ref:$chart_version is already released with this content: not pushing it again"
  echo "Digest: $chart_released"
else
  "$HELM" push "$package" "oci://$REGISTRY/charts" "${ca_args[@]}" 2>&1
fi
echo "released $VERSION: image $image, chart $chart_ref --version $chart_version"
