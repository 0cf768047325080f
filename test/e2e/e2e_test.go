//go:build e2e

// Package e2e runs the product end to end on a real single-node cluster
// (hack/local-cluster): Helm installs the operator from the working tree's
// chart and image, an EHRIntegration gets real receiver pods, and real
// signed webhooks land in a real PostgreSQL. Run with `make test-e2e`
// (root; brings the cluster up if it is not, ~20 s once its binaries are
// built).
package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/test/e2e/framework"
)

const (
	operatorNS = "ehr-system"
	ns         = "ehr-e2e" // not "ehr", which `make dev` uses
	name       = "nexus"   // the EHRIntegration, and its spec.ehr
	receiver   = name + "-receiver"
	// The second tenant, exposed by an HTTPRoute on the edge Gateway while
	// nexus is exposed by an Ingress; each has its own hostname.
	nsB       = "ehr-e2e-b"
	nameB     = "cedar"
	receiverB = nameB + "-receiver"
	hostA     = name + ".ehr-e2e.test"
	hostB     = nameB + ".ehr-e2e.test"
)

var (
	env      *framework.Env
	pg       *framework.Postgres
	dbURL    string // the receivers' database, as its owner
	image    string
	opBinary string // bin/ehr-operator, for `ehr-operator send`
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctx := context.Background()
	image, opBinary = os.Getenv("IMG"), os.Getenv("EHR_OPERATOR_BIN")
	tar := os.Getenv("IMAGE_TAR")
	if image == "" || tar == "" {
		fmt.Fprintln(os.Stderr, "e2e: IMG and IMAGE_TAR are not set: run `make test-e2e`, which builds the image first")
		return 1
	}
	start := time.Now()
	var err error
	if env, err = framework.Setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if opBinary == "" {
		opBinary = env.Root + "/bin/ehr-operator"
	}
	keep := os.Getenv("E2E_KEEP_CLUSTER") == "1" || !env.StartedHere
	defer func() {
		if keep {
			fmt.Fprintf(os.Stderr, "e2e: the cluster stays up: export KUBECONFIG=%s; make cluster-down removes it\n", env.Kubeconfig)
			return
		}
		t0 := time.Now()
		if err := env.Teardown(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: teardown:", err)
		}
		fmt.Fprintf(os.Stderr, "e2e: teardown took %s\n", time.Since(t0).Round(time.Second))
	}()
	if err := env.LoadImages(ctx, tar); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if pg, err = env.StartPostgres(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	env.ChartSets = pg.NetworkPolicySets()
	if dbURL, err = pg.CreateDatabase(ctx, "e2e_appointments"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// A previous run's leftovers (a kept cluster) must not leak into this one.
	_, _ = env.Kubectl(ctx, "", "delete", "namespace", ns, nsB, "--ignore-not-found", "--wait=true", "--timeout=120s")
	_, _ = env.Kubectl(ctx, "", "-n", env.EdgeNamespace, "delete", "gateway/"+framework.EdgeGateway, "secret/"+nameB+"-tls", "--ignore-not-found")
	out, err := env.InstallOperator(ctx, operatorNS, image)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err, "\n", out)
		env.Dump(ctx, os.Stderr, operatorNS)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: set-up done in %s\n", time.Since(start).Round(time.Second))
	return m.Run()
}

// TestEndToEnd is one story, in order: each step builds on the previous one,
// so the first failure stops it and dumps the cluster's state.
func TestEndToEnd(t *testing.T) {
	ctx := context.Background()
	s := newStory(t)
	defer func() {
		if t.Failed() {
			env.Dump(ctx, os.Stderr, operatorNS, ns, nsB, env.EdgeNamespace)
		}
	}()
	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"ManagerRunsWithLeaderElection", s.managerRuns},
		{"OnboardTwoReplicas", s.onboard},
		{"SendSpecExample", s.sendSpecExample},
		{"ReceiverMetrics", s.receiverMetrics},
		{"NetworkPolicyFencesReceivers", s.networkPolicy},
		{"OnboardRouteTenant", s.onboardRouteTenant},
		{"SendThroughEdge", s.sendThroughEdge},
		{"EdgeKeepsTenantsApart", s.edgeKeepsTenantsApart},
		{"MissingSecretThenReady", s.missingSecretThenReady},
		{"RotateWebhookSecret", s.rotateSecret},
		{"DeleteReceiverPodDuringStream", s.deletePodDuringStream},
		{"DatabaseOutageUnderLoad", s.databaseOutage},
		{"SuspendAndResume", s.suspendResume},
		{"HelmUpgradeKeepsReceiversServing", s.helmUpgrade},
		{"DeleteRouteTenant", s.deleteRouteTenant},
		{"DeleteCollectsChildren", s.deleteIntegration},
	}
	for _, st := range steps {
		t0 := time.Now()
		ok := t.Run(st.name, st.fn)
		t.Logf("%s: %s", st.name, time.Since(t0).Round(100*time.Millisecond))
		if !ok {
			return
		}
	}
}
