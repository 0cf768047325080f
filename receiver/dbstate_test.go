package receiver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/auth"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// These tests cover the database's state (the monitor, /dbz, the gauges)
// and the background migration, in process, with Run's background work
// started as Run starts it.

// syncBuffer is a log the background goroutines write while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// count is the number of log lines with this message.
func (b *syncBuffer) count(msg string) int {
	return strings.Count(b.String(), `"msg":"`+msg+`"`)
}

// bgServer is a Server on a real store whose background work (database
// monitor, migration) runs, but whose handlers are called in process.
type bgServer struct {
	srv   *Server
	h     http.Handler
	met   http.Handler
	log   *syncBuffer
	began time.Time // its background work's start
}

// newBGServer serves validConfig() on a store on dbURL; migrate makes it
// migrate in the background. Its background work stops when the test ends.
func newBGServer(t *testing.T, dbURL string, migrate bool) *bgServer {
	t.Helper()
	st, err := store.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	cfg := validConfig()
	cfg.RequestsPerSecond, cfg.Burst = 1e6, 1e6
	log := &syncBuffer{}
	srv, err := New(cfg, st, slog.New(slog.NewJSONHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if migrate {
		srv.MigrateInBackground(st)
	}
	began := time.Now()
	t.Cleanup(srv.startBackground(context.Background())) // runs before the store closes
	return &bgServer{srv: srv, h: srv.Handler(), met: srv.MetricsHandler(), log: log, began: began}
}

func (b *bgServer) post(body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, syncURL, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", validConfig().APIKey)
	req.Header.Set("X-Webhook-Signature", auth.Sign(validConfig().Secret, body))
	w := httptest.NewRecorder()
	b.h.ServeHTTP(w, req)
	return w
}

func (b *bgServer) get(path string) (int, string) {
	w := httptest.NewRecorder()
	b.met.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
	return w.Code, w.Body.String()
}

func (b *bgServer) dbz(t *testing.T) dbReport {
	t.Helper()
	code, body := b.get("/dbz")
	var r dbReport
	if err := json.Unmarshal([]byte(body), &r); err != nil || code != 200 {
		t.Fatalf("/dbz: %d %q (%v)", code, body, err)
	}
	if _, err := time.Parse(time.RFC3339, r.Since); err != nil {
		t.Errorf("/dbz since %q is not RFC 3339", r.Since)
	}
	return r
}

// expectMetrics checks that /metrics has each line, and none of absent.
func (b *bgServer) expectMetrics(t *testing.T, lines []string, absent ...string) {
	t.Helper()
	_, m := b.get("/metrics")
	for _, l := range lines {
		if !strings.Contains(m, l+"\n") {
			t.Errorf("metrics lack %q", l)
		}
	}
	for _, a := range absent {
		if strings.Contains(m, a) {
			t.Errorf("metrics have %q", a)
		}
	}
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
	}
}

const unavailableBody = `{"message":"the database is unavailable; the batch was not stored, retry later","success":false,"code":503}`

// TestStartWithoutDatabase: a receiver whose database is down at start is
// ready, answers 503 with Retry-After without trying the database, and
// stores the first request after the database came back and the background
// migration succeeded. Then an outage: the first failed write has the
// database marked down at once, and the connections the restart broke do
// not make the state flap afterwards.
func TestStartWithoutDatabase(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	dbURL := cluster.NewEmptyDatabase(t)
	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	b := newBGServer(t, dbURL, true)
	// The first attempt fails at once (connection refused): ready.
	eventually(t, 5*time.Second, "/readyz 200", func() bool { code, _ := b.get("/readyz"); return code == 200 })
	if code, _ := b.get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	for range 3 {
		w := b.post(batchOf(entry("down")))
		if w.Code != 503 || w.Body.String() != unavailableBody || w.Header().Get("Retry-After") != "5" {
			t.Errorf("before the migration: %d %s Retry-After %q", w.Code, w.Body, w.Header().Get("Retry-After"))
		}
	}
	// The monitor's first ping and the migration's first attempt run
	// side by side: either may fail first.
	eventually(t, 5*time.Second, "/dbz unreachable", func() bool { return b.dbz(t).Database == "unreachable" })
	if r := b.dbz(t); r.Migrated || r.Cause != "connection refused" {
		t.Errorf("/dbz %+v, want not migrated, and why", r)
	}
	b.expectMetrics(t, []string{`ehr_receiver_database_up{ehr="nexus"} 0`, `ehr_receiver_database_migrated{ehr="nexus"} 0`,
		`ehr_receiver_requests_total{code="503",ehr="nexus"} 3`, `ehr_receiver_database_errors_total{ehr="nexus"} 0`})
	logs := b.log.String()
	if b.log.count("Database unreachable") != 1 || b.log.count("Migration failed; the webhook answers 503 until one succeeds") < 1 {
		t.Errorf("want one line for the database going down and one per failed migration:\n%s", logs)
	}
	if n := strings.Count(logs, "the schema is not migrated yet"); n != 3 {
		t.Errorf("%d request lines say why they got a 503 (not migrated), want 3:\n%s", n, logs)
	}
	// Nothing tried the database for the requests: no delivery row either.
	if strings.Contains(logs, "Could not record failed deliveries") {
		t.Errorf("a request tried the database before the migration:\n%s", logs)
	}

	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	var w *httptest.ResponseRecorder
	eventually(t, 20*time.Second, "a 200 after the database came back", func() bool {
		w = b.post(batchOf(entry("up")))
		if w.Code != 200 && w.Code != 503 {
			t.Fatalf("after the database came back: %d %s", w.Code, w.Body)
		}
		return w.Code == 200
	})
	t.Logf("first 200 %s after PostgreSQL came back", time.Since(started).Round(time.Millisecond))
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM appointments WHERE external_id = 'up'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("the request answered 200: %d rows (%v)", n, err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM appointments WHERE external_id = 'down'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("requests answered 503: %d rows (%v)", n, err)
	}
	if r := b.dbz(t); r.Database != "reachable" || !r.Migrated {
		t.Errorf("/dbz %+v, want reachable and migrated", r)
	}
	b.expectMetrics(t, []string{`ehr_receiver_database_up{ehr="nexus"} 1`, `ehr_receiver_database_migrated{ehr="nexus"} 1`})
	if b.log.count("Database unreachable") != 1 || b.log.count("Database reachable") != 1 || b.log.count("Database migrated") != 1 {
		t.Errorf("want one line per change:\n%s", b.log)
	}
	if !strings.Contains(b.log.String(), `"level":"WARN","msg":"Database reachable","ehr":"nexus","down_for":"`) {
		t.Errorf("the line for the database coming back is not at WARN with down_for:\n%s", b.log)
	}

	// Some writes first, so that the pool holds connections to break.
	for i := range 8 {
		if w := b.post(batchOf(entry(fmt.Sprint("before-", i)))); w.Code != 200 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	if w := b.post(batchOf(entry("during"))); w.Code != 503 || w.Header().Get("Retry-After") != "5" {
		t.Errorf("during the outage: %d %s", w.Code, w.Body)
	}
	stopped := time.Now()
	eventually(t, 2*time.Second, "the database marked down after a failed write", func() bool { return b.dbz(t).Database == "unreachable" })
	t.Logf("marked down %s after the failed write (the ping interval is %s)", time.Since(stopped).Round(time.Millisecond), pingInterval)
	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "a 200 after the outage", func() bool { return b.post(batchOf(entry("after"))).Code == 200 })
	for range 20 {
		b.post(batchOf(entry("after")))
	}
	time.Sleep(checkGap + pingTimeout)
	if b.log.count("Database unreachable") != 2 || b.log.count("Database reachable") != 2 {
		t.Errorf("want one line per change:\n%s", b.log)
	}
}

// TestReadinessWaitsForTheFirstMigration: while another replica holds the
// migration lock, a new receiver is not ready (a rolling update waits for
// it) and answers 503; once the lock is free it migrates and is ready.
func TestReadinessWaitsForTheFirstMigration(t *testing.T) {
	dbURL := pgtest.NewEmptyDatabase(t)
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const lockID = 0x6568725f6d6967 // receiver/store/migrations' advisory lock
	if _, err := conn.ExecContext(context.Background(), `SELECT pg_advisory_lock($1)`, lockID); err != nil {
		t.Fatal(err)
	}
	b := newBGServer(t, dbURL, true)
	time.Sleep(1500 * time.Millisecond)
	if code, body := b.get("/readyz"); code != 503 || body != "starting\n" {
		t.Errorf("/readyz while the first migration waits: %d %q", code, body)
	}
	if w := b.post(batchOf(entry("early"))); w.Code != 503 || w.Header().Get("Retry-After") != "5" {
		t.Errorf("before the migration: %d %s", w.Code, w.Body)
	}
	if r := b.dbz(t); r.Database != "reachable" || r.Migrated {
		t.Errorf("/dbz %+v, want reachable and not migrated", r)
	}
	if _, err := conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock($1)`, lockID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "/readyz 200", func() bool { code, _ := b.get("/readyz"); return code == 200 })
	if w := b.post(batchOf(entry("late"))); w.Code != 200 {
		t.Errorf("after the migration: %d %s", w.Code, w.Body)
	}
	if n := b.log.count("Migration failed; the webhook answers 503 until one succeeds"); n != 0 {
		t.Errorf("%d failed attempts logged, want none (the attempt waited for the lock)", n)
	}
}

// TestDatabaseStateOneLinePerChange: many requests failing on an
// unreachable database log its state once, and readiness does not follow
// it.
func TestDatabaseStateOneLinePerChange(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // connections are refused
	b := newBGServer(t, "postgres://nobody@"+addr+"/none?sslmode=disable&connect_timeout=2", false)
	eventually(t, 3*time.Second, "/readyz 200 once the first ping has failed", func() bool { code, _ := b.get("/readyz"); return code == 200 })
	if r := b.dbz(t); r.Database != "unreachable" || r.Cause != "connection refused" {
		t.Errorf("/dbz %+v, want unreachable with its cause", r)
	}
	for range 10 {
		if w := b.post(batchOf(entry("x"))); w.Code != 503 || w.Header().Get("Retry-After") != "5" {
			t.Errorf("%d %s", w.Code, w.Body)
		}
	}
	if n := b.log.count("Database unreachable"); n != 1 {
		t.Errorf("%d lines for the database going down, want 1:\n%s", n, b.log)
	}
	if r := b.dbz(t); r.Database != "unreachable" || !r.Migrated {
		t.Errorf("/dbz %+v, want unreachable and (assumed) migrated", r)
	}
	b.expectMetrics(t, []string{`ehr_receiver_database_up{ehr="nexus"} 0`, `ehr_receiver_database_migrated{ehr="nexus"} 1`,
		`ehr_receiver_database_errors_total{ehr="nexus"} 10`})
}

// TestUnansweredPingIsUnreachable: a database that accepts and never
// answers (frozen with SIGSTOP, as behind a network dropping packets) is
// reported unreachable once a ping has gone unanswered for pingTimeout,
// not "reachable" for as long as lib/pq's read hangs; reachable again once
// it answers; and the monitor stops at once while a ping hangs.
func TestUnansweredPingIsUnreachable(t *testing.T) {
	t.Parallel() // a cluster of its own; mostly waiting
	cluster := pgtest.NewCluster(t)
	dbURL := cluster.NewDatabase(t)
	st, err := store.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	log := &syncBuffer{}
	srv, err := New(validConfig(), st, slog.New(slog.NewJSONHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	b := &bgServer{srv: srv, met: srv.MetricsHandler(), log: log}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watched := make(chan struct{})
	go func() { srv.db.watch(ctx, st.Ping, nil); close(watched) }()
	eventually(t, 10*time.Second, "the database reachable", func() bool { return b.dbz(t).Database == "reachable" })

	thaw := cluster.Freeze(t)
	// The next ping is at most pingInterval away; it counts as failed
	// pingTimeout after it started.
	eventually(t, pingInterval+pingTimeout+2*time.Second, "the frozen database reported unreachable",
		func() bool { return b.dbz(t).Database == "unreachable" })
	if !strings.Contains(log.String(), `"msg":"Database unreachable","ehr":"nexus","since":"`) ||
		!strings.Contains(log.String(), errNoAnswer.Error()) {
		t.Errorf("no line for the database going down with %q:\n%s", errNoAnswer, log)
	}
	b.expectMetrics(t, []string{`ehr_receiver_database_up{ehr="nexus"} 0`})

	thaw()
	eventually(t, pingInterval+pingTimeout+2*time.Second, "the thawed database reported reachable",
		func() bool { return b.dbz(t).Database == "reachable" })

	// Frozen again: the monitor stops while its ping hangs.
	cluster.Freeze(t)
	eventually(t, pingInterval+pingTimeout+2*time.Second, "the frozen database reported unreachable again",
		func() bool { return b.dbz(t).Database == "unreachable" })
	cancel()
	select {
	case <-watched:
	case <-time.After(time.Second):
		t.Error("the database monitor did not stop within 1s while its ping hung")
	}
}

// TestDatabaseUpAbsentUntilKnown: before any ping or write the gauge is
// absent, not 0, and /dbz says unknown.
func TestDatabaseUpAbsentUntilKnown(t *testing.T) {
	srv, err := New(validConfig(), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	b := &bgServer{srv: srv, met: srv.MetricsHandler()}
	b.expectMetrics(t, []string{`ehr_receiver_database_migrated{ehr="nexus"} 1`}, "ehr_receiver_database_up{")
	if r := b.dbz(t); r.Database != "unknown" || !r.Migrated {
		t.Errorf("/dbz %+v", r)
	}
	// Not started: /readyz waits for Run.
	if code, _ := b.get("/readyz"); code != 503 {
		t.Errorf("/readyz %d before Run", code)
	}
}

func TestJittered(t *testing.T) {
	d := migrateFirstRetry
	for range 10 {
		for range 100 {
			if j := jittered(d); j < d/2 || j > d {
				t.Fatalf("jittered(%s) = %s, want within [%s, %s]", d, j, d/2, d)
			}
		}
		d = min(2*d, migrateMaxRetry)
	}
	if d != migrateMaxRetry {
		t.Errorf("the back-off reached %s, want the cap %s", d, migrateMaxRetry)
	}
}

// TestNotReadyWhileTheDatabaseRefusesTheSettings: a new receiver whose
// database refuses its settings (here a database name that does not exist;
// a wrong password or host is the same) stays out of its Service, past the
// grace an unreachable database gets, so that a rollout carrying such a
// URL stops at its first new pod instead of replacing the pods that serve.
// Once the database answers it is ready, and stays so: what follows is an
// outage like any other.
func TestNotReadyWhileTheDatabaseRefusesTheSettings(t *testing.T) {
	adminURL := pgtest.NewEmptyDatabase(t)
	u, err := url.Parse(adminURL)
	if err != nil {
		t.Fatal(err)
	}
	name := "refused_" + strings.ReplaceAll(strings.TrimPrefix(u.Path, "/"), "-", "_")
	u.Path = "/" + name
	b := newBGServer(t, u.String(), true)

	eventually(t, 5*time.Second, "the first migration attempt", func() bool { return b.log.count("Migration failed; the webhook answers 503 until one succeeds") > 0 })
	want := "the database refuses this receiver's settings (see its log)\n"
	if code, body := b.get("/readyz"); code != 503 || body != want {
		t.Errorf("/readyz after the refused attempt: %d %q, want 503 %q", code, body, want)
	}
	time.Sleep(startGrace + time.Second - time.Since(b.began))
	if code, _ := b.get("/readyz"); code != 503 {
		t.Errorf("/readyz past the start's grace: %d, want 503", code)
	}
	if w := b.post(batchOf(entry("refused"))); w.Code != 503 {
		t.Errorf("a request while refused: %d %s", w.Code, w.Body)
	}
	if r := b.dbz(t); r.Database != "unreachable" || r.Cause != "SQLSTATE 3D000 (invalid_catalog_name)" {
		t.Errorf("/dbz %+v, want unreachable, naming the missing database's SQLSTATE", r)
	}

	admin, err := sql.Open("postgres", adminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec(`CREATE DATABASE ` + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`) })
	eventually(t, 15*time.Second, "/readyz 200 once the database exists", func() bool { code, _ := b.get("/readyz"); return code == 200 })
	eventually(t, 5*time.Second, "the migration", b.srv.db.migrated.Load)
	if w := b.post(batchOf(entry("stored"))); w.Code != 200 {
		t.Errorf("after the database was made: %d %s", w.Code, w.Body)
	}
	b.srv.db.observePing(&pq.Error{Code: "28P01"}) // a password changed under a serving pod
	if code, _ := b.get("/readyz"); code != 200 {
		t.Errorf("/readyz of a pod that has reached its database, refused since: %d, want 200", code)
	}
}

// TestNotReadyBeforeTheFirstPingWithoutMigration: with --migrate=false
// there is no migration attempt to wait for, so readiness waits for the
// first ping: a database that refuses the settings keeps the pod out of
// its Service from the start, and one that answers lets it in.
func TestNotReadyBeforeTheFirstPingWithoutMigration(t *testing.T) {
	good := pgtest.NewDatabase(t)
	u, err := url.Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/no_such_database"
	refused := newBGServer(t, u.String(), false)
	// The first ping may already have been refused (it takes a few
	// milliseconds, and a busy machine may run it first): not ready either way.
	if code, body := refused.get("/readyz"); code != 503 || body != "starting\n" && !strings.Contains(body, "refuses") {
		t.Errorf("/readyz before the first ping: %d %q, want 503 starting (or refused)", code, body)
	}
	eventually(t, 5*time.Second, "the refused ping", func() bool { _, body := refused.get("/readyz"); return strings.Contains(body, "refuses") })
	time.Sleep(startGrace + time.Second - time.Since(refused.began))
	if code, _ := refused.get("/readyz"); code != 503 {
		t.Errorf("/readyz past the start's grace: %d, want 503", code)
	}

	b := newBGServer(t, good, false)
	eventually(t, 5*time.Second, "/readyz 200 once the database answered", func() bool { code, _ := b.get("/readyz"); return code == 200 })
}

// Whether the database refuses the receiver's settings follows its last
// definite answer: a ping that timed out or a connection lost meanwhile
// leaves it as it was, so readiness does not open for a moment.
func TestRefusedFollowsDefiniteAnswers(t *testing.T) {
	d := newDBState("nexus", slog.New(slog.DiscardHandler))
	for _, step := range []struct {
		err  error
		want bool
	}{
		{&pq.Error{Code: "28P01"}, true},
		{errNoAnswer, true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{&pq.Error{Code: "3D000"}, true},
		{&pq.Error{Code: "57P03"}, true}, // starting: no verdict yet
		{nil, false},
		{errNoAnswer, false},
		{&pq.Error{Code: "42501"}, true},
		{&pq.Error{Code: "XX000"}, false}, // answered, with something else
	} {
		d.observePing(step.err)
		if got := d.refused.Load(); got != step.want {
			t.Errorf("after %v: refused %v, want %v", step.err, got, step.want)
		}
	}
}
