package faults

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// TestRowHeldElsewhereHoldsUpOnlyItsAppointment: a session of someone
// else's (a DBA's fix left in an open transaction) holds one appointment's
// row lock. A change of that appointment waits for it; the other
// appointments, sent one at a time as a quiet hour's traffic is, must not
// wait with it. The held one is answered 503 with Retry-After, not kept
// waiting for the batch's whole deadline, and stored once the lock goes.
func TestRowHeldElsewhereHoldsUpOnlyItsAppointment(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	r := startReceiver(t, dbURL)
	gen := harness.NewGen("lock")
	client := harness.NewClient(2)
	ctx := context.Background()
	if a := harness.Post(ctx, client, r.URL, gen.Body(0, 1), ""); a.Status != 200 {
		t.Fatalf("first version: %d %s", a.Status, a.Body)
	}

	admin := openDB(t, dbURL)
	tx, err := admin.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() //nolint:errcheck // the test's end
	if _, err := tx.Exec(`SELECT 1 FROM appointments WHERE external_id = $1 FOR UPDATE`, gen.AppointmentID(0)); err != nil {
		t.Fatal(err)
	}

	cancelled := bytes.Replace(gen.Body(0, 1), []byte(`"status":"booked"`), []byte(`"status":"cancelled"`), 1)
	held := make(chan harness.Answer, 1)
	heldSent := time.Now()
	go func() { held <- harness.Post(ctx, client, r.URL, cancelled, "") }()
	time.Sleep(100 * time.Millisecond) // its statement is waiting for the lock

	var slowest time.Duration
	for n := int64(1); n <= 20; n++ {
		t0 := time.Now()
		a := harness.Post(ctx, client, r.URL, gen.Body(n, 1), "")
		d := time.Since(t0)
		slowest = max(slowest, d)
		if a.Err != nil || a.Status != 200 {
			t.Fatalf("appointment %d, beside the held one: %d %v %s", n, a.Status, a.Err, a.Body)
		}
	}
	t.Logf("the slowest of 20 other appointments: %s", slowest.Round(time.Millisecond))
	if slowest > time.Second {
		t.Errorf("an appointment beside the held one took %s; want under 1s", slowest.Round(time.Millisecond))
	}

	a := <-held
	waited := time.Since(heldSent)
	t.Logf("the held appointment: %d after %s", a.Status, waited.Round(time.Millisecond))
	if a.Status != 503 || a.RetryAfter == "" {
		t.Errorf("the held appointment: %d (Retry-After %q) %s; want 503 with Retry-After", a.Status, a.RetryAfter, a.Body)
	}
	if waited > 5*time.Second {
		t.Errorf("the held appointment was answered after %s; want within 5s", waited.Round(time.Millisecond))
	}

	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if a := harness.Post(ctx, client, r.URL, cancelled, ""); a.Status != 200 {
		t.Fatalf("the held appointment once the lock is gone: %d %s", a.Status, a.Body)
	}
	var status string
	if err := admin.QueryRow(`SELECT status FROM appointments WHERE external_id = $1`, gen.AppointmentID(0)).Scan(&status); err != nil || status != "cancelled" {
		t.Errorf("the held appointment's status: %q %v; want cancelled", status, err)
	}
}
