// Package chart holds the tests of how ehr-operator is installed and shipped:
// the Helm chart in charts/ehr-operator, the kustomize manifests in config/,
// and the Dockerfile. They run helm (HELM) and kubectl (kustomize), and
// create the rendered manifests on a real envtest API server
// (KUBEBUILDER_ASSETS); `make test` provides all three.
package chart
