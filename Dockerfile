# syntax=docker/dockerfile:1
# The one image of ehr-operator (architecture.md, "Parts"): /ehr-operator, the manager by default
# and the migrate, deliveries and send subcommands; the receiver runs /ehr-receiver, the same code
# without the manager's dependencies.
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
# Static binaries (CGO_ENABLED=0), the same flags as `make build`.
RUN export CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} && \
    ldflags="-s -w -X github.com/insighthealth/ehr-operator/internal/version.Version=${VERSION}" && \
    go build -trimpath -ldflags "$ldflags" -o /out/ehr-operator . && \
    go build -trimpath -ldflags "$ldflags" -o /out/ehr-receiver ./cmd/ehr-receiver

# distroless static: no shell, no package manager; CA certificates and
# /etc/passwd with the nonroot user (65532) are included.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/ehr-operator /ehr-operator
COPY --from=builder /out/ehr-receiver /ehr-receiver
USER 65532:65532
ENTRYPOINT ["/ehr-operator"]
CMD ["manager"]
