package faults

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// TestStartWithoutDatabase starts a receiver while PostgreSQL is down and
// its database has never been migrated: the process stays up and ready, and
// answers 503 with Retry-After fast, without trying the database per
// request. Once PostgreSQL starts, the background migration succeeds and a
// request is answered 200 and stored within seconds, by the same process.
func TestStartWithoutDatabase(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	dbURL := cluster.NewEmptyDatabase(t)
	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	r := startReceiver(t, dbURL) // returns once /readyz answers 200
	pid := r.Cmd.Process.Pid
	client := harness.NewClient(4)
	gen := harness.NewGen("nodb")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	for _, p := range []string{"/readyz", "/healthz"} {
		if code, _ := get(t, r.MetricsURL+p); code != 200 {
			t.Errorf("%s while the database is down: %d, want 200", p, code)
		}
	}
	// About ten seconds of requests: long enough for the migration's
	// back-off to grow past the ping interval.
	const requests = 500
	latencies := make([]time.Duration, 0, requests)
	for i := range requests {
		time.Sleep(20 * time.Millisecond)
		began := time.Now()
		a := harness.Post(ctx, client, r.URL, gen.Body(int64(i), 3), "")
		latencies = append(latencies, time.Since(began))
		if a.Err != nil || a.Status != 503 || a.RetryAfter != "5" ||
			!strings.Contains(string(a.Body), `"the database is unavailable; the batch was not stored, retry later"`) {
			t.Fatalf("request %d with the database down: %d %v Retry-After %q %s", i, a.Status, a.Err, a.RetryAfter, a.Body)
		}
	}
	p99 := harness.Percentile(latencies, 99)
	t.Logf("%d requests with the database down: 503 + Retry-After, p50 %.2f ms, p99 %.2f ms",
		requests, harness.Ms(harness.Percentile(latencies, 50)), harness.Ms(p99))
	if p99 >= 100*time.Millisecond {
		t.Errorf("p99 of the 503s is %s, want under 100ms", p99)
	}
	var dbz struct {
		Database string `json:"database"`
		Migrated bool   `json:"migrated"`
	}
	_, body := get(t, r.MetricsURL+"/dbz")
	if err := json.Unmarshal([]byte(body), &dbz); err != nil || dbz.Database != "unreachable" || dbz.Migrated {
		t.Errorf("/dbz while the database is down: %+v (%v)", dbz, err)
	}
	if _, m := get(t, r.MetricsURL+"/metrics"); !strings.Contains(m, `ehr_receiver_database_up{ehr="bench"} 0`) {
		t.Error("ehr_receiver_database_up is not 0 while the database is down")
	}

	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	startedAt := time.Now()
	var first int64 = -1
	for n := int64(requests); time.Since(startedAt) < 30*time.Second; n++ {
		a := harness.Post(ctx, client, r.URL, gen.Body(n, 3), "")
		if a.Err == nil && a.Status == 200 {
			first = n
			break
		}
		if a.Err != nil || a.Status != 503 {
			t.Fatalf("after PostgreSQL started: %d %v %s", a.Status, a.Err, a.Body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if first < 0 {
		t.Fatal("no 200 within 30s of PostgreSQL starting")
	}
	toFirst := time.Since(startedAt)
	t.Logf("first 200 %s after PostgreSQL started", toFirst.Round(time.Millisecond))
	if toFirst > 10*time.Second {
		t.Errorf("first 200 only %s after PostgreSQL started, want within 10s", toFirst)
	}
	stored := storedIDs(t, openDB(t, dbURL))
	for i := range int64(3) {
		if id := gen.AppointmentID(first + i); !stored[id] {
			t.Errorf("appointment %s was answered 200 but is not stored", id)
		}
	}
	if len(stored) != 3 {
		t.Errorf("%d appointments stored, want only the 3 of the request answered 200", len(stored))
	}
	if err := r.Alive(pid); err != nil {
		t.Fatal(err)
	}
	logs := r.Log()
	if strings.Count(logs, `"msg":"Database unreachable"`) != 1 || strings.Count(logs, `"msg":"Database reachable"`) != 1 ||
		strings.Count(logs, `"msg":"Database migrated"`) != 1 {
		t.Errorf("want one line per change of the database's state, not one per request:\n%s", r.LogTail())
	}
}

// get GETs url; an error fails the test.
func get(t *testing.T, url string) (status int, body string) {
	t.Helper()
	status, body, err := harness.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	return status, body
}
