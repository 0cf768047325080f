package contract

import (
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// Behind PgBouncer in session mode (its defaults otherwise, no
// ignore_startup_parameters) a receiver migrates, stores a delivery, takes
// its retry as a no-op, and applies its retention run after run: its
// session advisory lock is released each time.
func TestBehindPgBouncerInSessionMode(t *testing.T) {
	dbURL := pgtest.NewEmptyDatabase(t)
	pooled := pgtest.NewPgBouncer(t, dbURL, "session")
	r := startReceiver(t, pooled, "--retain-history", "8760h", "--retention-interval", "200ms")

	body := batch(t, entry(t, "pooled", nil))
	expect(t, r.post(body), 200)
	expect(t, r.post(body), 200)
	if !strings.Contains(r.Log(), `"written":0,"duplicates":1`) {
		t.Error("the retry was not logged as a duplicate")
	}
	d := db(t, dbURL)
	if n := queryInt(t, d, `SELECT count(*) FROM appointment_history WHERE appointment_external_id = 'pooled'`); n != 1 {
		t.Errorf("history rows of the appointment: %d, want 1", n)
	}
	for deadline := time.Now().Add(10 * time.Second); strings.Count(r.Log(), `"msg":"Retention applied"`) < 3; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the retention did not run three times in 10 s")
		}
	}
	if strings.Contains(r.Log(), `"msg":"Retention failed`) {
		t.Error("a retention run failed")
	}
}

// Behind PgBouncer in transaction mode a receiver refuses to run: its
// write statement is prepared per session and its retention's, replay's
// and migrations' locks are session locks, which would leak. It stays out
// of its Service and says why in /dbz (the operator's DatabaseReachable);
// the webhook answers 503 with Retry-After.
func TestBehindPgBouncerInTransactionModeIsRefused(t *testing.T) {
	dbURL := pgtest.NewEmptyDatabase(t)
	r := startReceiver(t, pgtest.NewPgBouncer(t, dbURL, "transaction"))
	if code, err := probe(r.MetricsURL + "/readyz"); err != nil || code != 503 {
		t.Errorf("/readyz: %d %v, want 503", code, err)
	}
	if dbz := get(t, r.MetricsURL+"/dbz"); !strings.Contains(dbz, `"cause":"a pooler in transaction mode: the receiver needs session mode"`) {
		t.Errorf("/dbz does not name the cause: %s", dbz)
	}
	a := r.post(batch(t, entry(t, "refused", nil)))
	expect(t, a, 503)
	if a.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	if !strings.Contains(r.Log(), "use session mode (PgBouncer pool_mode = session)") {
		t.Error("the log does not say what to change")
	}
}
