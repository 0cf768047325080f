package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLinksNoKubernetes keeps the receiver's binary lean: a change that makes
// the shared commands import the Kubernetes client or controller-runtime
// would bring the manager's dependencies (and their memory) back into every
// receiver pod.
func TestLinksNoKubernetes(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	var bad []string
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "k8s.io/") || strings.HasPrefix(p, "sigs.k8s.io/") || strings.Contains(p, "/controllers") {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		t.Errorf("ehr-receiver links %d packages of the manager's: %s", len(bad), strings.Join(bad, " "))
	}
	if !strings.Contains(string(out), "github.com/insighthealth/ehr-operator/receiver\n") {
		t.Errorf("go list -deps does not list the receiver package: the check above would pass vacuously\n%s", out)
	}
}
