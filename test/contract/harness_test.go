// Package contract tests the receiver's HTTP contract (architecture.md, "The request's path") from the
// outside: the real ehr-operator binary, started as a subprocess per
// configuration against a real PostgreSQL, spoken to over real HTTP on
// loopback.
package contract

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/auth"
)

const (
	ehr        = "nexus"
	apiKey     = "contract-api-key-at-least-thirty-two-bytes"
	secret     = "contract-webhook-secret-at-least-32-bytes"
	prevSecret = "contract-previous-secret-at-least-32-bytes"
	prevAPIKey = "contract-previous-api-key-at-least-32-bytes"
)

// binary is the ehr-operator built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	var err error
	if binary, err = harness.BuildReceiver("../..", "ehr-operator-contract-test"); err != nil {
		fmt.Fprintln(os.Stderr, "contract:", err)
		os.Exit(1)
	}
	pgtest.Main(m)
}

// specExample is the spec's "Full request example", byte for byte.
func specExample(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../../receiver/payload/testdata/spec-example.json")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(b)
}

// rcv is one running receiver process.
type rcv struct {
	*harness.Receiver
	t     *testing.T
	url   string // http://127.0.0.1:port of the webhook server
	dbURL string
}

// startReceiver runs the binary on dbURL with extra flags and waits until
// /readyz answers 200. It is stopped with SIGTERM when the test ends.
func startReceiver(t *testing.T, dbURL string, flags ...string) *rcv {
	t.Helper()
	// The previous secret's file has no trailing newline, the others one.
	creds := harness.Credentials{EHR: ehr, APIKey: apiKey + "\n", Secret: secret + "\n", PreviousSecret: prevSecret,
		PreviousAPIKey: prevAPIKey + "\n"}
	h, err := harness.StartReceiverAs(binary, dbURL, creds,
		append([]string{"--requests-per-second", "10000", "--burst", "10000"}, flags...)...)
	if err != nil {
		t.Fatal(err)
	}
	r := &rcv{Receiver: h, t: t, url: h.BaseURL, dbURL: dbURL}
	t.Cleanup(func() {
		_ = r.Stop()
		if t.Failed() {
			t.Logf("receiver logs:\n%s", r.Log())
		}
	})
	return r
}

// answer is a response as the tests see it.
type answer struct {
	status int
	header http.Header
	raw    []byte
	body   receiver.Response
}

// reqOpt changes a request before it is sent.
type reqOpt func(*http.Request)

func withHeader(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }
func withoutHeader(k string) reqOpt { return func(r *http.Request) { r.Header.Del(k) } }
func withMethod(m string) reqOpt    { return func(r *http.Request) { r.Method = m } }
func withPath(p string) reqOpt      { return func(r *http.Request) { r.URL.Path = p } }

// post sends body signed with the current secret, with the right headers,
// then applies opts.
func (r *rcv) post(body []byte, opts ...reqOpt) answer {
	r.t.Helper()
	return do(r.t, r.url, body, opts...)
}

func do(t *testing.T, base string, body []byte, opts ...reqOpt) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v2/webhooks/"+ehr+"/sync-appointments", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", apiKey)
	req.Header.Set("X-Webhook-Signature", auth.Sign([]byte(secret), body))
	for _, o := range opts {
		o(req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{status: resp.StatusCode, header: resp.Header, raw: raw}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &a.body); err != nil {
			t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, raw)
		}
	}
	return a
}

// expect checks an answer's status and the shape every body has.
func expect(t *testing.T, a answer, status int) {
	t.Helper()
	if a.status != status {
		t.Fatalf("status %d, want %d; body %s", a.status, status, a.raw)
	}
	if a.body.Code != status || a.body.Success != (status == 200) || a.body.Message == "" {
		t.Fatalf("body %s does not have the contract's shape for %d", a.raw, status)
	}
	if hasErrors := a.body.Errors != nil; hasErrors != (status == 400 || status == 422) {
		t.Fatalf("errors present = %v for %d: %s", hasErrors, status, a.raw)
	}
	if a.header.Get("X-Request-ID") == "" {
		t.Fatalf("no X-Request-ID on a %d", status)
	}
}

// db opens the receiver's database for assertions.
func db(t *testing.T, url string) *sql.DB {
	t.Helper()
	d, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func queryInt(t *testing.T, d *sql.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := d.QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// failedDeliveries is queryInt for a count of failed requests' delivery
// rows: the receiver writes those in batches a moment after answering, so
// it waits up to 5 s for the count to reach want.
func failedDeliveries(t *testing.T, d *sql.DB, want int, q string, args ...any) int {
	t.Helper()
	n := queryInt(t, d, q, args...)
	for deadline := time.Now().Add(5 * time.Second); n < want && time.Now().Before(deadline); n = queryInt(t, d, q, args...) {
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

// entry is the spec example's entry with the given appointment id, changed
// by mutate.
func entry(t *testing.T, id string, mutate func(e map[string]any)) map[string]any {
	t.Helper()
	var top struct{ Appointments []map[string]any }
	if err := json.Unmarshal(specExample(t), &top); err != nil {
		t.Fatal(err)
	}
	e := top.Appointments[0]
	sub(e, "appointment")["id"] = id
	if mutate != nil {
		mutate(e)
	}
	return e
}

func sub(e map[string]any, key string) map[string]any { return e[key].(map[string]any) }

func batch(t *testing.T, entries ...map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"appointments": entries})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fieldsOf(a answer) []string {
	var out []string
	for _, e := range a.body.Errors {
		out = append(out, fmt.Sprintf("%d %s: %s", e.Index, e.Field, e.Message))
	}
	return out
}

func containsAll(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, x := range subs {
		if !strings.Contains(s, x) {
			t.Errorf("%q does not contain %q", s, x)
		}
	}
}
