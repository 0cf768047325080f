// Package gatewayapi installs the Gateway API's CRDs on an envtest API
// server, for tests: those of the sigs.k8s.io/gateway-api module this
// project builds with, from the module cache.
package gatewayapi

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// InstallCRDs installs the module's standard-channel CRDs.
func InstallCRDs(cfg *rest.Config) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return nil, fmt.Errorf("cannot locate sigs.k8s.io/gateway-api in the module cache (run `go mod download`): %v", err)
	}
	crds, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{
		Paths: []string{filepath.Join(dir, "config", "crd", "standard")}, ErrorIfPathMissing: true})
	if err != nil {
		return nil, fmt.Errorf("while installing the Gateway API CRDs: %w", err)
	}
	return crds, nil
}
