# syntax=docker/dockerfile:1
# The one image of ehr-operator (architecture.md, "Parts"): the manager by default, and the
# receiver, migrate and send subcommands from the same binary.
# Build with `make docker-build` (passes VERSION).

FROM golang:1.26 AS builder
ARG VERSION=dev
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
# Modules first, so source edits do not invalidate the download layer; only
# the product's (the tools' are in hack/go.mod, which is not copied).
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binary (CGO_ENABLED=0), the same flags as `make build`.
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -trimpath \
      -ldflags "-s -w -X github.com/insighthealth/ehr-operator/internal/version.Version=${VERSION}" \
      -o /out/ehr-operator .

# distroless static: no shell, no package manager; CA certificates and
# /etc/passwd with the nonroot user (65532) are included.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/ehr-operator /ehr-operator
USER 65532:65532
ENTRYPOINT ["/ehr-operator"]
CMD ["manager"]
