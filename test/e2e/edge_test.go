//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/test/e2e/framework"
)

// successBody is the receiver's exact answer to a stored batch.
const successBody = `{"message":"Appointments synced successfully","success":true,"code":200}`

// onboardRouteTenant makes the platform's edge Gateway (one HTTPS listener
// for the second tenant's hostname, with its certificate) and onboards that
// tenant in its own namespace with spec.gateway: the operator makes an
// HTTPRoute, Traefik accepts it and the tenant is served at its hostname.
func (s *story) onboardRouteTenant(t *testing.T) {
	edgeNS := env.EdgeNamespace
	kubectl(t, framework.TLSSecretYAML(edgeNS, nameB+"-tls", s.certB)+"---\n"+
		env.GatewayYAML(framework.Listener{Name: nameB, Host: hostB, SecretName: nameB + "-tls"}), "apply", "-f", "-")
	wait(t, "the edge Gateway to be Programmed", time.Minute, func(context.Context) error {
		if st := get(t, edgeNS, "gateway", framework.EdgeGateway, `{.status.conditions[?(@.type=="Programmed")].status}`); st != "True" {
			return fmt.Errorf("Programmed=%q", st)
		}
		return nil
	})
	kubectl(t, framework.Onboarding{Namespace: nsB, Name: nameB, DatabaseURL: dbURL, APIKey: s.apiKeyB,
		WebhookSecret: s.secretB, TimeZone: "America/Chicago", Replicas: 1,
		Edge: &framework.Exposure{Host: hostB, Listener: nameB, GatewayNamespace: edgeNS},
		// The pull secret named by the resource itself (spec.podTemplate).
		Extra: reg.PullSecretYAML(nsB, pullSecret), PullSecret: pullSecret}.YAML(), "apply", "-f", "-")
	waitReady(t, nsB, nameB, 1)
	uid := get(t, nsB, "ehrintegration", nameB, "{.metadata.uid}")
	if owner := get(t, nsB, "httproute", receiverB, "{.metadata.ownerReferences[0].uid}"); owner != uid {
		t.Errorf("httproute/%s is owned by %q, want the EHRIntegration %q", receiverB, owner, uid)
	}
	wait(t, "Traefik to accept the HTTPRoute", time.Minute, func(context.Context) error {
		st := get(t, nsB, "httproute", receiverB, `{.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
		ctrl := get(t, nsB, "httproute", receiverB, `{.status.parents[0].controllerName}`)
		if st != "True" || ctrl != "traefik.io/gateway-controller" {
			return fmt.Errorf("Accepted=%q by %q", st, ctrl)
		}
		if c := get(t, nsB, "ehrintegration", nameB, `{.status.conditions[?(@.type=="RouteAccepted")].status}`); c != "True" {
			return fmt.Errorf("the EHRIntegration's RouteAccepted=%q", c)
		}
		return nil
	})
	endpoint := get(t, nsB, "ehrintegration", nameB, "{.status.endpoint}")
	if want := "https://" + hostB + "/v2/webhooks/" + nameB + "/sync-appointments"; endpoint != want {
		t.Errorf("status.endpoint = %q, want %q", endpoint, want)
	}
	// The Ingress tenant went through the real controller too.
	if ip := get(t, ns, "ingress", receiver, "{.status.loadBalancer.ingress[0].ip}"); ip != env.NodeIP {
		t.Errorf("the Ingress's status shows address %q, want the edge's %s (Traefik has not taken it)", ip, env.NodeIP)
	}
}

// sendThroughEdge runs the real `ehr-operator send` over HTTPS through
// Traefik to each tenant, at its hostname (--resolve) trusting only the
// test's CA (--cacert): the exact success body comes back and the rows are
// in PostgreSQL.
func (s *story) sendThroughEdge(t *testing.T) {
	for _, tn := range []struct{ host, ehr, key, secret string }{
		{hostA, name, s.apiKey, s.oldSecret}, // the secret before RotateWebhookSecret
		{hostB, nameB, s.apiKeyB, s.secretB},
	} {
		waitEdgeRoutes(t, tn.host, tn.ehr, s.ca.PEM)
		id := "edge-" + tn.ehr
		out, err := s.send(t, env.EdgeURL(tn.host, tn.ehr), s.caFile, tn.host, tn.key, tn.secret, id)
		if err != nil {
			t.Fatalf("ehr-operator send to %s through the edge: %v\n%s", tn.host, err, out)
		}
		t.Logf("ehr-operator send --url %s --cacert ca.crt --resolve %s ...\n%s", env.EdgeURL(tn.host, tn.ehr), env.EdgeResolve(tn.host), out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 || !strings.Contains(lines[0], " 200 OK ") || lines[1] != successBody {
			t.Errorf("send to %s printed\n%s\nwant a 200 OK line and then exactly %s", tn.host, out, successBody)
		}
		if n := s.count(t, `SELECT count(*) FROM appointments WHERE ehr = $1 AND external_id = $2`, tn.ehr, id); n != 1 {
			t.Errorf("appointment %s of %s: %d rows, want 1", id, tn.ehr, n)
		}
		if n := s.count(t, `SELECT count(*) FROM patients WHERE ehr = $1 AND external_id = $2`, tn.ehr, "pat-"+id); n != 1 {
			t.Errorf("patient of %s of %s: %d rows, want 1", id, tn.ehr, n)
		}
	}
}

// edgeKeepsTenantsApart: one tenant's hostname does not route another
// tenant's path (the edge's 404, nothing stored), and a client that trusts
// a CA which did not sign the tenant's certificate refuses the connection.
func (s *story) edgeKeepsTenantsApart(t *testing.T) {
	for _, c := range []struct{ host, ehr, key, secret string }{
		{hostA, nameB, s.apiKeyB, s.secretB}, // A's hostname, B's path
		{hostB, name, s.apiKey, s.oldSecret}, // B's hostname, A's path
	} {
		id := "cross-" + c.host + "-" + c.ehr
		out, err := s.send(t, env.EdgeURL(c.host, c.ehr), s.caFile, c.host, c.key, c.secret, id)
		if err == nil || !strings.Contains(out, " 404 ") || !strings.Contains(out, "404 page not found") {
			t.Errorf("send to %s with the path of %s: %v, want the edge's 404\n%s", c.host, c.ehr, err, out)
		}
		if n := s.count(t, `SELECT count(*) FROM appointments WHERE external_id = $1`, id); n != 0 {
			t.Errorf("the cross-tenant delivery %s was stored (%d rows)", id, n)
		}
	}
	for _, host := range []string{hostA, hostB} {
		ehr := map[string]string{hostA: name, hostB: nameB}[host]
		id := "wrong-ca-" + ehr
		out, err := s.send(t, env.EdgeURL(host, ehr), s.otherCAFile, host, s.apiKey, s.oldSecret, id)
		if err == nil || !strings.Contains(out+err.Error(), "certificate signed by unknown authority") {
			t.Errorf("send to %s trusting another CA: %v, want the certificate refused\n%s", host, err, out)
		}
		if n := s.count(t, `SELECT count(*) FROM appointments WHERE external_id = $1`, id); n != 0 {
			t.Errorf("a delivery the client refused to send was stored (%d rows)", n)
		}
	}
}

// deleteRouteTenant deletes the HTTPRoute tenant's EHRIntegration: its
// HTTPRoute goes with it, and the edge (whose Gateway still holds the
// hostname's certificate) answers 404 for that hostname.
func (s *story) deleteRouteTenant(t *testing.T) {
	kubectl(t, "", "-n", nsB, "delete", "ehrintegration", nameB, "--wait=true", "--timeout=60s")
	wait(t, "the HTTPRoute to be garbage-collected", 2*time.Minute, func(ctx context.Context) error {
		out, err := env.Kubectl(ctx, "", "-n", nsB, "get", "--ignore-not-found", "-o", "name", "httproute/"+receiverB)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("still there: %s", out)
		}
		return nil
	})
	waitEdge404(t, hostB, nameB, s.ca.PEM)
	out, err := s.send(t, env.EdgeURL(hostB, nameB), s.caFile, hostB, s.apiKeyB, s.secretB, "after-route-deleted")
	if err == nil || !strings.Contains(out, " 404 ") {
		t.Errorf("send to %s after its route was deleted: %v, want the edge's 404\n%s", hostB, err, out)
	}
}

// send runs `ehr-operator send` through the edge with a one-appointment
// batch of id, trusting caFile, and returns its combined output.
func (s *story) send(t *testing.T, url, caFile, host, key, secret, id string) (string, error) {
	t.Helper()
	body := s.writeFile(t, id+".json", payload(id))
	cmd := exec.Command(opBinary, "send", "--url", url, "--cacert", caFile, "--resolve", env.EdgeResolve(host),
		"--api-key", key, "--secret", secret, "--timeout", "20s", body)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// waitEdgeRoutes waits until the edge routes host's webhook path to the
// receiver: a GET gets the receiver's own 405 (JSON), not the edge's 404.
func waitEdgeRoutes(t *testing.T, host, ehr string, caPEM []byte) {
	t.Helper()
	c := env.EdgeClient(caPEM)
	wait(t, "the edge to route "+host, time.Minute, func(context.Context) error {
		ans, err := edgeGet(c, env.EdgeURL(host, ehr))
		if err != nil {
			return err
		}
		if ans.code != http.StatusMethodNotAllowed || !strings.HasPrefix(ans.contentType, "application/json") {
			return fmt.Errorf("GET answered %d (%s)", ans.code, ans.contentType)
		}
		return nil
	})
}

// waitEdge404 waits until the edge itself answers 404 for host's webhook
// path (its plain-text "404 page not found", not a receiver's JSON). A nil
// caPEM skips certificate verification.
func waitEdge404(t *testing.T, host, ehr string, caPEM []byte) {
	t.Helper()
	c := env.EdgeClient(caPEM)
	wait(t, "the edge to answer 404 for "+host, time.Minute, func(context.Context) error {
		ans, err := edgeGet(c, env.EdgeURL(host, ehr))
		if err != nil {
			return err
		}
		if ans.code != http.StatusNotFound || strings.TrimSpace(ans.body) != "404 page not found" {
			return fmt.Errorf("GET answered %d %q", ans.code, ans.body)
		}
		return nil
	})
}

// waitEdgeStatus waits until the edge answers code for host's webhook path.
func waitEdgeStatus(t *testing.T, host, ehr string, caPEM []byte, code int) {
	t.Helper()
	c := env.EdgeClient(caPEM)
	wait(t, fmt.Sprintf("the edge to answer %d for %s", code, host), time.Minute, func(context.Context) error {
		ans, err := edgeGet(c, env.EdgeURL(host, ehr))
		if err != nil {
			return err
		}
		if ans.code != code {
			return fmt.Errorf("GET answered %d %q", ans.code, ans.body)
		}
		return nil
	})
}

type answer struct {
	code              int
	contentType, body string
}

// edgeGet GETs url on a fresh connection, so that no kept-alive connection
// hides a change of route or certificate.
func edgeGet(c *http.Client, url string) (answer, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return answer{}, err
	}
	req.Close = true
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil && !errors.Is(err, io.EOF) {
		return answer{}, err
	}
	return answer{resp.StatusCode, resp.Header.Get("Content-Type"), string(b)}, nil
}
