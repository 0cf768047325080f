package receiver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/auth"
	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// These tests drive Server.Handler() in process, on a real store and
// PostgreSQL: each check's answer byte for byte, and what it leaves in the
// delivery log and the log line. test/contract covers the same contract
// from outside, through the binary.

func TestMain(m *testing.M) { pgtest.Main(m) }

const syncURL = "/v2/webhooks/nexus/sync-appointments"

// testServer is a Server on a real store, its database and its log.
type testServer struct {
	srv *Server
	h   http.Handler
	db  *sql.DB
	log *syncBuffer
	seq int
	// answers are the bodies of the answers post recorded, by request id,
	// under mu: some tests post from two goroutines.
	mu      sync.Mutex
	answers map[string][]byte
}

// newTestServer serves validConfig(), changed by mutate, with a store on
// dbURL.
func newTestServer(t *testing.T, dbURL string, mutate func(*Config)) *testServer {
	t.Helper()
	st, err := store.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	cfg := validConfig()
	cfg.MaxBodyBytes, cfg.MaxBatchSize = 2000, 2
	cfg.RequestsPerSecond, cfg.Burst = 1e6, 1e6
	if mutate != nil {
		mutate(&cfg)
	}
	// A syncBuffer: the delivery log's warnings come from goroutines of
	// their own.
	buf := &syncBuffer{}
	srv, err := New(cfg, st, slog.New(slog.NewJSONHandler(buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return &testServer{srv: srv, h: srv.Handler(), db: db, log: buf}
}

type reqOpt func(*http.Request)

func header(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }
func noHeader(k string) reqOpt  { return func(r *http.Request) { r.Header.Del(k) } }
func method(m string) reqOpt    { return func(r *http.Request) { r.Method = m } }
func path(p string) reqOpt      { return func(r *http.Request) { r.URL.Path = p } }
func badSignature() reqOpt      { return header("X-Webhook-Signature", "sha256="+strings.Repeat("0", 64)) }
func streamed(body io.Reader) reqOpt { // no Content-Length, as a chunked body
	return func(r *http.Request) { r.Body, r.ContentLength = io.NopCloser(body), -1 }
}

// post sends body to the sync route with the right headers and signature
// and a request id of its own, then applies opts. It returns the answer and
// the request id.
func (ts *testServer) post(t *testing.T, body []byte, opts ...reqOpt) (*httptest.ResponseRecorder, string) {
	t.Helper()
	ts.seq++
	// Subtest names are letters, digits, '_' and '/': a valid request id.
	id := t.Name() + "/" + strconv.Itoa(ts.seq)
	req := httptest.NewRequest(http.MethodPost, syncURL, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", validConfig().APIKey)
	req.Header.Set("X-Webhook-Signature", auth.Sign(validConfig().Secret, body))
	req.Header.Set(headerID, id)
	for _, o := range opts {
		o(req)
	}
	w := httptest.NewRecorder()
	ts.h.ServeHTTP(w, req)
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.answers == nil {
		ts.answers = map[string][]byte{}
	}
	ts.answers[req.Header.Get(headerID)] = bytes.Clone(w.Body.Bytes())
	return w, id
}

// logLine is the request's line of the server's log.
func (ts *testServer) logLine(t *testing.T, id string) map[string]any {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(ts.log.String()))
	var found map[string]any
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		if line["request_id"] == id && line["outcome"] != nil {
			if found != nil {
				t.Fatalf("request %s logged twice", id)
			}
			found = line
		}
	}
	if found == nil {
		t.Fatalf("request %s not logged; log:\n%s", id, ts.log)
	}
	return found
}

// deliveryRow is a webhook_deliveries row.
type deliveryRow struct {
	outcome string
	status  int
	items   int
	sha     []byte
	// errorCount and errors are field_error_count and field_errors, nil
	// when NULL.
	errorCount *int
	errors     []byte
}

// deliveries returns the delivery log's rows for a request id, once the
// delivery log has written what it holds.
func (ts *testServer) deliveries(t *testing.T, id string) []deliveryRow {
	t.Helper()
	ts.srv.deliveries.flush(context.Background())
	rows, err := ts.db.Query(`SELECT outcome, status_code, item_count, body_sha256, field_error_count, field_errors
		FROM webhook_deliveries WHERE request_id = $1`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []deliveryRow
	for rows.Next() {
		var d deliveryRow
		if err := rows.Scan(&d.outcome, &d.status, &d.items, &d.sha, &d.errorCount, &d.errors); err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (ts *testServer) count(t *testing.T, query string) int {
	t.Helper()
	var n int
	if err := ts.db.QueryRow(query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// entry is a valid entry with only the required fields.
func entry(id string) string {
	return `{"appointment":{"id":"` + id + `","status":"booked","start_time":"03/10/2026 14:30","start_date":"03/10/2026",` +
		`"created_time":"03/01/2026 09:00","type":"Follow-up"},` +
		`"patient":{"id":"pat-` + id + `","first_name":"Jane","middle_name":"Marie","last_name":"Doe","birth_date":"05/15/1990","gender":"Female"},` +
		`"practitioner":{"id":"prov-1","first_name":"John","last_name":"Smith"}}`
}

// invalidEntry has no patient.
func invalidEntry(id string) string {
	return `{"appointment":{"id":"` + id + `","status":"booked","start_time":"03/10/2026 14:30","start_date":"03/10/2026",` +
		`"created_time":"03/01/2026 09:00","type":"Follow-up"},` +
		`"practitioner":{"id":"prov-1","first_name":"John","last_name":"Smith"}}`
}

func batchOf(entries ...string) []byte {
	return []byte(`{"appointments":[` + strings.Join(entries, ",") + `]}`)
}

// want is what one request must come to.
type want struct {
	status  int
	body    string            // exactly
	headers map[string]string // exactly, besides those every answer has
	outcome store.Outcome
	// delivered: the request is in the delivery log, with items entries
	// and, when hashed, its body's SHA-256 (else zeros: never read).
	delivered bool
	items     int
	hashed    bool
}

// expectAnswer checks the answer to request id and its log line.
func (ts *testServer) expectAnswer(t *testing.T, w *httptest.ResponseRecorder, id string, wt want) {
	t.Helper()
	if w.Code != wt.status || w.Body.String() != wt.body {
		t.Errorf("answer %d %s\nwant   %d %s", w.Code, w.Body, wt.status, wt.body)
	}
	headers := map[string]string{
		"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store", headerID: id,
		"Retry-After": "", "Allow": "",
	}
	for k, v := range wt.headers {
		headers[k] = v
	}
	for k, v := range headers {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	line := ts.logLine(t, id)
	if line["outcome"] != string(wt.outcome) || line["status"] != float64(wt.status) {
		t.Errorf("log line says %v %v, want %s %d", line["outcome"], line["status"], wt.outcome, wt.status)
	}
}

// expect checks the answer, the log line and the delivery log of request
// id, sent with body.
func (ts *testServer) expect(t *testing.T, w *httptest.ResponseRecorder, id string, body []byte, wt want) {
	t.Helper()
	ts.expectAnswer(t, w, id, wt)
	rows := ts.deliveries(t, id)
	switch {
	case !wt.delivered && len(rows) != 0:
		t.Errorf("a request that is not recorded (unauthenticated, rate limited, overloaded) is in the delivery log: %+v", rows)
	case wt.delivered:
		sha := make([]byte, 32)
		if wt.hashed {
			sum := sha256.Sum256(body)
			sha = sum[:]
		}
		w := deliveryRow{outcome: string(wt.outcome), status: wt.status, items: wt.items, sha: sha}
		if len(rows) != 1 || rows[0].outcome != w.outcome || rows[0].status != w.status ||
			rows[0].items != w.items || !bytes.Equal(rows[0].sha, w.sha) {
			t.Errorf("delivery log %+v, want one row %+v", rows, w)
		}
		if len(rows) == 1 {
			ts.expectFieldErrors(t, w.status, answered(t, answerOf(ts, id)), rows[0])
		}
	}
}

// answerOf is the answer's body to request id as post recorded it.
func answerOf(ts *testServer, id string) []byte {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.answers[id]
}

// answered is the errors list of an answer's body.
func answered(t *testing.T, body []byte) []payload.FieldError {
	t.Helper()
	var r Response
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	return r.Errors
}

// expectFieldErrors checks that a failed request's row has the first
// store.MaxFieldErrors of the errors its answer listed, and their count;
// NULL in both when it listed none.
func (ts *testServer) expectFieldErrors(t *testing.T, status int, listed []payload.FieldError, row deliveryRow) {
	t.Helper()
	if len(listed) == 0 || status == http.StatusOK {
		if row.errorCount != nil || row.errors != nil {
			t.Errorf("field errors %v %s on the row of a %d whose answer listed none, want NULL", *row.errorCount, row.errors, status)
		}
		return
	}
	var kept []payload.FieldError
	if err := json.Unmarshal(row.errors, &kept); err != nil {
		t.Fatalf("field_errors %q: %v", row.errors, err)
	}
	want := listed[:min(len(listed), store.MaxFieldErrors)]
	if row.errorCount == nil || *row.errorCount != len(listed) || !slices.Equal(kept, want) {
		t.Errorf("the row of a %d keeps %v errors %+v, want %d and the first %+v", status, row.errorCount, kept, len(listed), want)
	}
}

// TestEachCheck sends requests that fail at each check in turn (and two
// that pass them all) and checks every answer byte for byte.
func TestEachCheck(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	good := batchOf(entry("a"))
	big := bytes.Repeat([]byte(" "), 2001)
	reject := batchOf(entry("r1"), invalidEntry("r2"))
	tests := []struct {
		name string
		body []byte
		opts []reqOpt
		want want
	}{
		{"ehr not served", big, []reqOpt{path("/v2/webhooks/medicat/sync-appointments"), method("GET"), noHeader("X-API-Key")},
			want{status: 404, body: `{"message":"not found","success":false,"code":404}`, outcome: store.OutcomeNotFound}},
		{"unknown path", good, []reqOpt{path("/v2/webhooks/nexus/other")},
			want{status: 404, body: `{"message":"not found","success":false,"code":404}`, outcome: store.OutcomeNotFound}},
		{"method GET", big, []reqOpt{method("GET"), header("Content-Type", "text/plain"), noHeader("X-API-Key")},
			want{status: 405, body: `{"message":"method not allowed; use POST","success":false,"code":405}`,
				headers: map[string]string{"Allow": "POST"}, outcome: store.OutcomeMethodNotAllowed}},
		{"content type", big, []reqOpt{header("Content-Type", "text/plain"), noHeader("X-API-Key")},
			want{status: 415, body: `{"message":"Content-Type must be application/json","success":false,"code":415}`,
				outcome: store.OutcomeUnsupportedMediaType}},
		{"compressed body", good, []reqOpt{header("Content-Encoding", "gzip")},
			want{status: 415, body: `{"message":"Content-Encoding must be absent or identity: send the JSON uncompressed","success":false,"code":415}`,
				outcome: store.OutcomeUnsupportedMediaType}},
		{"api key", big, []reqOpt{header("X-API-Key", "wrong"), badSignature()},
			want{status: 401, body: `{"message":"missing or invalid X-API-Key","success":false,"code":401}`,
				outcome: store.OutcomeUnauthorized}},
		{"body over Content-Length limit", big, []reqOpt{badSignature()},
			want{status: 413, body: `{"message":"the body is larger than 2000 bytes","success":false,"code":413}`,
				outcome: store.OutcomeTooLarge, delivered: true}},
		{"streamed body over the limit", big, []reqOpt{streamed(bytes.NewReader(big)), badSignature()},
			want{status: 413, body: `{"message":"the body is larger than 2000 bytes","success":false,"code":413}`,
				outcome: store.OutcomeTooLarge, delivered: true}},
		{"body unreadable", good, []reqOpt{streamed(iotest.ErrReader(errors.New("connection reset")))},
			want{status: 400, body: `{"message":"the body could not be read","success":false,"code":400}`,
				outcome: store.OutcomeUnreadable, delivered: true}},
		{"signature wrong", good, []reqOpt{badSignature()},
			want{status: 401, body: `{"message":"X-Webhook-Signature does not match the body","success":false,"code":401}`,
				outcome: store.OutcomeBadSignature, delivered: true, hashed: true}},
		{"signature malformed", good, []reqOpt{header("X-Webhook-Signature", "sha1=abc")},
			want{status: 401, body: `{"message":"X-Webhook-Signature must be sha256=\u003c64 hex digits\u003e","success":false,"code":401}`,
				outcome: store.OutcomeBadSignature, delivered: true, hashed: true}},
		{"malformed JSON", []byte(`{"appointments":[}`), nil,
			want{status: 400, body: `{"message":"malformed JSON at byte offset 18","success":false,"code":400,"errors":[{"index":-1,"field":"","message":"malformed JSON at byte offset 18"}]}`,
				outcome: store.OutcomeInvalidBody, delivered: true, hashed: true}},
		{"too many entries", batchOf(entry("m1"), entry("m2"), entry("m3")), nil,
			want{status: 413, body: `{"message":"appointments has 3 entries; at most 2 are accepted per request","success":false,"code":413}`,
				outcome: store.OutcomeInvalidBody, delivered: true, hashed: true}},
		{"neither form", []byte(`{"items":[]}`), nil,
			want{status: 422, body: `{"message":"body must be a JSON object with an appointments array or an appointment object","success":false,"code":422,"errors":[{"index":-1,"field":"","message":"body must be a JSON object with an appointments array or an appointment object"}]}`,
				outcome: store.OutcomeInvalidBody, delivered: true, hashed: true}},
		{"invalid entry", reject, nil,
			want{status: 422, body: `{"message":"1 of 2 appointments are invalid; nothing was stored","success":false,"code":422,"errors":[{"index":1,"field":"appointments[1].patient","message":"is required"}]}`,
				outcome: store.OutcomeRejected, delivered: true, items: 2, hashed: true}},
		{"invalid UTF-8", batchOf(strings.Replace(entry("u1"), `"Jane"`, "\"Ja\xffne\"", 1)), nil,
			want{status: 422, body: `{"message":"1 of 1 appointments are invalid; nothing was stored","success":false,"code":422,"errors":[{"index":0,"field":"appointments[0].patient.first_name","message":"must be valid UTF-8 (no invalid bytes, no unpaired \\u surrogate escapes)"}]}`,
				outcome: store.OutcomeRejected, delivered: true, items: 1, hashed: true}},
		{"stored", good, nil,
			want{status: 200, body: `{"message":"Appointments synced successfully","success":true,"code":200}`,
				outcome: store.OutcomeStored, delivered: true, items: 1, hashed: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, id := ts.post(t, tc.body, tc.opts...)
			ts.expect(t, w, id, tc.body, tc.want)
		})
	}
	if n := ts.count(t, `SELECT count(*) FROM appointments`); n != 1 {
		t.Errorf("%d appointments stored, want the one of the request that passed every check", n)
	}
	metrics := httptest.NewRecorder()
	ts.srv.MetricsHandler().ServeHTTP(metrics, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range []string{
		`ehr_receiver_signature_failures_total{ehr="nexus"} 2`,
		`ehr_receiver_requests_total{code="413",ehr="nexus"} 3`,
		`ehr_receiver_appointments_written_total{ehr="nexus"} 1`,
	} {
		if !strings.Contains(metrics.Body.String(), line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
	if strings.Contains(ts.log.String(), "Jane") || strings.Contains(ts.log.String(), "Doe") {
		t.Errorf("patient data in the log:\n%s", ts.log)
	}
}

// TestRequestID: the caller's X-Request-ID when it is a token, else a new
// one, on the answer, the log line and the delivery row.
func TestRequestID(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	w, id := ts.post(t, batchOf(entry("id")))
	if w.Code != 200 || w.Header().Get(headerID) != id {
		t.Fatalf("%d, X-Request-ID %q, want 200 and the caller's %q", w.Code, w.Header().Get(headerID), id)
	}
	if rows := ts.deliveries(t, id); len(rows) != 1 {
		t.Errorf("%d delivery rows under the caller's request id, want 1", len(rows))
	}
	w1, _ := ts.post(t, batchOf(entry("id")), header(headerID, "has space"))
	w2, _ := ts.post(t, nil, header(headerID, ""), path("/nowhere"))
	id1, id2 := w1.Header().Get(headerID), w2.Header().Get(headerID)
	if len(id1) != 36 || len(id2) != 36 || id1 == id2 {
		t.Errorf("generated request ids %q and %q: want two different UUIDs", id1, id2)
	}
	if rows := ts.deliveries(t, id1); len(rows) != 1 || rows[0].outcome != string(store.OutcomeStored) {
		t.Errorf("delivery rows under the generated id: %+v", rows)
	}
	ts.logLine(t, id2)
}

// TestQuarantine: under onInvalid: Quarantine the valid entries are stored,
// the invalid ones kept aside, and the answer is 200.
func TestQuarantine(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), func(c *Config) { c.OnInvalid = Quarantine })
	body := batchOf(entry("q1"), invalidEntry("q2"))
	w, id := ts.post(t, body)
	ts.expect(t, w, id, body, want{status: 200, body: `{"message":"Appointments synced successfully","success":true,"code":200}`,
		outcome: store.OutcomeQuarantined, delivered: true, items: 2, hashed: true})
	if n := ts.count(t, `SELECT count(*) FROM appointments WHERE external_id = 'q1'`); n != 1 {
		t.Errorf("the valid entry: %d appointments", n)
	}
	if n := ts.count(t, `SELECT count(*) FROM quarantined_entries`); n != 1 {
		t.Errorf("%d quarantined entries, want 1", n)
	}
	// The handler drops its copies of valid items, never an invalid one's.
	var raw []byte
	if err := ts.db.QueryRow(`SELECT raw FROM quarantined_entries`).Scan(&raw); err != nil || string(raw) != invalidEntry("q2") {
		t.Errorf("quarantined raw entry %q, %v; want the entry as sent", raw, err)
	}
	if line := ts.logLine(t, id); line["written"] != 1.0 || line["quarantined"] != 1.0 {
		t.Errorf("log line counts: %v", line)
	}

	// The same body again (its 200 lost): 200, nothing kept twice, and
	// the invalid entry already held counts as a duplicate, as the
	// appointment already stored does.
	w, id = ts.post(t, body)
	ts.expect(t, w, id, body, want{status: 200, body: `{"message":"Appointments synced successfully","success":true,"code":200}`,
		outcome: store.OutcomeQuarantined, delivered: true, items: 2, hashed: true})
	if n := ts.count(t, `SELECT count(*) FROM quarantined_entries`); n != 1 {
		t.Errorf("%d quarantined entries after the same body again, want 1", n)
	}
	if line := ts.logLine(t, id); line["written"] != 0.0 || line["duplicates"] != 2.0 || line["superseded"] != 0.0 || line["quarantined"] != 0.0 {
		t.Errorf("log line counts of the retry: %v, want 2 duplicates and nothing else", line)
	}
	metrics := httptest.NewRecorder()
	ts.srv.MetricsHandler().ServeHTTP(metrics, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range []string{
		`ehr_receiver_appointments_written_total{ehr="nexus"} 1`,
		`ehr_receiver_appointments_duplicates_total{ehr="nexus"} 2`,
		`ehr_receiver_appointments_quarantined_total{ehr="nexus"} 1`,
	} {
		if !strings.Contains(metrics.Body.String(), line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// TestRateLimit: over the limit a request with the right API key gets 429
// before anything else is read; one with a wrong key does not spend the
// budget and gets 401.
func TestRateLimit(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), func(c *Config) { c.RequestsPerSecond, c.Burst = 0.001, 1 })
	if w, _ := ts.post(t, batchOf(entry("rl"))); w.Code != 200 {
		t.Fatalf("within the burst: %d %s", w.Code, w.Body)
	}
	big := bytes.Repeat([]byte(" "), 2001)
	w, id := ts.post(t, big, badSignature())
	// The next token is 1000 s away at 0.001/s.
	ts.expect(t, w, id, big, want{status: 429,
		body:    `{"message":"too many requests; retry after the number of seconds in Retry-After","success":false,"code":429}`,
		headers: map[string]string{"Retry-After": "1000"}, outcome: store.OutcomeRateLimited})
	w, id = ts.post(t, big, header("X-API-Key", "wrong"))
	ts.expect(t, w, id, big, want{status: 401, body: `{"message":"missing or invalid X-API-Key","success":false,"code":401}`,
		outcome: store.OutcomeUnauthorized})
}

// refusedURL is a database URL whose port refuses connections.
func refusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now: connections are refused
	return "postgres://nobody@" + addr + "/none?sslmode=disable&connect_timeout=2"
}

// TestDatabaseUnavailable: a database that cannot be reached gets 503 with
// Retry-After; the delivery row cannot be written either, which is logged.
func TestDatabaseUnavailable(t *testing.T) {
	ts := newTestServer(t, refusedURL(t), nil)
	body := batchOf(entry("down"))
	w, id := ts.post(t, body)
	ts.expectAnswer(t, w, id, want{status: 503,
		body:    `{"message":"the database is unavailable; the batch was not stored, retry later","success":false,"code":503}`,
		headers: map[string]string{"Retry-After": "5"}, outcome: store.OutcomeUnavailable})
	ts.srv.deliveries.flush(context.Background())
	if !strings.Contains(ts.log.String(), `"msg":"Could not record failed deliveries; records dropped","ehr":"nexus","dropped":1,"error":`) {
		t.Errorf("the lost delivery row is not logged:\n%s", ts.log)
	}
	if line := ts.logLine(t, id); line["level"] != "ERROR" || line["error"] == nil {
		t.Errorf("log line %v, want an error with the store's error", line)
	}
}

// TestDatabaseError: a database that refuses the batch for another reason
// (here a constraint no row meets) gets 500, and the failure is in the
// delivery log.
func TestDatabaseError(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	if _, err := ts.db.Exec(`ALTER TABLE appointments ADD CONSTRAINT handler_test_refuses CHECK (false) NOT VALID`); err != nil {
		t.Fatal(err)
	}
	body := batchOf(entry("refused"))
	w, id := ts.post(t, body)
	ts.expect(t, w, id, body, want{status: 500,
		body:    `{"message":"internal error; the batch was not stored","success":false,"code":500}`,
		outcome: store.OutcomeError, delivered: true, items: 1, hashed: true})
	if line := ts.logLine(t, id); line["level"] != "ERROR" || line["error"] == nil {
		t.Errorf("log line %v, want an error with the store's error", line)
	}
}

// outcomeConstants reads the Outcome constants out of receiver/store's
// source, so that a new one cannot be missed by the docs test.
func outcomeConstants(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("store/*.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				if typ, ok := vs.Type.(*ast.Ident); !ok || typ.Name != "Outcome" {
					continue
				}
				for _, v := range vs.Values {
					lit, ok := v.(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Fatalf("%s: an Outcome constant that is not a string literal", fset.Position(v.Pos()))
					}
					s, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, s)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no Outcome constants found in receiver/store")
	}
	slices.Sort(out)
	return out
}

// TestOperationsListsEveryOutcome keeps docs/operations.md's table of
// outcomes equal to the constants.
func TestOperationsListsEveryOutcome(t *testing.T) {
	raw, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z_]+)` \\|")
	var documented []string
	inTable := false
	for line := range strings.SplitSeq(string(raw), "\n") {
		switch {
		case strings.HasPrefix(line, "| outcome |"):
			inTable = true
		case inTable && !strings.HasPrefix(line, "|"):
			inTable = false
		case inTable:
			if m := row.FindStringSubmatch(line); m != nil {
				documented = append(documented, m[1])
			}
		}
	}
	slices.Sort(documented)
	if want := outcomeConstants(t); !slices.Equal(documented, want) {
		t.Errorf("docs/operations.md lists the outcomes %v, the constants are %v", documented, want)
	}
}

// TestLastSuccessGauge: the "EHR silent" alert's series starts at the
// process's start and moves only on a 200.
func TestLastSuccessGauge(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	clock := time.Unix(1_900_000_000, 0)
	ts.srv.now = func() time.Time { return clock }
	start := testutil.ToFloat64(ts.srv.metrics.lastSuccess)
	if start <= 0 {
		t.Fatalf("last success %v before any delivery, want the start time", start)
	}
	if w, _ := ts.post(t, batchOf(entry("a")), badSignature()); w.Code != http.StatusUnauthorized {
		t.Fatalf("bad signature: %d", w.Code)
	}
	if got := testutil.ToFloat64(ts.srv.metrics.lastSuccess); got != start {
		t.Errorf("a 401 moved the last success from %v to %v", start, got)
	}
	if w, _ := ts.post(t, batchOf(entry("b"))); w.Code != http.StatusOK {
		t.Fatalf("good delivery: %d %s", w.Code, w.Body)
	}
	if got := testutil.ToFloat64(ts.srv.metrics.lastSuccess); got != 1_900_000_000 {
		t.Errorf("last success after a 200 is %v, want 1900000000", got)
	}
}

// panickingStore panics on a write, as a bug below the handler would.
type panickingStore struct{}

func (panickingStore) Write(context.Context, store.Batch) (store.Result, error) { panic("a bug") }
func (panickingStore) RecordDeliveries(context.Context, []store.Delivery) error { return nil }
func (panickingStore) Ping(context.Context) error                               { return nil }

// A panic is answered 500 and counted with the other answers, so that
// EHRReceiverServerErrors sees a payload that trips a bug however often the
// vendor retries it; the log says only that it happened.
func TestPanicIsAnsweredAndCounted(t *testing.T) {
	cfg := validConfig()
	cfg.RequestsPerSecond, cfg.Burst = 1e6, 1e6
	buf := &syncBuffer{}
	srv, err := New(cfg, panickingStore{}, slog.New(slog.NewJSONHandler(buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, h: srv.Handler(), log: buf}
	scrape := func() string { return scrapeMetrics(srv) }
	const before = `ehr_receiver_requests_total{code="500",ehr="nexus"} 0` + "\n"
	if m := scrape(); !strings.Contains(m, before) {
		t.Errorf("before any request, metrics lack %q", before)
	}
	for range 2 {
		if w, _ := ts.post(t, batchOf(entry("apt-panic"))); w.Code != http.StatusInternalServerError {
			t.Errorf("status %d, want 500; body %s", w.Code, w.Body)
		}
	}
	m := scrape()
	for _, want := range []string{
		`ehr_receiver_requests_total{code="500",ehr="nexus"} 2` + "\n",
		`ehr_receiver_request_duration_seconds_count{code="500",ehr="nexus"} 2` + "\n",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if n := strings.Count(buf.String(), `"msg":"Handler panicked"`); n != 2 {
		t.Errorf("%d panic lines, want 2; log:\n%s", n, buf)
	}
	if strings.Contains(buf.String(), "apt-panic") {
		t.Errorf("the log holds a field of the payload:\n%s", buf)
	}
}
