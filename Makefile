# ehr-operator — see README.md. `make help` lists the targets.

# Expanded once (:=), so every target of one run uses the same tag even if the
# tree changes while it runs.
ifeq ($(origin VERSION),undefined)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
endif
IMG ?= ehr-operator:$(VERSION)
LDFLAGS := -s -w -X github.com/insighthealth/ehr-operator/internal/version.Version=$(VERSION)

# Kubernetes version of the envtest API server (kube-apiserver + etcd).
ENVTEST_K8S_VERSION ?= 1.37.2
# setup-envtest's usual store, so every clone and every later run reuses it.
ENVTEST_ASSETS ?= $(HOME)/.local/share/kubebuilder-envtest/k8s/$(ENVTEST_K8S_VERSION)-linux-amd64

# The development tools (bench, load, plot, image, devrun, chart-docs) are the
# module in hack/ (hack/go.mod), so their dependencies stay out of go.mod and
# the image; both modules are built, vetted, linted and tested.
HACK_GO := go -C hack

# Every go command make runs (tests, vet, the builds tests make, the
# binaries, the release) builds as the image's binaries are built: no cgo,
# paths trimmed. The tests then run the code as it ships (Go's own DNS
# resolver, for one), and a fresh machine compiles the dependencies once,
# not once more for the tests (docs/decisions.md, "One build configuration").
export CGO_ENABLED := 0
export GOFLAGS := $(strip $(filter-out -trimpath,$(shell go env GOFLAGS)) -trimpath)

# Tools are pinned and installed into ./bin with `go install`.
LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
HELM_VERSION ?= v3.22.0
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint
HELM ?= $(LOCALBIN)/helm
# The Kubernetes version helm assumes without a cluster (helm template, lint), as
# helm's own release build sets it (else v1.20, below the chart's kubeVersion).
HELM_K8S_LDFLAGS := $(foreach p,pkg/chartutil pkg/lint/rules,-X helm.sh/helm/v3/$(p).k8sVersionMajor=1 -X helm.sh/helm/v3/$(p).k8sVersionMinor=$(word 2,$(subst ., ,$(ENVTEST_K8S_VERSION))))

FUZZTIME ?= 20s

# promtool (Prometheus' rule tester) for the alert rules' unit tests, built
# once from its Go module and cached outside the repository.
PROMTOOL_VERSION ?= v0.316.0
# The directory names the build (rules only: hack/build-promtool.sh), so a
# machine with an earlier, full build makes this one.
PROMTOOL ?= $(HOME)/.cache/ehr-operator/promtool-$(PROMTOOL_VERSION)-rules/promtool

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: setup
setup: ## Install what development, tests and verify need (PostgreSQL via apt, tools in ./bin, envtest binaries, promtool, the local cluster's binaries and Traefik).
	hack/setup.sh

.PHONY: postgres
postgres: ## Install what the tests need from apt when it is missing: the PostgreSQL server binaries, PgBouncer, a C compiler (the race detector).
	hack/setup.sh postgres

.PHONY: manifests
manifests: controller-gen ## Generate the CRD and RBAC manifests into config/ (and the chart's copy of the CRD).
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd webhook paths="./..." output:crd:artifacts:config=config/crd/bases
	@if [ -d charts/ehr-operator ]; then hack/chart-sync.sh; fi

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run gofmt on the code.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	go vet ./...
	$(HACK_GO) vet ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...
	cd hack && $(GOLANGCI_LINT) run ./...

.PHONY: verify
verify: golangci-lint controller-gen ## Check formatting, vet, lint and that generated files are current.
	hack/verify.sh

.PHONY: test
test: postgres helm setup-envtest promtool ## Run all tests (real PostgreSQL, real API server); installs what they need on first use.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" HELM="$(HELM)" PROMTOOL="$(PROMTOOL)" go test $$(go list ./... | grep -v /test/faults) -count=1 -timeout 30m
	$(HACK_GO) test ./... -count=1
	@# The fault tests measure latency under load: alone, not beside the other packages.
	go test ./test/faults/ -count=1 -timeout 15m
	@# The receiver's packages once more under the race detector: their goroutines share the
	@# batcher's groups, the held rows, the pool and the in-flight budget. It needs cgo.
	CGO_ENABLED=1 go test -race ./receiver/... -count=1 -timeout 20m

.PHONY: test-faults
test-faults: postgres ## Only the fault tests under load (outages, start without PostgreSQL, memory, floods, SIGTERM, overlapping senders); `make test` runs them too.
	go test ./test/faults/ -count=1 -v -timeout 10m

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 20s).
	hack/fuzz.sh $(FUZZTIME)

.PHONY: run
run: postgres build ## Run bin/ehr-receiver (what receiver pods run) for EHR nexus on a throwaway PostgreSQL and print a ready `send` command.
	$(HACK_GO) build -o $(LOCALBIN)/devrun ./devrun
	$(LOCALBIN)/devrun -binary $(LOCALBIN)/ehr-receiver

##@ Performance

.PHONY: bench
bench: ## Benchmarks and the receiver-vs-limit tables, durable and fast PostgreSQL (prints figures; writes BENCH_OUT).
	hack/bench.sh

.PHONY: load
load: ## Sustained load against a real receiver; prints figures over time.
	hack/load.sh

##@ Build

.PHONY: build
build: ## Build bin/ehr-operator (the operator and its tools) and bin/ehr-receiver (what receiver pods run).
	go build -ldflags "$(LDFLAGS)" -o $(LOCALBIN)/ehr-operator .
	go build -ldflags "$(LDFLAGS)" -o $(LOCALBIN)/ehr-receiver ./cmd/ehr-receiver

.PHONY: docker-build
docker-build: ## Build the container image with a Docker engine.
	docker build --build-arg VERSION=$(VERSION) -t $(IMG) .

##@ Chart

.PHONY: helm-lint
helm-lint: helm ## Lint the Helm chart (strict) with its default values and with every option on.
	$(HELM) lint --strict charts/ehr-operator
	$(HELM) lint --strict charts/ehr-operator -f test/chart/testdata/all-on.yaml

.PHONY: chart-docs
chart-docs: ## Write the values table of charts/ehr-operator/README.md from the comments in values.yaml.
	$(HACK_GO) run ./chart-docs $(CURDIR)/charts/ehr-operator

.PHONY: chart-version
chart-version: ## Stamp a release VERSION=vX.Y.Z into the chart (version X.Y.Z, appVersion vX.Y.Z) and config/manager's image tag.
	@[[ "$(VERSION)" =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$$ ]] || \
		{ echo "VERSION=$(VERSION) is not a release tag such as v1.2.3" >&2; exit 1; }
	sed -i -E -e 's/^version: .*/version: $(VERSION:v%=%)/' -e 's/^appVersion: .*/appVersion: "$(VERSION)"/' charts/ehr-operator/Chart.yaml
	sed -i -E -e 's/^(    newTag: ).*/\1$(VERSION)/' config/manager/kustomization.yaml

.PHONY: release
release: helm ## Push VERSION=vX.Y.Z to REGISTRY=host:port/path: a linux/amd64+arm64 image index with SBOMs, and the chart (oci://REGISTRY/charts). REGISTRY_CA for a private CA; refuses a dirty tree unless ALLOW_DIRTY=1.
	@[ -n "$(REGISTRY)" ] || { echo "REGISTRY is not set: make release VERSION=vX.Y.Z REGISTRY=host:port/path" >&2; exit 1; }
	@# A release is what a commit says, not what happens to be in the working tree.
	@[ -z "$$(git status --porcelain)" ] || [ "$(ALLOW_DIRTY)" = 1 ] || \
		{ echo "the working tree has uncommitted changes (git status): commit them, or ALLOW_DIRTY=1 for a test release" >&2; exit 1; }
	VERSION=$(VERSION) REGISTRY=$(REGISTRY) HELM=$(HELM) hack/release.sh

##@ Local cluster

IMAGE_TAR ?= $(LOCALBIN)/ehr-operator-image.tar

.PHONY: image
image: build ## Build the image $(IMG) into IMAGE_TAR (and the cluster's pause image) with go-containerregistry; no Docker needed.
	hack/image/build.sh operator $(LOCALBIN)/ehr-operator $(LOCALBIN)/ehr-receiver $(IMG) $(IMAGE_TAR)
	hack/image/build.sh pause

.PHONY: cluster-up
cluster-up: ## Start a real single-node Kubernetes cluster here (root; its binaries are built once, ~12 min); prints the kubeconfig path.
	hack/local-cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Tear the local cluster down and check that nothing of it remains on the host.
	hack/local-cluster/down.sh
	hack/local-cluster/check-clean.sh

.PHONY: cluster-load
cluster-load: image ## Import the image into the local cluster's containerd (pods use imagePullPolicy: Never).
	hack/local-cluster/load-images.sh $(IMAGE_TAR)

.PHONY: test-e2e
test-e2e: build helm ## End-to-end tests on the local cluster (brought up if needed, torn down after unless it was up before or E2E_KEEP_CLUSTER=1); the operator is released to a private registry there and pulled.
	HELM=$(HELM) go test -tags e2e ./test/e2e/ -count=1 -timeout 45m -v

.PHONY: dev
dev: image helm ## Local cluster + PostgreSQL + the operator (Helm) + one EHRIntegration, left running; prints kubectl and send commands.
	IMG=$(IMG) IMAGE_TAR=$(IMAGE_TAR) HELM=$(HELM) go run ./test/e2e/dev

##@ Dependencies

$(LOCALBIN):
	mkdir -p $(LOCALBIN)

.PHONY: controller-gen
controller-gen: $(LOCALBIN) ## Install controller-gen into ./bin.
	@test -x $(CONTROLLER_GEN) && $(CONTROLLER_GEN) --version | grep -q $(CONTROLLER_TOOLS_VERSION) || \
		GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)

.PHONY: golangci-lint
golangci-lint: $(LOCALBIN) ## Install golangci-lint into ./bin.
	@test -x $(GOLANGCI_LINT) && $(GOLANGCI_LINT) version 2>/dev/null | grep -q $(GOLANGCI_LINT_VERSION:v%=%) || \
		GOBIN=$(LOCALBIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

.PHONY: helm
helm: $(LOCALBIN) ## Install helm into ./bin.
	@test -x $(HELM) && $(HELM) version --short 2>/dev/null | grep -q $(HELM_VERSION) || \
		GOBIN=$(LOCALBIN) go install -ldflags "-X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) $(HELM_K8S_LDFLAGS)" helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

.PHONY: promtool
promtool: ## Build promtool into ~/.cache/ehr-operator (once, ~3 min) for the alert rules' tests.
	@test -x $(PROMTOOL) || hack/build-promtool.sh $(PROMTOOL_VERSION) $(PROMTOOL)

.PHONY: setup-envtest
setup-envtest: ## Get kube-apiserver and etcd for envtest (download, or build from Go modules: ~9 min once).
	hack/setup-envtest.sh "$(ENVTEST_K8S_VERSION)" "$(ENVTEST_ASSETS)"
