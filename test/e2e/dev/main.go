// Command dev is `make dev`: the end-to-end set-up left running for a
// person. It brings the local cluster up (if needed), loads the image,
// starts PostgreSQL on the node address, installs the operator with Helm,
// onboards EHR "nexus" with two receivers, exposed at the local edge
// (Traefik) by an Ingress with a certificate from a throwaway CA, and prints
// how to look around and ready `ehr-operator send` commands, through the
// edge over HTTPS and straight to the Service. `make cluster-down` removes
// it all.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/insighthealth/ehr-operator/test/e2e/framework"
)

const (
	operatorNS = "ehr-system"
	ns         = "ehr"
	ehr        = "nexus"
	// host is the tenant's hostname at the edge; `send --resolve` takes it
	// there, so no DNS is involved.
	host = ehr + ".ehr.test"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	image, tar := os.Getenv("IMG"), os.Getenv("IMAGE_TAR")
	if image == "" || tar == "" {
		return fmt.Errorf("IMG and IMAGE_TAR are not set: run `make dev`, which builds the image first")
	}
	start := time.Now()
	env, err := framework.Setup(ctx)
	if err != nil {
		return err
	}
	if err := env.LoadImages(ctx, tar); err != nil {
		return err
	}
	pg, err := env.StartPostgres(ctx)
	if err != nil {
		return err
	}
	env.ChartSets = pg.NetworkPolicySets()
	dbURL, err := pg.CreateDatabase(ctx, "appointments")
	if err != nil {
		return err
	}
	step("installing the operator (helm, release " + framework.Release + " in " + operatorNS + ")")
	if out, err := env.InstallOperator(ctx, operatorNS, image); err != nil {
		env.Dump(ctx, os.Stderr, operatorNS)
		return fmt.Errorf("%w\n%s", err, out)
	}
	// The CA's certificate lives in the cluster's state directory, which
	// `make cluster-down` removes.
	ca, err := framework.NewCA("ehr-operator make dev edge CA")
	if err != nil {
		return err
	}
	cert, err := ca.Issue(host)
	if err != nil {
		return err
	}
	caFile := filepath.Join(env.State, "dev-edge-ca.crt")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		return err
	}
	o := framework.Onboarding{Namespace: ns, Name: ehr, DatabaseURL: dbURL, APIKey: randHex(), WebhookSecret: randHex(),
		TimeZone: "America/New_York", Replicas: 2, Edge: &framework.Exposure{Host: host, Cert: cert}}
	step("onboarding EHR " + ehr + " in namespace " + ns)
	if _, err := env.Kubectl(ctx, o.YAML(), "apply", "-f", "-"); err != nil {
		return err
	}
	if _, err := env.Kubectl(ctx, "", "-n", ns, "wait", "ehrintegration/"+ehr, "--for=condition=Ready", "--timeout=180s"); err != nil {
		env.Dump(ctx, os.Stderr, operatorNS, ns)
		return fmt.Errorf("the EHRIntegration did not become Ready: %w", err)
	}
	// A second run on a kept cluster replaced both Secrets (new credentials,
	// a new database password) while Ready was already True from the first:
	// the commands printed below work once every receiver pod runs the new
	// versions (docs/onboarding.md, "Rotate credentials").
	for _, s := range []struct{ secret, field string }{{ehr + "-webhook", "credentials"}, {"appointments-db", "database"}} {
		rv, err := env.Kubectl(ctx, "", "-n", ns, "get", "secret", s.secret, "-o", "jsonpath={.metadata.resourceVersion}")
		if err != nil {
			return err
		}
		if _, err := env.Kubectl(ctx, "", "-n", ns, "wait", "ehrintegration/"+ehr, "--timeout=180s",
			"--for=jsonpath={.status.servedSecretVersions."+s.field+"}="+strings.TrimSpace(rv)); err != nil {
			env.Dump(ctx, os.Stderr, operatorNS, ns)
			return fmt.Errorf("the receivers did not come to serve Secret %s as it is now: %w", s.secret, err)
		}
	}
	url, err := env.ReceiverURL(ctx, ns, ehr)
	if err != nil {
		return err
	}
	edgeURL := env.EdgeURL(host, ehr)
	step("waiting for the edge to route " + host)
	if err := framework.Eventually(ctx, "the edge to route "+host, time.Minute, func(context.Context) error {
		return edgeRoutes(env.EdgeClient(ca.PEM), edgeURL)
	}); err != nil {
		env.Dump(ctx, os.Stderr, ns, env.EdgeNamespace)
		return err
	}
	k := "kubectl"
	fmt.Printf(`
Ready in %s. The cluster, PostgreSQL, the operator and two receivers keep running.

  export KUBECONFIG=%s
  export PATH=%s:$PATH

Look around:
  %[4]s get nodes,pods -A
  %[4]s -n %[5]s get ehrintegrations            # READY, REPLICAS, ENDPOINT
  %[4]s -n %[5]s describe ehrintegration %[6]s  # conditions and events
  %[4]s -n %[7]s logs deploy/%[8]s              # the operator (JSON)
  %[4]s -n %[5]s logs deploy/%[6]s-receiver     # a receiver (JSON, no patient data)

Send the spec's example, signed, as the EHR does: over HTTPS through the edge (Traefik at
%[13]s), to the tenant's hostname (--resolve instead of DNS), trusting the throwaway CA:
  bin/ehr-operator send --url %[14]s \
    --cacert %[15]s --resolve %[16]s \
    --api-key %[10]s --secret %[11]s test/e2e/testdata/spec-example.json
or straight to the receiver Service (its ClusterIP is reachable from this host):
  bin/ehr-operator send --url %[9]s --api-key %[10]s --secret %[11]s test/e2e/testdata/spec-example.json

Read what was stored:
  psql '%[12]s' -c 'select ehr, external_id, status, start_time from appointments'

Tear everything down: make cluster-down
`, time.Since(start).Round(time.Second), env.Kubeconfig, env.KubeBin, k, ns, ehr, operatorNS,
		managerDeployment(ctx, env), url, o.APIKey, o.WebhookSecret, dbURL,
		fmt.Sprintf("%s:%d", env.NodeIP, env.EdgeHTTPSPort), edgeURL, caFile, env.EdgeResolve(host))
	return nil
}

// edgeRoutes is nil once the edge routes url to the receiver: a GET gets the
// receiver's own 405, not the edge's 404.
func edgeRoutes(c *http.Client, url string) error {
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		return fmt.Errorf("GET %s answered %d", url, resp.StatusCode)
	}
	return nil
}

func managerDeployment(ctx context.Context, env *framework.Env) string {
	out, err := env.Kubectl(ctx, "", "-n", operatorNS, "get", "deployments", "-o", "jsonpath={.items[0].metadata.name}")
	if err != nil || strings.TrimSpace(out) == "" {
		return framework.Release
	}
	return strings.TrimSpace(out)
}

func step(s string) { fmt.Fprintf(os.Stderr, "[dev %s] %s\n", time.Now().Format("15:04:05"), s) }

func randHex() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
