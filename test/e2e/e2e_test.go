//go:build e2e

// Package e2e runs the product end to end on a real single-node cluster
// (hack/local-cluster): the working tree is released (hack/release.sh, what
// `make release` runs) to a private registry with authentication, Helm
// installs the operator from that registry's chart, containerd pulls its
// image with pull secrets, an EHRIntegration gets real receiver pods, and
// real signed webhooks land in a real PostgreSQL. Run with `make test-e2e`
// (root; brings the cluster up if it is not, ~20 s once its binaries are
// built).
package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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
	// The registry's repository path, the pull secret's name and the two
	// releases: the first is installed, the second upgrades it.
	regPath    = "ehr"
	pullSecret = "regcred"
	versionA   = "v0.0.1-e2e.1"
	versionB   = "v0.0.1-e2e.2"
)

var (
	env      *framework.Env
	pg       *framework.Postgres
	dbURL    string // the receivers' database, as its owner
	opBinary string // bin/ehr-operator, for `ehr-operator send`
	reg      *framework.Registry
	relA     *framework.Pushed // installed by TestMain
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctx := context.Background()
	opBinary = os.Getenv("EHR_OPERATOR_BIN")
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
	if err := startRegistryAndRelease(ctx); err != nil {
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
	// The manager's image is pulled with the pull secret of its namespace.
	if _, err := env.Kubectl(ctx, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+operatorNS+"}\n", "apply", "-f", "-"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if _, err := env.Kubectl(ctx, reg.PullSecretYAML(operatorNS, pullSecret), "apply", "-f", "-"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	cmdline, out, err := env.InstallRelease(ctx, reg, regPath, relA, operatorNS, releaseSets()...)
	fmt.Fprintf(os.Stderr, "e2e: $ %s\n%s\n", cmdline, out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		env.Dump(ctx, os.Stderr, operatorNS)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: set-up done in %s\n", time.Since(start).Round(time.Second))
	return m.Run()
}

// startRegistryAndRelease starts the private registry, checks that it
// refuses anonymous requests, and releases versionA to it.
func startRegistryAndRelease(ctx context.Context) error {
	var err error
	t0 := time.Now()
	if reg, err = env.StartRegistry(ctx); err != nil {
		return err
	}
	code, err := reg.AnonymousStatus()
	if err != nil || code != http.StatusUnauthorized {
		return fmt.Errorf("the registry answered an anonymous GET /v2/ with %d (%v), want 401: authentication is off", code, err)
	}
	fmt.Fprintf(os.Stderr, "e2e: registry https://%s up (anonymous GET /v2/: %d) in %s\n", reg.Host, code, time.Since(t0).Round(time.Second))
	t0 = time.Now()
	if relA, err = env.Release(ctx, reg, regPath, versionA); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "e2e: $ make release VERSION=%s REGISTRY=%s/%s (hack/release.sh, %s)\n%s",
		versionA, reg.Host, regPath, time.Since(t0).Round(time.Second), relA.Output)
	return nil
}

// releaseSets are the chart values of every install and upgrade from the
// registry: the pull secret of the manager's image, and the receivers'
// default pull secret.
func releaseSets() []string {
	return []string{"imagePullSecrets[0].name=" + pullSecret, "receivers.podTemplate.imagePullSecrets[0].name=" + pullSecret}
}

// TestReleasedVersionIsNeverReplaced releases versionA again, right after
// TestMain released it. From the same tree it succeeds and leaves the chart
// as it was, not pushed again (helm package stamps times into the .tgz, so
// a second push would move the tag to a new digest). With a chart whose
// NOTES.txt differs it is refused before anything is built or pushed.
// Either way the registry still serves versionA's index and chart as first
// released: what clusters pulled under that version stays what it names.
func TestReleasedVersionIsNeverReplaced(t *testing.T) {
	ctx := context.Background()
	served := func(when string) {
		t.Helper()
		index, err := reg.ManifestDigest(ctx, regPath+"/ehr-operator", versionA)
		if err != nil {
			t.Fatal(err)
		}
		chart, err := reg.ManifestDigest(ctx, regPath+"/charts/ehr-operator", relA.ChartVersion)
		if err != nil {
			t.Fatal(err)
		}
		if index != relA.Index {
			t.Errorf("%s: the registry serves %s as index %s, not the released %s", when, relA.Image, index, relA.Index)
		}
		if chart != relA.ChartDigest {
			t.Errorf("%s: the registry serves chart %s as %s, not the released %s: the chart's tag moved", when, relA.ChartVersion, chart, relA.ChartDigest)
		}
	}
	served("before")

	t0 := time.Now()
	again, err := env.Release(ctx, reg, regPath, versionA)
	t.Logf("$ make release VERSION=%s (again, the same tree; %s)\n%s", versionA, time.Since(t0).Round(time.Second), again.Output)
	if err != nil {
		t.Fatal(err)
	}
	if again.Index != relA.Index || again.ChartDigest != relA.ChartDigest {
		t.Errorf("the same tree released again reports index %s and chart %s, want %s and %s", again.Index, again.ChartDigest, relA.Index, relA.ChartDigest)
	}
	if strings.Contains(again.Output, "Pushed: ") {
		t.Errorf("the same tree released again pushed the chart again (helm push's \"Pushed: \" in its output)")
	}
	served("after releasing the same tree again")

	// The same chart but for one line of NOTES.txt.
	chart := filepath.Join(t.TempDir(), "ehr-operator")
	if err := os.CopyFS(chart, os.DirFS(filepath.Join(env.Root, "charts/ehr-operator"))); err != nil {
		t.Fatal(err)
	}
	notes := filepath.Join(chart, "templates", "NOTES.txt")
	b, err := os.ReadFile(notes)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(notes, append(b, "\nThis line is not in the released chart.\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	other, err := env.Release(ctx, reg, regPath, versionA, "CHART_DIR="+chart)
	t.Logf("$ CHART_DIR=%s make release VERSION=%s (another NOTES.txt; %s)\n%s", chart, versionA, time.Since(t0).Round(time.Second), other.Output)
	switch {
	case err == nil:
		t.Errorf("releasing %s again with another NOTES.txt succeeded, want it refused", versionA)
	case !strings.Contains(other.Output, "already exists with other content: a released version is never replaced"):
		t.Errorf("releasing %s again with another NOTES.txt failed, but not because the chart differs: %v", versionA, err)
	}
	// hack/image prints one or the other as soon as it runs; helm push
	// prints "Pushed: ".
	for _, s := range []string{"pushed index", "already names this index", "Pushed: "} {
		if strings.Contains(other.Output, s) {
			t.Errorf("the refused release went on to push (%q in its output), want it stopped before building anything", s)
		}
	}
	served("after the refused release")
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
