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
	for _, want := range []string{
		"ehr.insighthealth.io",
		"ehr is the EHR's identifier",
		"credentialsSecretRef",
		"timeZone is the IANA time zone",
		"suspend scales the receiver to zero",
		"-required-",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl explain output lacks %q", want)
		}
	}
}
