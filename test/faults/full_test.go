package faults

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// TestServerFullSharesItsConnections: the server has slots for two of the
// receiver's connections only (here its role's CONNECTION LIMIT, as
// max_connections reached by other clients does; SQLSTATE 53300 for every
// other), and the receiver's sessions were just cut (a restart, or a
// DBA's pg_terminate_backend). The receiver writes through the two it
// gets: before, each query that wanted a third connection failed, and 63
// % of the requests were answered 503 while /dbz flapped. Once the slots
// are back the pool grows again.
func TestServerFullSharesItsConnections(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	roleURL := pgtest.NewRole(t, dbURL, `SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public`)
	u, err := url.Parse(roleURL)
	if err != nil {
		t.Fatal(err)
	}
	role := u.User.Username()
	r := startReceiver(t, roleURL)
	admin := openDB(t, dbURL)
	gen := harness.NewGen("full")
	client := harness.NewClient(32)
	ctx := context.Background()

	const senders = 16
	var (
		mu      sync.Mutex
		phase   = "before"
		answers = map[string]map[int]int{"before": {}, "cut": {}, "full": {}, "after": {}}
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	for s := range int64(senders) {
		wg.Go(func() {
			for k := int64(0); ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				a := harness.Post(ctx, client, r.URL, gen.Body(s*10_000_000+k*20, 20), "")
				mu.Lock()
				answers[phase][a.Status]++
				mu.Unlock()
			}
		})
	}
	setPhase := func(p string) {
		mu.Lock()
		phase = p
		mu.Unlock()
	}
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := admin.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	time.Sleep(2 * time.Second)
	setPhase("cut")
	exec(`ALTER ROLE ` + role + ` CONNECTION LIMIT 2`)
	exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1`, role)
	time.Sleep(time.Second)
	setPhase("full")
	fullFrom := time.Now()
	time.Sleep(7 * time.Second)
	setPhase("after")
	fullTo := time.Now()
	exec(`ALTER ROLE ` + role + ` CONNECTION LIMIT -1`)
	time.Sleep(15 * time.Second) // past poolCapFor and a ping
	var sessions int
	if err := admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE usename = $1`, role).Scan(&sessions); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()

	t.Logf("answers: %v; the receiver's sessions once the slots were back: %d", answers, sessions)
	full := answers["full"]
	total := 0
	for code, n := range full {
		total += n
		if code != 200 && code != 503 {
			t.Errorf("%d requests answered %d while the server was full", n, code)
		}
	}
	if full[200] < 100 || full[503] > total/20 {
		t.Errorf("while the server was full: %v; want at least 100 answered 200, and 503 for at most 5 %%", full)
	}
	if sessions < 4 {
		t.Errorf("%d sessions of the receiver 15 s after the slots were back; want the 4 its workers use, or more", sessions)
	}
	_, scrape, err := harness.Get(r.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(scrape, `ehr_receiver_database_connections_refused_total{ehr="`+harness.EHR+`"}`) ||
		strings.Contains(scrape, `ehr_receiver_database_connections_refused_total{ehr="`+harness.EHR+`"} 0`+"\n") {
		t.Errorf("the refused connections are not counted on /metrics")
	}
	log := r.Log()
	for _, want := range []string{"The database refused a new connection", "Opening new database connections again"} {
		if !strings.Contains(log, `"msg":"`+want) {
			t.Errorf("no %q line in the receiver's log", want)
		}
	}
	// The store logs through slog's default logger, which names the EHR.
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "database connections again") || strings.Contains(line, "refused a new connection") {
			if !strings.Contains(line, `"ehr":"`+harness.EHR+`"`) {
				t.Errorf("the pool's log line does not name its EHR: %s", line)
			}
		}
	}
	// /dbz held: no "Database unreachable" line while the server was full
	// (the cut itself may give one).
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `"Database unreachable"`) {
			continue
		}
		var rec struct {
			Time time.Time `json:"time"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("a log line that is not JSON: %v", err)
		}
		if rec.Time.After(fullFrom) && rec.Time.Before(fullTo) {
			t.Errorf("the receiver said the database was unreachable while it wrote through its two sessions (at %s)", rec.Time.Format(time.RFC3339Nano))
		}
	}
}
