package contract

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/auth"
)

// Concurrent senders of overlapping appointments all get 200, on a
// database whose default isolation is serializable (a DBA's choice the
// receiver's sessions must not inherit: 40001 beyond the retries, 503).
func TestConcurrentSenders(t *testing.T) {
	u := pgtest.NewDatabase(t)
	pgtest.AlterDatabase(t, u, "default_transaction_isolation = serializable")
	r := startReceiver(t, u)
	d := db(t, u)
	const senders, rounds = 16, 10
	for code, n := range overlappingSenders(t, r, senders, rounds, 3) {
		if code != 200 {
			t.Errorf("%d requests answered %d", n, code)
		}
	}
	if n := queryInt(t, d, `SELECT count(*) FROM appointments`); n != 8 {
		t.Errorf("appointments: %d, want 8", n)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'stored'`); n != senders*rounds {
		t.Errorf("stored deliveries: %d, want %d", n, senders*rounds)
	}
}

// A database's lock_timeout shorter than one group's wait for another
// writing the same rows (a DBA's) gets 503 with Retry-After, never 500:
// the vendor's retry is the cure. Measured with 1 ms,
// 81 of 480 such requests were answered 500 before.
func TestShortLockTimeoutIsNoError(t *testing.T) {
	u := pgtest.NewDatabase(t)
	pgtest.AlterDatabase(t, u, "lock_timeout = '1ms'")
	r := startReceiver(t, u)
	codes := overlappingSenders(t, r, 16, 20, 20)
	for code, n := range codes {
		if code != 200 && code != 503 {
			t.Errorf("%d requests answered %d", n, code)
		}
	}
	if codes[200] == 0 {
		t.Errorf("no request stored: %v", codes)
	}
	t.Logf("answers: %v", codes)
}

// overlappingSenders runs senders concurrent senders of rounds requests of
// perRequest entries each, naming 8 appointments, 5 patients and 3
// practitioners across them all, and counts the answers by status (-1: no
// answer).
func overlappingSenders(t *testing.T, r *rcv, senders, rounds, perRequest int) map[int]int {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[int]int{}
	)
	for s := range senders {
		wg.Go(func() {
			for i := range rounds {
				var entries []map[string]any
				for k := range perRequest {
					id := fmt.Sprintf("conc-%d", (s+i+k)%8)
					entries = append(entries, entry(t, id, func(e map[string]any) {
						sub(e, "patient")["id"] = fmt.Sprintf("pat-%d", (s+k)%5)
						sub(e, "practitioner")["id"] = fmt.Sprintf("prov-%d", (i+k)%3)
						sub(e, "appointment")["notes"] = fmt.Sprintf("sender %d round %d entry %d", s, i, k)
					}))
				}
				body, _ := json.Marshal(map[string]any{"appointments": entries})
				req, _ := http.NewRequest(http.MethodPost, r.url+"/v2/webhooks/nexus/sync-appointments", strings.NewReader(string(body)))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-API-Key", apiKey)
				req.Header.Set("X-Webhook-Signature", auth.Sign([]byte(secret), body))
				code := -1
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
					code = resp.StatusCode
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return codes
}

func TestDatabaseOutage(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	r := startReceiver(t, cluster.NewDatabase(t))
	pid := r.Cmd.Process.Pid
	expect(t, r.post(batch(t, entry(t, "before", nil))), 200)

	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	a := r.post(batch(t, entry(t, "during", nil)))
	expect(t, a, 503)
	if a.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	// Neither probe follows the database: the pod stays in its Service and
	// keeps answering 503 with Retry-After itself.
	if code, err := probe(r.MetricsURL + "/readyz"); err != nil || code != 200 {
		t.Errorf("/readyz while the database is down: %d %v (it must not leave the Service)", code, err)
	}
	if code, err := probe(r.MetricsURL + "/healthz"); err != nil || code != 200 {
		t.Errorf("/healthz while the database is down: %d %v (it must not restart the pod)", code, err)
	}
	// The failed write has the receiver ping the database at once.
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		dbz := get(t, r.MetricsURL+"/dbz")
		if strings.Contains(dbz, `"database":"unreachable"`) && strings.Contains(dbz, `"migrated":true`) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("/dbz while the database is down: %s", dbz)
			break
		}
	}
	if m := get(t, r.MetricsURL+"/metrics"); !strings.Contains(m, `ehr_receiver_database_up{ehr="nexus"} 0`) {
		t.Errorf("metrics do not show the database down:\n%s", grep(m, "ehr_receiver_database"))
	}

	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		a = r.post(batch(t, entry(t, "after", nil)))
		if a.status == 200 {
			break
		}
		if a.status != 503 || time.Now().After(deadline) {
			t.Fatalf("after the database came back: %d %s", a.status, a.raw)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := r.Alive(pid); err != nil {
		t.Fatalf("during the outage: %v", err)
	}
	d := db(t, r.dbURL)
	if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id IN ('before', 'after')`); n != 2 {
		t.Errorf("appointments: %d, want before and after", n)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id = 'during'`); n != 0 {
		t.Error("an entry answered 503 was stored")
	}
	metrics := get(t, r.MetricsURL+"/metrics")
	if !strings.Contains(metrics, `ehr_receiver_requests_total{code="503",ehr="nexus"}`) ||
		strings.Contains(metrics, `ehr_receiver_database_errors_total{ehr="nexus"} 0`) ||
		!strings.Contains(metrics, `ehr_receiver_database_up{ehr="nexus"} 1`) {
		t.Errorf("metrics do not show the outage and the recovery:\n%s", grep(metrics, "ehr_receiver_"))
	}
	logs := r.Log()
	if strings.Count(logs, `"msg":"Database unreachable"`) != 1 || strings.Count(logs, `"msg":"Database reachable"`) != 2 {
		t.Errorf("want one line per change of the database's state (reachable at start, down, back):\n%s", logs)
	}
}

// A server that answers but takes no writes (a standby behind the URL
// during a failover, or a managed server set read-only when its disk is
// full) is an outage: 503 with Retry-After, the cause in /dbz, nothing
// lost, and writes again once it is writable, without a restart. The
// server is set read-only under the receiver's open connections.
func TestReadOnlyDatabase(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	r := startReceiver(t, cluster.NewDatabase(t))
	expect(t, r.post(batch(t, entry(t, "before", nil))), 200)
	admin := db(t, cluster.URL())
	setReadOnly := func(v string) {
		t.Helper()
		if _, err := admin.Exec(`ALTER SYSTEM SET default_transaction_read_only = ` + v); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(`SELECT pg_reload_conf()`); err != nil {
			t.Fatal(err)
		}
	}
	setReadOnly("on")
	// A session reads the reload before its next statement, so a request
	// may still be stored just after it: each attempt names a new
	// appointment, and the one answered 503 must not be stored.
	refused := ""
	for i, deadline := 0, time.Now().Add(5*time.Second); refused == ""; i++ {
		id := fmt.Sprintf("during-%d", i)
		switch a := r.post(batch(t, entry(t, id, nil))); {
		case a.status == 503:
			if a.header.Get("Retry-After") == "" {
				t.Error("503 without Retry-After")
			}
			refused = id
		case a.status != 200 || time.Now().After(deadline):
			t.Fatalf("while the server is read-only: %d %s, want 503", a.status, a.raw)
		default:
			time.Sleep(50 * time.Millisecond)
		}
	}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		dbz := get(t, r.MetricsURL+"/dbz")
		if strings.Contains(dbz, `"database":"unreachable"`) && strings.Contains(dbz, "read-only") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("/dbz while the server is read-only: %s", dbz)
			break
		}
	}
	if code, err := probe(r.MetricsURL + "/readyz"); err != nil || code != 200 {
		t.Errorf("/readyz while the server is read-only: %d %v (it must not leave the Service)", code, err)
	}

	setReadOnly("off")
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		a := r.post(batch(t, entry(t, "after", nil)))
		if a.status == 200 {
			break
		}
		if a.status != 503 || time.Now().After(deadline) {
			t.Fatalf("once the server is writable again: %d %s", a.status, a.raw)
		}
	}
	d := db(t, r.dbURL)
	if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id IN ('before', 'after')`); n != 2 {
		t.Errorf("appointments: %d, want before and after", n)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id = $1`, refused); n != 0 {
		t.Error("an entry answered 503 was stored")
	}
	if m := get(t, r.MetricsURL+"/metrics"); !strings.Contains(m, `ehr_receiver_requests_total{code="500",ehr="nexus"} 0`) {
		t.Errorf("a read-only server was answered 500:\n%s", grep(m, "ehr_receiver_requests_total"))
	}
}

func TestLogsHoldNoPatientData(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t), "--on-invalid", "Quarantine")
	body := specExample(t)
	expect(t, r.post(body), 200)
	bad := entry(t, "apt-12345", func(e map[string]any) { sub(e, "patient")["birth_date"] = "02/30/1990" })
	expect(t, r.post(batch(t, bad, entry(t, "apt-12345", nil))), 200)
	expect(t, r.post([]byte(`{"appointments":[{"patient":{"first_name":"Jane"}}]} trailing Jane`)), 400)
	expect(t, r.post(body, withHeader("X-Webhook-Signature", "sha256=nope-Jane")), 401)
	_ = r.Stop()

	logs := r.Log()
	if !strings.Contains(logs, `"msg":"Request handled"`) || !strings.Contains(logs, `"items":1`) {
		t.Fatalf("the request log lines are missing:\n%s", logs)
	}
	values := stringValues(t, body)
	values = append(values, "02/30/1990", "1990-05-15")
	for _, v := range values {
		if strings.Contains(logs, v) {
			t.Errorf("the logs contain a field value %q", v)
		}
	}
	// Every line is JSON and names its EHR once: the store's lines (the
	// migrations, the pool) too, which log through slog's default logger.
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var rec struct {
			EHR string `json:"ehr"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", line)
		} else if rec.EHR != ehr || strings.Count(line, `"ehr":`) != 1 {
			t.Errorf("log line does not name its EHR %q once: %q", ehr, line)
		}
	}

	// A rejected batch's log line names its invalid fields (what an SRE
	// tells the vendor), not the values sent.
	rejecting := startReceiver(t, pgtest.NewDatabase(t))
	sent := []string{"02/31/1991", strings.Repeat("Zyxw", 70), "45 minutes", "13/45/2026 99:99"}
	bad = entry(t, "apt-rejected", func(e map[string]any) {
		sub(e, "patient")["birth_date"] = sent[0]
		sub(e, "patient")["first_name"] = sent[1]
		sub(e, "appointment")["duration"] = sent[2]
		sub(e, "appointment")["start_time"] = sent[3]
	})
	expect(t, rejecting.post(batch(t, bad)), 422)
	_ = rejecting.Stop()
	logs = rejecting.Log()
	for _, want := range []string{`"field_errors":["appointments[0].appointment.start_time: `, `appointments[0].patient.birth_date: `,
		`appointments[0].patient.first_name: must be at most 255 characters"`, `"field_errors_listed":4`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the rejected request's log line lacks %s:\n%s", want, logs)
		}
	}
	for _, v := range sent {
		if strings.Contains(logs, v) {
			t.Errorf("the logs contain a rejected value %q", v)
		}
	}
}

func TestGracefulShutdown(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	body := specExample(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(r.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A request in flight: headers and half the body sent.
	fmt.Fprintf(conn, "POST /v2/webhooks/nexus/sync-appointments HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"+
		"X-API-Key: %s\r\nX-Webhook-Signature: %s\r\nContent-Length: %d\r\n\r\n", apiKey, auth.Sign([]byte(secret), body), len(body))
	half := len(body) / 2
	if _, err := conn.Write(body[:half]); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := r.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Readiness fails at once, while the request is still in flight.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(r.MetricsURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 503 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz did not fail after SIGTERM: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := conn.Write(body[half:]); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the in-flight request got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the in-flight request got %d", resp.StatusCode)
	}
	select {
	case <-r.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("the receiver did not exit after SIGTERM")
	}
	if r.ExitErr() != nil {
		t.Errorf("exit: %v", r.ExitErr())
	}
	logs := r.Log()
	if i, j := strings.Index(logs, "Requests drained"), strings.Index(logs, "Store closed"); i < 0 || j < i {
		t.Errorf("shutdown order not seen in logs:\n%s", logs)
	}
	d := db(t, r.dbURL)
	if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id = 'apt-12345'`); n != 1 {
		t.Error("the in-flight request was answered but not stored")
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	_, body, err := harness.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// probe GETs url and returns its status code.
func probe(url string) (int, error) {
	code, _, err := harness.Get(url)
	return code, err
}

// A receiver whose database stops answering (a frozen server: it takes
// the bytes and never answers, as behind a network that drops packets)
// still exits on SIGTERM, well within the pod's 40 s after the signal:
// the ping and the delivery log stuck in lib/pq's reads do not hold it.
func TestSIGTERMWithDatabaseNotAnswering(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	r := startReceiver(t, cluster.NewDatabase(t))
	if a := r.post(specExample(t)); a.status != http.StatusOK {
		t.Fatalf("before: %d %s", a.status, a.raw)
	}
	cluster.Freeze(t)
	// A request that fails (a wrong signature) is written to the delivery
	// log, and a ping runs every 5 s: both block on the frozen database.
	if a := r.post(specExample(t), withHeader("X-Webhook-Signature", "sha256="+strings.Repeat("0", 64))); a.status != http.StatusUnauthorized {
		t.Fatalf("bad signature: %d %s", a.status, a.raw)
	}
	time.Sleep(6 * time.Second)
	start := time.Now()
	if err := r.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.Exited():
	case <-time.After(30 * time.Second):
		t.Fatalf("the receiver did not exit within 30s of SIGTERM; its log:\n%s", r.LogTail())
	}
	t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	logs := r.Log()
	for _, want := range []string{`"msg":"Store closed"`, `"msg":"Closing the store failed"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s:\n%s", want, r.LogTail())
		}
	}
}

// TestConnectionsAreBounded: the webhook port serves at most
// receiver.MaxConnections connections at once; one more waits, unserved,
// until another closes, instead of each costing memory the in-flight budget
// does not see (15,000 idle connections took a receiver from 122 to 309 MB).
func TestConnectionsAreBounded(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	addr := strings.TrimPrefix(r.url, "http://")
	get := []byte("GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
	// served opens a connection, asks once and waits up to d for the answer.
	served := func(c net.Conn, d time.Duration) error {
		if _, err := c.Write(get); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(d))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	conns := make([]net.Conn, 0, receiver.MaxConnections)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range receiver.MaxConnections {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if err := served(c, 5*time.Second); err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
	}
	extra, err := net.Dial("tcp", addr) // the kernel's queue takes it
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if err := served(extra, time.Second); err == nil {
		t.Fatalf("connection %d was served while %d were open", receiver.MaxConnections+1, receiver.MaxConnections)
	}
	conns[0].Close()
	start := time.Now()
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(extra), nil) // its request is already sent
	if err != nil {
		t.Fatalf("the waiting connection once another closed: %v", err)
	}
	resp.Body.Close()
	t.Logf("connection %d served %s after one of the others closed", receiver.MaxConnections+1, time.Since(start).Round(time.Millisecond))
}

// TestEarlyAnswersReachSendersThatWriteFirst: a sender that writes its
// whole body before it reads (Python's urllib, many others) gets the
// answer of a check that comes before the body is read, not a reset
// connection it would take for an outage and retry: the receiver drains
// the body after answering.
func TestEarlyAnswersReachSendersThatWriteFirst(t *testing.T) {
	const limit = 1 << 20
	r := startReceiver(t, pgtest.NewDatabase(t), "--max-body-bytes", fmt.Sprint(limit))
	addr := strings.TrimPrefix(r.url, "http://")
	path := "/v2/webhooks/" + ehr + "/sync-appointments"
	large := bytes.Repeat([]byte(" "), 650_000)
	tooLarge := bytes.Repeat([]byte(" "), 4*limit)
	for _, tc := range []struct {
		name                  string
		method, path, ct, key string
		body                  []byte
		status                int
	}{
		{"body too large", "POST", path, "application/json", apiKey, tooLarge, 413},
		{"api key wrong", "POST", path, "application/json", apiKey + "x", large, 401},
		{"content type wrong", "POST", path, "text/plain", apiKey, large, 415},
		{"method PUT", "PUT", path, "application/json", apiKey, large, 405},
		{"ehr not served", "POST", "/v2/webhooks/medicat/sync-appointments", "application/json", apiKey, large, 404},
		{"unknown path", "POST", "/nowhere", "application/json", apiKey, large, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A small send buffer: the body cannot wait in the sockets'
			// buffers, so the write lasts until the receiver reads it, as
			// over a real network.
			_ = c.(*net.TCPConn).SetWriteBuffer(16 << 10)
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nX-API-Key: %s\r\nX-Webhook-Signature: %s\r\nContent-Length: %d\r\n\r\n",
				tc.method, tc.path, tc.ct, tc.key, auth.Sign([]byte(secret), tc.body), len(tc.body))
			if _, err := c.Write(append([]byte(head), tc.body...)); err != nil {
				t.Fatalf("writing the request (the receiver reset the connection?): %v", err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}

// stringValues is every string of at least 3 bytes in the JSON document
// body: the values a sender sent, which no log line or output may hold.
func stringValues(t *testing.T, body []byte) []string {
	t.Helper()
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	var values []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		case string:
			if len(v) >= 3 {
				values = append(values, v)
			}
		}
	}
	walk(doc)
	return values
}
