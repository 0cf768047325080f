package controllers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// TestKubectlExplain checks that the API's doc comments reach users: it
// runs `kubectl explain` (the one make setup-envtest put beside
// kube-apiserver) against the envtest API server.
func TestKubectlExplain(t *testing.T) {
	startSuite(t)
	kubectl := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("no kubectl in KUBEBUILDER_ASSETS (%v): run `make setup-envtest`", err)
	}
	user, err := suite.env.AddUser(envtest.User{Name: "explain", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"--kubeconfig", kubeconfig, "explain", "ehrintegration.spec"}
	out, err := exec.CommandContext(c, kubectl, args...).CombinedOutput()
	t.Logf("%s %s\n%s", kubectl, strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("kubectl explain: %v", err)
	}
	checkOutput(t, out, "ehr.insighthealth.io",
		"ehr is the EHR's identifier",
		"credentialsSecretRef",
		"timeZone is the IANA time zone",
		"suspend scales the receiver to zero",
		"-required-")

	// The short name and the printer columns, as the platform team sees them.
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns), integration(ns, "nexus", "nexus"))
	waitCondition(t, ns, "nexus", "False", "DeploymentUnavailable")
	args = []string{"--kubeconfig", kubeconfig, "get", "ehri", "-n", ns}
	out, err = exec.CommandContext(c, kubectl, args...).CombinedOutput()
	t.Logf("%s %s\n%s", kubectl, strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("kubectl get: %v", err)
	}
	checkOutput(t, out, "NAME", "EHR", "READY", "REPLICAS", "ENDPOINT", "AGE", "nexus",
		"http://nexus-receiver."+ns+".svc:8080/v2/webhooks/nexus/sync-appointments")
}

func checkOutput(t *testing.T, out []byte, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl output lacks %q", want)
		}
	}
}
