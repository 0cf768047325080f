//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/test/e2e/framework"
)

// story holds what the steps share: the credentials the "EHR" signs with,
// the receivers' database, and the edge's throwaway CA (its certificate in
// caFile, for `send --cacert`) with the two tenants' certificates.
type story struct {
	apiKey, oldSecret, newSecret string
	apiKeyB, secretB             string
	db                           *sql.DB
	ca                           *framework.CA
	certA, certB                 framework.Cert
	dir, caFile, otherCAFile     string
}

func newStory(t *testing.T) *story {
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatalf("while opening the receivers' database: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	s := &story{apiKey: randHex(t), oldSecret: randHex(t), newSecret: randHex(t), apiKeyB: randHex(t), secretB: randHex(t),
		db: db, dir: t.TempDir()}
	if s.ca, err = framework.NewCA("ehr-e2e edge CA"); err != nil {
		t.Fatal(err)
	}
	other, err := framework.NewCA("a CA that signed nothing here")
	if err != nil {
		t.Fatal(err)
	}
	if s.certA, err = s.ca.Issue(hostA); err != nil {
		t.Fatal(err)
	}
	if s.certB, err = s.ca.Issue(hostB); err != nil {
		t.Fatal(err)
	}
	s.caFile, s.otherCAFile = s.writeFile(t, "ca.crt", s.ca.PEM), s.writeFile(t, "other-ca.crt", other.PEM)
	return s
}

func (s *story) writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(s.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *story) managerRuns(t *testing.T) {
	dep := strings.TrimPrefix(kubectl(t, "", "-n", operatorNS, "get", "deployments", "-o", "name"), "deployment.apps/")
	dep = strings.TrimSpace(dep)
	if dep == "" || strings.Contains(dep, "\n") {
		t.Fatalf("want one manager Deployment in %s, got %q", operatorNS, dep)
	}
	kubectl(t, "", "-n", operatorNS, "rollout", "status", "deployment/"+dep, "--timeout=120s")
	pods := readyPods(t, operatorNS, selectorOf(t, operatorNS, dep))
	if len(pods) != 1 {
		t.Fatalf("want 1 Ready manager pod, got %v", pods)
	}
	waitLeader(t, pods[0])

	// What an SRE runs after an install: the chart's test hook.
	out, err := env.HelmCmd(context.Background(), "test", framework.Release, "--namespace", operatorNS, "--logs", "--timeout", "3m")
	if err != nil {
		t.Fatalf("helm test: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`Phase:\s+Succeeded`).MatchString(out) {
		t.Errorf("helm test did not succeed:\n%s", out)
	}
	for _, want := range []string{"ok: a valid EHRIntegration is accepted (dry run)", "ok: an invalid EHRIntegration is refused (dry run)"} {
		if !strings.Contains(out, want) {
			t.Errorf("helm test output lacks %q:\n%s", want, out)
		}
	}
}

func (s *story) onboard(t *testing.T) {
	kubectl(t, framework.Onboarding{Namespace: ns, Name: name, DatabaseURL: dbURL, APIKey: s.apiKey,
		WebhookSecret: s.oldSecret, TimeZone: "America/New_York", Replicas: 2,
		Edge: &framework.Exposure{Host: hostA, Cert: s.certA},
		// No spec.podTemplate: the chart's receivers.podTemplate names the pull secret.
		Extra: reg.PullSecretYAML(ns, pullSecret)}.YAML(), "apply", "-f", "-")
	waitIntegrationReady(t, 2)
	endpoint := get(t, ns, "ehrintegration", name, "{.status.endpoint}")
	if want := "https://" + hostA + "/v2/webhooks/" + name + "/sync-appointments"; endpoint != want {
		t.Errorf("status.endpoint = %q, want %q", endpoint, want)
	}
	uid := get(t, ns, "ehrintegration", name, "{.metadata.uid}")
	for _, kind := range []string{"deployment", "service", "serviceaccount", "poddisruptionbudget", "ingress"} {
		if owner := get(t, ns, kind, receiver, "{.metadata.ownerReferences[0].uid}"); owner != uid {
			t.Errorf("%s/%s is owned by %q, want the EHRIntegration %q", kind, receiver, owner, uid)
		}
	}
	if n := len(readyPods(t, ns, selectorOf(t, ns, receiver))); n != 2 {
		t.Errorf("want 2 Ready receiver pods, got %d", n)
	}
}

func (s *story) sendSpecExample(t *testing.T) {
	url := receiverURL(t)
	example, err := filepath.Abs("testdata/spec-example.json")
	if err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 2; round++ { // the second is a redelivery: a no-op
		cmd := exec.Command(opBinary, "send", "--url", url, "--api-key", s.apiKey, "--secret", s.oldSecret, example)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "200") {
			t.Fatalf("ehr-operator send (round %d): %v\n%s", round, err, out)
		}
	}
	var status, statusRaw, startUTC, patient, practitioner, location, department string
	err = s.db.QueryRow(`SELECT status, status_raw, to_char(start_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
	        patient_external_id, practitioner_external_id, coalesce(location_name, ''), coalesce(department_id, '')
	   FROM appointments WHERE ehr = $1 AND external_id = 'apt-12345'`, name).
		Scan(&status, &statusRaw, &startUTC, &patient, &practitioner, &location, &department)
	if err != nil {
		t.Fatalf("while reading appointment apt-12345: %v", err)
	}
	// 03/10/2026 14:30 in America/New_York is EDT (UTC-4).
	got := []string{status, statusRaw, startUTC, patient, practitioner, location, department}
	want := []string{"booked", "booked", "2026-03-10 18:30", "pat-67890", "prov-111", "Main Clinic", "dept-01"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("appointment row mismatch:\n got %q\nwant %q", got, want)
	}
	if n := s.count(t, `SELECT count(*) FROM patients WHERE ehr = $1 AND external_id = 'pat-67890' AND birth_date = '1990-05-15'`, name); n != 1 {
		t.Errorf("patients rows for pat-67890: got %d, want 1", n)
	}
	if n := s.count(t, `SELECT count(*) FROM practitioners WHERE ehr = $1 AND external_id = 'prov-111'`, name); n != 1 {
		t.Errorf("practitioners rows for prov-111: got %d, want 1", n)
	}
	if n := s.count(t, `SELECT count(*) FROM appointment_history WHERE ehr = $1 AND appointment_external_id = 'apt-12345'`, name); n != 1 {
		t.Errorf("history rows for apt-12345 after a delivery and its redelivery: got %d, want 1", n)
	}
	if n := s.count(t, `SELECT count(*) FROM webhook_deliveries WHERE ehr = $1 AND status_code = 200`, name); n < 2 {
		t.Errorf("webhook_deliveries with 200: got %d, want at least 2", n)
	}
}

// receiverMetrics checks that the Service's metrics port serves /metrics,
// then reads every receiver pod's endpoint: between them they count the
// example's two deliveries as 200s. Pods are read one by one because a
// kept-alive connection through the Service always reaches the same pod,
// which may be the one that answered nothing.
func (s *story) receiverMetrics(t *testing.T) {
	ip := get(t, ns, "service", receiver, "{.spec.clusterIP}")
	port := get(t, ns, "service", receiver, `{.spec.ports[?(@.name=="metrics")].port}`)
	if _, err := scrape(fmt.Sprintf("http://%s:%s/metrics", ip, port)); err != nil {
		t.Fatalf("the Service's metrics port: %v", err)
	}
	series := fmt.Sprintf(`ehr_receiver_requests_total{code="200",ehr=%q}`, name)
	sel := selectorOf(t, ns, receiver)
	wait(t, "the receivers to count the example's two 200s", 30*time.Second, func(context.Context) error {
		var total float64
		for _, pod := range allPods(t, ns, sel) {
			podIP := get(t, ns, "pod", pod, "{.status.podIP}")
			podPort := get(t, ns, "pod", pod, `{.spec.containers[0].ports[?(@.name=="metrics")].containerPort}`)
			body, err := scrape(fmt.Sprintf("http://%s:%s/metrics", podIP, podPort))
			if err != nil {
				return fmt.Errorf("pod %s: %w", pod, err)
			}
			total += metricValue(body, series)
		}
		if total < 2 {
			return fmt.Errorf("%s summed over the pods is %v, want at least 2", series, total)
		}
		return nil
	})
}

// scrape GETs a Prometheus endpoint on a fresh connection.
func scrape(url string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Close = true
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return string(body), nil
}

// metricValue is the value of one series in a Prometheus text body, 0 when
// the series is absent.
func metricValue(body, series string) float64 {
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return 0
}

// missingSecretThenReady onboards a second EHR before its credentials
// Secret exists: it must say SecretNotFound, not fail in a loop, and go
// Ready by itself once the Secret appears.
func (s *story) missingSecretThenReady(t *testing.T) {
	const other = "medicat"
	kubectl(t, fmt.Sprintf(`apiVersion: ehr.insighthealth.io/v1alpha1
kind: EHRIntegration
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  ehr: %[1]s
  credentialsSecretRef: {name: %[1]s-webhook}
  database:
    secretRef: {name: appointments-db}
  replicas: 1
`, other, ns), "apply", "-f", "-")
	wait(t, "reason SecretNotFound", time.Minute, func(context.Context) error {
		if r := get(t, ns, "ehrintegration", other, `{.status.conditions[?(@.type=="Ready")].reason}`); r != "SecretNotFound" {
			return fmt.Errorf("Ready reason %q", r)
		}
		return nil
	})
	kubectl(t, secretYAML(other+"-webhook", map[string]string{"api-key": s.apiKey, "webhook-secret": s.newSecret}), "apply", "-f", "-")
	wait(t, other+" to go Ready by itself", 2*time.Minute, func(context.Context) error {
		if st := get(t, ns, "ehrintegration", other, `{.status.conditions[?(@.type=="Ready")].status}`); st != "True" {
			return fmt.Errorf("Ready=%q", st)
		}
		return nil
	})
	kubectl(t, "", "-n", ns, "delete", "ehrintegration", other, "--wait=true", "--timeout=60s")
}

// rotateSecret rotates the webhook secret, then the API key, with the
// commands of docs/onboarding.md, "Rotate credentials": patch only the
// rotated keys of the Secret, keeping the resourceVersion `kubectl patch`
// prints, and `kubectl wait` until status.servedSecretVersions.credentials
// shows it. The moment that returns, the new values must work on every pod
// (200, no retry of a 401), and once the overlap has ended the old ones
// must be refused (401). A key of another system kept in the Secret
// survives the rotation.
func (s *story) rotateSecret(t *testing.T) {
	url := receiverURL(t)
	oldKey, newKey := s.apiKey, randHex(t)
	const otherKey, otherValue = "other-system-password", "kept-by-another-team"
	kubectl(t, "", "-n", ns, "patch", "secret", "nexus-webhook", "--type=merge",
		"-p", `{"stringData":{"`+otherKey+`":"`+otherValue+`"}}`)

	// 1. The webhook secret's overlap.
	s.patchCredentials(t, "merge", mergeCredentials(map[string]string{"webhook-secret": s.newSecret, "webhook-secret-previous": s.oldSecret}))
	for i := 0; i < 5; i++ {
		for _, sec := range []string{s.newSecret, s.oldSecret} {
			if code := deliverOnce(t, url, oldKey, sec, payload(fmt.Sprintf("rot-overlap-%d-%s", i, sec[:6]))); code != http.StatusOK {
				t.Fatalf("right after kubectl wait, a delivery signed with the %s secret got %d, want 200", which(s, sec), code)
			}
		}
	}
	if code := deliverOnce(t, url, oldKey, "not-the-secret", payload("rot-wrong")); code != http.StatusUnauthorized {
		t.Errorf("a delivery signed with a wrong secret got %d, want 401", code)
	}

	// 2. The API key's overlap, the webhook secret's still on.
	s.patchCredentials(t, "merge", mergeCredentials(map[string]string{"api-key": newKey, "api-key-previous": oldKey}))
	for i := 0; i < 5; i++ {
		for which, key := range map[string]string{"new": newKey, "old": oldKey} {
			if code := deliverOnce(t, url, key, s.newSecret, payload(fmt.Sprintf("rot-key-%d-%s", i, which))); code != http.StatusOK {
				t.Fatalf("right after kubectl wait, a delivery with the %s API key got %d, want 200", which, code)
			}
		}
	}

	// 3. Both overlaps end.
	s.patchCredentials(t, "json", `[{"op": "remove", "path": "/data/webhook-secret-previous"}, {"op": "remove", "path": "/data/api-key-previous"}]`)
	s.apiKey = newKey
	for i := 0; i < 5; i++ {
		if code := deliverOnce(t, url, newKey, s.oldSecret, payload(fmt.Sprintf("rot-old-%d", i))); code != http.StatusUnauthorized {
			t.Fatalf("after the overlap an old-signed delivery got %d, want 401", code)
		}
		if code := deliverOnce(t, url, oldKey, s.newSecret, payload(fmt.Sprintf("rot-oldkey-%d", i))); code != http.StatusUnauthorized {
			t.Fatalf("after the overlap a delivery with the old API key got %d, want 401", code)
		}
		if code := deliverOnce(t, url, newKey, s.newSecret, payload(fmt.Sprintf("rot-new-%d", i))); code != http.StatusOK {
			t.Fatalf("after the overlap a delivery with the new credentials got %d, want 200", code)
		}
	}
	if n := s.count(t, `SELECT count(*) FROM appointments WHERE ehr = $1 AND (external_id LIKE 'rot-old-%' OR external_id LIKE 'rot-oldkey-%')`, name); n != 0 {
		t.Errorf("%d deliveries with old credentials were stored after the overlap, want 0", n)
	}
	got, err := base64.StdEncoding.DecodeString(get(t, ns, "secret", "nexus-webhook", "{.data."+otherKey+"}"))
	if err != nil || string(got) != otherValue {
		t.Errorf("after the rotation, key %s of the credentials Secret is %q (%v), want it kept", otherKey, got, err)
	}
}

// mergeCredentials is the merge patch that sets keys of the credentials
// Secret to values, leaving its other keys as they are.
func mergeCredentials(values map[string]string) string {
	b, err := json.Marshal(map[string]map[string]string{"stringData": values})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// patchCredentials is one change of docs/onboarding.md, "Rotate
// credentials": `kubectl patch` of the credentials Secret's keys, and
// `kubectl wait` for the resourceVersion the patch printed in
// servedSecretVersions.
func (s *story) patchCredentials(t *testing.T, patchType, patch string) {
	t.Helper()
	rv := strings.TrimSpace(kubectl(t, "", "-n", ns, "patch", "secret", "nexus-webhook", "--type="+patchType,
		"-o", "jsonpath={.metadata.resourceVersion}", "-p", patch))
	if rv == "" {
		t.Fatal("kubectl patch printed no resourceVersion")
	}
	t0 := time.Now()
	kubectl(t, "", "-n", ns, "wait", "ehrintegration/"+name, "--timeout=10m",
		"--for=jsonpath={.status.servedSecretVersions.credentials}="+rv)
	t.Logf("every receiver pod ran credentials version %s %s after the patch", rv, time.Since(t0).Round(100*time.Millisecond))
}

func (s *story) deletePodDuringStream(t *testing.T) {
	sel := selectorOf(t, ns, receiver)
	before := readyPods(t, ns, sel)
	st := startStream(receiverURL(t), s.apiKey, s.newSecret, "del", 3)
	time.Sleep(2 * time.Second)
	victim := before[0]
	kubectl(t, "", "-n", ns, "delete", "pod", victim, "--wait=false")
	wait(t, "the deleted receiver pod to be replaced", 3*time.Minute, func(context.Context) error {
		pods := allPods(t, ns, sel)
		ready := readyPods(t, ns, sel)
		if len(ready) != 2 || len(pods) != 2 || contains(pods, victim) {
			return fmt.Errorf("pods %v, ready %v", pods, ready)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	res := st.stop()
	s.checkStream(t, res)
}

// databaseOutage stops PostgreSQL under load from two senders that post
// over HTTPS through the edge, as vendors do. Every answer a vendor sees
// must be 200 or the receiver's own 503 with Retry-After (never an error of
// the proxy); a receiver pod deleted during the outage must come back
// without restarts; once PostgreSQL is back, every acknowledged appointment
// is stored and the DatabaseReachable condition clears.
func (s *story) databaseOutage(t *testing.T) {
	ctx := context.Background()
	sel := selectorOf(t, ns, receiver)
	ld := startOutageLoad(env.EdgeClient(s.ca.PEM), env.EdgeURL(hostA, name), s.apiKey, s.newSecret, "outage", 2)
	stopped := false
	defer func() {
		if !stopped {
			ld.stop()
		}
	}()
	time.Sleep(2 * time.Second)
	if err := pg.Pause(); err != nil {
		t.Fatalf("while stopping PostgreSQL: %v", err)
	}
	paused := true
	defer func() {
		if paused { // leave the database up for the steps after a failure
			_ = pg.Resume(ctx)
		}
	}()
	waitDatabaseReachable(t, "False")

	victim := readyPods(t, ns, sel)[0]
	kubectl(t, "", "-n", ns, "delete", "pod", victim, "--wait=false")
	wait(t, "the receiver pod deleted during the outage to be replaced and Ready", 3*time.Minute, func(context.Context) error {
		pods, ready := allPods(t, ns, sel), readyPods(t, ns, sel)
		if len(ready) != 2 || len(pods) != 2 || contains(pods, victim) {
			return fmt.Errorf("pods %v, ready %v", pods, ready)
		}
		return nil
	})
	time.Sleep(3 * time.Second) // answers from the new pod while the database is still away
	restarts := strings.Fields(kubectl(t, "", "-n", ns, "get", "pods", "-l", sel, "-o",
		"jsonpath={.items[*].status.containerStatuses[*].restartCount}"))
	for _, r := range restarts {
		if r != "0" {
			t.Errorf("a receiver container restarted during the outage: restart counts %v", restarts)
			break
		}
	}

	if err := pg.Resume(ctx); err != nil {
		t.Fatalf("while starting PostgreSQL again: %v", err)
	}
	paused = false
	waitDatabaseReachable(t, "True")
	time.Sleep(2 * time.Second)
	res := ld.stop()
	stopped = true

	t.Logf("outage: %d acknowledged, %d answered 503 with Retry-After, %d other answers", len(res.acked), res.unavailable, len(res.bad))
	for i, b := range res.bad {
		if i == 10 {
			t.Errorf("... and %d more", len(res.bad)-10)
			break
		}
		t.Errorf("a vendor saw something other than 200 or the receiver's 503: %s", b)
	}
	if res.unavailable == 0 {
		t.Error("no delivery was answered 503 while PostgreSQL was stopped")
	}
	if len(res.acked) == 0 {
		t.Fatal("no delivery was acknowledged")
	}
	if n := s.count(t, `SELECT count(*) FROM appointments WHERE ehr = $1 AND external_id = ANY($2)`, name, pq.Array(res.acked)); n != len(res.acked) {
		t.Errorf("%d deliveries were answered 200 but only %d of their appointments are in the database", len(res.acked), n)
	}
}

// waitDatabaseReachable waits for the EHRIntegration's DatabaseReachable
// condition to have status want; the operator asks the receivers every 30 s.
func waitDatabaseReachable(t *testing.T, want string) {
	t.Helper()
	wait(t, "DatabaseReachable="+want, 2*time.Minute, func(context.Context) error {
		st := get(t, ns, "ehrintegration", name, `{.status.conditions[?(@.type=="DatabaseReachable")].status}`)
		if st != want {
			return fmt.Errorf("DatabaseReachable=%q", st)
		}
		return nil
	})
}

func (s *story) suspendResume(t *testing.T) {
	sel := selectorOf(t, ns, receiver)
	kubectl(t, "", "-n", ns, "patch", "ehrintegration", name, "--type=merge", "-p", `{"spec":{"suspend":true}}`)
	wait(t, "the receivers to scale to 0", 2*time.Minute, func(context.Context) error {
		if r := get(t, ns, "deployment", receiver, "{.spec.replicas}"); r != "0" {
			return fmt.Errorf("deployment replicas %s", r)
		}
		if pods := allPods(t, ns, sel); len(pods) != 0 {
			return fmt.Errorf("pods left: %v", pods)
		}
		if r := get(t, ns, "ehrintegration", name, `{.status.conditions[?(@.type=="Ready")].reason}`); r != "Suspended" {
			return fmt.Errorf("Ready reason %q, want Suspended", r)
		}
		return nil
	})
	// The vendor gets a 5xx it retries, not the edge's 404 it must not
	// (webhook-api.md): the edge keeps the route to a Service without
	// endpoints (Traefik's allowEmptyServices; operations.md, "The edge").
	waitEdgeStatus(t, hostA, name, s.ca.PEM, http.StatusServiceUnavailable)
	out, err := s.send(t, env.EdgeURL(hostA, name), s.caFile, hostA, s.apiKey, s.newSecret, "while-suspended")
	if err == nil || !strings.Contains(out, " 503 ") {
		t.Errorf("send through the edge while suspended: %v, want the edge's 503\n%s", err, out)
	}
	// The same through the Gateway API: the route tenant, suspended too.
	kubectl(t, "", "-n", nsB, "patch", "ehrintegration", nameB, "--type=merge", "-p", `{"spec":{"suspend":true}}`)
	waitEdgeStatus(t, hostB, nameB, s.ca.PEM, http.StatusServiceUnavailable)
	kubectl(t, "", "-n", ns, "patch", "ehrintegration", name, "--type=merge", "-p", `{"spec":{"suspend":false}}`)
	kubectl(t, "", "-n", nsB, "patch", "ehrintegration", nameB, "--type=merge", "-p", `{"spec":{"suspend":false}}`)
	waitReady(t, nsB, nameB, 1)
	waitEdgeRoutes(t, hostB, nameB, s.ca.PEM)
	waitIntegrationReady(t, 2)
	if code := deliverOnce(t, receiverURL(t), s.apiKey, s.newSecret, payload("after-resume")); code != http.StatusOK {
		t.Errorf("a delivery after resuming got %d, want 200", code)
	}
}

// helmUpgrade releases versionB (the same code, a new version: new image
// digests) to the registry and upgrades to it with helm from oci://, while
// a sender streams to nexus: the manager and every receiver roll to B's
// image, pulled from the registry, and no delivery fails.
func (s *story) helmUpgrade(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now()
	relB, err := env.Release(ctx, reg, regPath, versionB)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ make release VERSION=%s REGISTRY=%s/%s (hack/release.sh, %s)\n%s", versionB, reg.Host, regPath,
		time.Since(t0).Round(time.Second), relB.Output)
	if relB.Index == relA.Index {
		t.Fatalf("release %s has the same index digest as %s (%s)", versionB, versionA, relA.Index)
	}
	dep := strings.TrimSpace(strings.TrimPrefix(kubectl(t, "", "-n", operatorNS, "get", "deployments", "-o", "name"), "deployment.apps/"))
	mgrSel := selectorOf(t, operatorNS, dep)
	oldMgr := allPods(t, operatorNS, mgrSel)
	receivers := []struct {
		namespace, sel string
		replicas       int
		before         []string
	}{
		{ns, selectorOf(t, ns, receiver), 2, nil},
		{nsB, selectorOf(t, nsB, receiverB), 1, nil},
	}
	for i := range receivers {
		receivers[i].before = podUIDs(t, receivers[i].namespace, receivers[i].sel)
		t.Logf("before: receivers in %s:\n%s", receivers[i].namespace, podImages(t, receivers[i].namespace, receivers[i].sel))
	}
	st := startStream(receiverURL(t), s.apiKey, s.newSecret, "upg", 2)
	cmdline, out, err := env.InstallRelease(ctx, reg, regPath, relB, operatorNS, releaseSets()...)
	t.Logf("$ %s\n%s", cmdline, out)
	if err != nil {
		st.stop()
		t.Fatal(err)
	}
	var newMgr []string
	wait(t, "the old manager pod to go", 2*time.Minute, func(context.Context) error {
		newMgr = readyPods(t, operatorNS, mgrSel)
		pods := allPods(t, operatorNS, mgrSel)
		for _, p := range oldMgr {
			if contains(pods, p) {
				return fmt.Errorf("old manager pod %s still there", p)
			}
		}
		if len(newMgr) != 1 {
			return fmt.Errorf("ready manager pods %v", newMgr)
		}
		return nil
	})
	waitLeader(t, newMgr[0])
	for _, r := range receivers {
		wait(t, "the receivers in "+r.namespace+" to roll to "+relB.Image, 3*time.Minute, func(context.Context) error {
			pods := allPods(t, r.namespace, r.sel)
			if len(pods) != r.replicas || len(readyPods(t, r.namespace, r.sel)) != r.replicas {
				return fmt.Errorf("pods %v, want %d Ready", pods, r.replicas)
			}
			for _, line := range strings.Split(strings.TrimSpace(podImages(t, r.namespace, r.sel)), "\n") {
				if f := strings.Fields(line); len(f) < 2 || f[1] != relB.Image {
					return fmt.Errorf("pod still on another image: %s", line)
				}
			}
			return nil
		})
	}
	time.Sleep(2 * time.Second)
	s.checkStream(t, st.stop())

	// The pods run what the registry served for B: containerd reports the
	// digest the tag resolved to (the index), or the platform's manifest.
	want := map[string]bool{relB.Index: true, relB.Platforms["linux/amd64"]: true}
	check := func(namespace, sel string) {
		imgs := podImages(t, namespace, sel)
		t.Logf("after: pods in %s (name, image, imageID):\n%s", namespace, imgs)
		for _, line := range strings.Split(strings.TrimSpace(imgs), "\n") {
			f := strings.Fields(line)
			if len(f) != 3 || f[1] != relB.Image {
				t.Errorf("pod %q does not run %s", line, relB.Image)
				continue
			}
			repo, digest, _ := strings.Cut(f[2], "@")
			if !want[digest] || repo != strings.TrimSuffix(relB.Image, ":"+versionB) {
				t.Errorf("pod %s's imageID %s is neither %s's index %s nor its linux/amd64 image %s",
					f[0], f[2], versionB, relB.Index, relB.Platforms["linux/amd64"])
			}
		}
	}
	check(operatorNS, mgrSel)
	for _, r := range receivers {
		check(r.namespace, r.sel)
		if after := podUIDs(t, r.namespace, r.sel); len(after) > 0 && contains(r.before, after[0]) {
			t.Errorf("receiver pod %s in %s was not replaced by the upgrade", after[0], r.namespace)
		}
	}
}

// podImages lists "name image imageID" of the pods sel selects, one a line.
func podImages(t *testing.T, namespace, sel string) string {
	t.Helper()
	return kubectl(t, "", "-n", namespace, "get", "pods", "-l", sel, "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.spec.containers[0].image} {.status.containerStatuses[0].imageID}{"\n"}{end}`)
}

func (s *story) deleteIntegration(t *testing.T) {
	sel := selectorOf(t, ns, receiver)
	kubectl(t, "", "-n", ns, "delete", "ehrintegration", name, "--wait=true", "--timeout=60s")
	wait(t, "the receiver's children to be garbage-collected", 2*time.Minute, func(ctx context.Context) error {
		out, err := env.Kubectl(ctx, "", "-n", ns, "get", "--ignore-not-found", "-o", "name",
			"deployment/"+receiver, "service/"+receiver, "serviceaccount/"+receiver, "poddisruptionbudget/"+receiver,
			"ingress/"+receiver)
		if err != nil {
			return err
		}
		left := append(strings.Fields(out), allPods(t, ns, sel)...)
		if len(left) > 0 {
			return fmt.Errorf("still there: %v", left)
		}
		return nil
	})
	// The certificate went with the Ingress, so the edge now shows its own
	// default certificate for the hostname, which the tenant's CA did not
	// sign; without checking it, the answer is the edge's 404.
	waitEdge404(t, hostA, name, nil)
	if _, err := edgeGet(env.EdgeClient(s.ca.PEM), env.EdgeURL(hostA, name)); err == nil || !strings.Contains(err.Error(), "x509") {
		t.Errorf("after the Ingress went, a client trusting only the tenant's CA got %v, want a certificate error", err)
	}
}

// checkStream asserts that every delivery a receiver answered 200 is in the
// database, and that every delivery succeeded, with the retries a real
// sender makes on a refused connection or a 5xx.
func (s *story) checkStream(t *testing.T, r streamResult) {
	t.Helper()
	t.Logf("stream: %d delivered, %d retries, %d failed after retries", len(r.ok), r.retries, len(r.failed))
	if len(r.ok) == 0 {
		t.Fatal("no delivery succeeded during the stream")
	}
	if n := s.count(t, `SELECT count(*) FROM appointments WHERE ehr = $1 AND external_id = ANY($2)`, name, pq.Array(r.ok)); n != len(r.ok) {
		t.Errorf("%d deliveries were answered 200 but only %d of their appointments are in the database", len(r.ok), n)
	}
	if len(r.failed) > 0 {
		t.Errorf("%d deliveries failed even after retries: %v", len(r.failed), r.failed)
	}
}

func (s *story) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	var n int
	if err := s.db.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("while counting (%s): %v", q, err)
	}
	return n
}

func which(s *story, sec string) string {
	if sec == s.oldSecret {
		return "old"
	}
	return "new"
}

// --- deliveries ---

// payload is a valid single-appointment batch with appointment id id.
func payload(id string) []byte {
	return []byte(fmt.Sprintf(`{"appointments":[{"appointment":{"id":%q,"status":"booked","start_time":"04/02/2026 09:15",
"start_date":"04/02/2026","created_time":"03/20/2026 10:00","duration":"20","type":"Follow-up"},
"patient":{"id":"pat-%s","first_name":"Test","last_name":"Patient","birth_date":"01/02/1980","gender":"Other"},
"practitioner":{"id":"prov-e2e","first_name":"Test","last_name":"Practitioner"},"department_id":"dept-e2e"}]}`, id, id))
}

var client = &http.Client{Timeout: 15 * time.Second}

// signedRequest is a delivery of body signed with secret, as an EHR sends it.
func signedRequest(url, apiKey, secret string, body []byte) (*http.Request, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", apiKey)
	req.Header.Set("X-Webhook-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	return req, nil
}

// deliver POSTs body signed with secret and returns the status code.
func deliver(url, apiKey, secret string, body []byte) (int, error) {
	req, err := signedRequest(url, apiKey, secret, body)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, nil
}

// deliverOnce sends one delivery as a real EHR would, retrying a refused
// connection or a 5xx (a receiver still reaching its database answers 503
// with Retry-After), and returns the final status code.
func deliverOnce(t *testing.T, url, apiKey, secret string, body []byte) int {
	t.Helper()
	code, _, err := deliverAsSender(url, apiKey, secret, body)
	if err != nil {
		t.Fatalf("delivery to %s: %v", url, err)
	}
	return code
}

// deliverAsSender retries a refused connection or a 5xx up to 10 times,
// 300 ms apart; it returns the last answer and the number of retries.
func deliverAsSender(url, apiKey, secret string, body []byte) (code, retries int, err error) {
	for attempt := 0; ; attempt++ {
		code, err = deliver(url, apiKey, secret, body)
		if (err == nil && code < 500) || attempt == 9 {
			return code, retries, err
		}
		retries++
		time.Sleep(300 * time.Millisecond)
	}
}

type streamResult struct {
	ok, failed []string
	retries    int
}

// load sends deliveries of fresh appointments from its workers until
// stopped, each worker 50 ms after it is done with its last one; send
// delivers one as a vendor would, retrying, and records the answers in res
// under mu.
type load[R any] struct {
	stopCh chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	res    R
}

func startLoad[R any](tag string, workers int, send func(ld *load[R], id string)) *load[R] {
	ld := &load[R]{stopCh: make(chan struct{})}
	for w := range workers {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for n := 0; !ld.stopped(); n++ {
				send(ld, fmt.Sprintf("%s-%d-%d", tag, w, n))
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	return ld
}

func (ld *load[R]) stopped() bool {
	select {
	case <-ld.stopCh:
		return true
	default:
		return false
	}
}

func (ld *load[R]) stop() R {
	close(ld.stopCh)
	ld.wg.Wait()
	return ld.res
}

// startStream sends fresh appointments from workers goroutines until
// stopped. Like a real EHR it retries a refused connection or a 5xx (up to
// 10 times, 300 ms apart); a 4xx is a failure.
func startStream(url, apiKey, secret, tag string, workers int) *load[streamResult] {
	return startLoad(tag, workers, func(ld *load[streamResult], id string) {
		code, retries, err := deliverAsSender(url, apiKey, secret, payload(id))
		ld.mu.Lock()
		defer ld.mu.Unlock()
		ld.res.retries += retries
		if err == nil && code == http.StatusOK {
			ld.res.ok = append(ld.res.ok, id)
		} else {
			ld.res.failed = append(ld.res.failed, id)
		}
	})
}

type outageResult struct {
	acked       []string
	unavailable int      // the receiver's 503 with Retry-After
	bad         []string // anything else, described without the body's data
}

// startOutageLoad sends fresh appointments from workers goroutines until
// stopped, recording every answer. Like a real EHR it retries a delivery
// answered 503 until it is acknowledged (500 ms apart, sooner than the
// Retry-After so that the outage sees more requests).
func startOutageLoad(c *http.Client, url, apiKey, secret, tag string, workers int) *load[outageResult] {
	return startLoad(tag, workers, func(ld *load[outageResult], id string) {
		body := payload(id)
		for !ld.stopped() {
			verdict := receiverAnswer(c, url, apiKey, secret, body)
			ld.mu.Lock()
			switch verdict {
			case "ok":
				ld.res.acked = append(ld.res.acked, id)
			case "unavailable":
				ld.res.unavailable++
			default:
				ld.res.bad = append(ld.res.bad, verdict)
			}
			ld.mu.Unlock()
			if verdict == "ok" {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// receiverAnswer sends one delivery and classifies the answer: "ok" (200),
// "unavailable" (the receiver's JSON 503 with Retry-After) or a description
// of anything else.
func receiverAnswer(c *http.Client, url, apiKey, secret string, body []byte) string {
	req, err := signedRequest(url, apiKey, secret, body)
	if err != nil {
		return err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	var ans struct {
		Success *bool `json:"success"`
		Code    int   `json:"code"`
	}
	jsonErr := json.NewDecoder(resp.Body).Decode(&ans)
	switch {
	case resp.StatusCode == http.StatusOK && jsonErr == nil && ans.Success != nil && *ans.Success:
		return "ok"
	case resp.StatusCode == http.StatusServiceUnavailable && jsonErr == nil && ans.Code == 503 &&
		ans.Success != nil && !*ans.Success && resp.Header.Get("Retry-After") != "":
		return "unavailable"
	}
	return fmt.Sprintf("status %d, Retry-After %q, JSON body %t", resp.StatusCode, resp.Header.Get("Retry-After"), jsonErr == nil)
}

// --- cluster helpers ---

func kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := env.Kubectl(context.Background(), stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func get(t *testing.T, namespace, kind, obj, jsonpath string) string {
	t.Helper()
	return strings.TrimSpace(kubectl(t, "", "-n", namespace, "get", kind, obj, "-o", "jsonpath="+jsonpath))
}

func wait(t *testing.T, what string, timeout time.Duration, check func(context.Context) error) {
	t.Helper()
	if err := framework.Eventually(context.Background(), what, timeout, check); err != nil {
		t.Fatal(err)
	}
}

// selectorOf is the label selector of Deployment dep.
func selectorOf(t *testing.T, namespace, dep string) string {
	t.Helper()
	raw := kubectl(t, "", "-n", namespace, "get", "deployment", dep, "-o",
		`go-template={{range $k, $v := .spec.selector.matchLabels}}{{$k}}={{$v}},{{end}}`)
	return strings.TrimSuffix(strings.TrimSpace(raw), ",")
}

func allPods(t *testing.T, namespace, sel string) []string {
	t.Helper()
	return strings.Fields(kubectl(t, "", "-n", namespace, "get", "pods", "-l", sel, "-o", "jsonpath={.items[*].metadata.name}"))
}

// readyPods lists pods that are Ready and not terminating.
func readyPods(t *testing.T, namespace, sel string) []string {
	t.Helper()
	out := kubectl(t, "", "-n", namespace, "get", "pods", "-l", sel, "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
	var ready []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[1] == "True" {
			ready = append(ready, f[0])
		}
	}
	sort.Strings(ready)
	return ready
}

func podUIDs(t *testing.T, namespace, sel string) []string {
	t.Helper()
	uids := strings.Fields(kubectl(t, "", "-n", namespace, "get", "pods", "-l", sel, "-o", "jsonpath={.items[*].metadata.uid}"))
	sort.Strings(uids)
	return uids
}

func waitIntegrationReady(t *testing.T, replicas int) {
	t.Helper()
	waitReady(t, ns, name, replicas)
}

func waitReady(t *testing.T, namespace, obj string, replicas int) {
	t.Helper()
	wait(t, "EHRIntegration "+namespace+"/"+obj+" to be Ready", 3*time.Minute, func(context.Context) error {
		st := get(t, namespace, "ehrintegration", obj, `{.status.conditions[?(@.type=="Ready")].status}`)
		reason := get(t, namespace, "ehrintegration", obj, `{.status.conditions[?(@.type=="Ready")].reason}`)
		rr := get(t, namespace, "ehrintegration", obj, "{.status.readyReplicas}")
		if st != "True" || rr != fmt.Sprint(replicas) {
			return fmt.Errorf("Ready=%q (%s), readyReplicas=%q", st, reason, rr)
		}
		return nil
	})
}

// waitLeader waits until pod holds the manager's leader-election Lease.
func waitLeader(t *testing.T, pod string) {
	t.Helper()
	wait(t, "manager pod "+pod+" to hold the leader-election Lease", 90*time.Second, func(context.Context) error {
		holders := kubectl(t, "", "-n", operatorNS, "get", "leases", "-o", "jsonpath={.items[*].spec.holderIdentity}")
		for _, h := range strings.Fields(holders) {
			if strings.HasPrefix(h, pod) {
				return nil
			}
		}
		return fmt.Errorf("lease holders %q", holders)
	})
}

func receiverURL(t *testing.T) string {
	t.Helper()
	u, err := env.ReceiverURL(context.Background(), ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func secretYAML(secret string, data map[string]string) string {
	keys := make([]string, 0, len(data))
	for k := range data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\ntype: Opaque\nstringData:\n", secret, ns)
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s: %q\n", k, data[k])
	}
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func randHex(t *testing.T) string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
