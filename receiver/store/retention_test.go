package store

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

const day = 24 * time.Hour

var retention = Retention{History: 365 * day, Quarantine: 365 * day, QuarantineContent: 30 * day, DeliveryLog: 90 * day}

// age makes the rows of a delivery, identified by its request id, as old
// as age: the delivery, its history rows and its quarantined entries.
func age(t *testing.T, db *sqlx.DB, requestID string, age time.Duration) {
	t.Helper()
	at := time.Now().Add(-age)
	for _, q := range []string{
		`UPDATE webhook_deliveries SET received_at = $2 WHERE request_id = $1`,
		`UPDATE appointment_history SET applied_at = $2 WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE request_id = $1)`,
		`UPDATE quarantined_entries SET created_at = $2 WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE request_id = $1)`,
	} {
		if _, err := db.Exec(q, requestID, at); err != nil {
			t.Fatal(err)
		}
	}
}

func quarantined(raw string) Batch {
	b := batch()
	b.Delivery.Outcome = OutcomeQuarantined
	b.Quarantined = []Quarantined{{Index: 0, Raw: json.RawMessage(raw),
		Errors: []payload.FieldError{{Field: "appointments[0].patient.gender", Message: "is required"}}}}
	return b
}

// failures are n rejected requests, each with its field errors.
func failures(n int, ehrName, prefix string) []Delivery {
	ds := make([]Delivery, n)
	for i := range ds {
		ds[i] = Delivery{EHR: ehrName, RequestID: fmt.Sprintf("%s-%d", prefix, i), ReceivedAt: time.Now(),
			Outcome: OutcomeRejected, StatusCode: 422, FieldErrorCount: 2,
			FieldErrors: []payload.FieldError{{Index: 0, Field: "appointments[0].patient", Message: "is required"}}}
	}
	return ds
}

// Rows of several ages, of two EHRs: Prune removes exactly this EHR's rows
// past their periods, in several batches, keeps a delivery row that an
// appointment still refers to, and drops a quarantined entry's content
// before its row. A refused request's field errors go with its row.
func TestPruneByAge(t *testing.T) {
	ctx := context.Background()
	s, db := newStore(t)
	// apt-1 written 400 days ago, changed 200 days ago: the first version's
	// history row and delivery go, the second's stay (the appointment
	// refers to its delivery).
	first, second := batch(minimalEntry("apt-1")), batch(minimalEntry("apt-1"))
	second.Entries[0].Appointment.Status = "cancelled"
	mustWrite(t, s, first)
	mustWrite(t, s, second)
	age(t, db, first.Delivery.RequestID, 400*day)
	age(t, db, second.Delivery.RequestID, 200*day)
	// Quarantined entries 400, 60 and 5 days old.
	qs := []Batch{quarantined(`{"a":1}`), quarantined(`{"a":2}`), quarantined(`{"a":3}`)}
	for i, b := range qs {
		mustWrite(t, s, b)
		age(t, db, b.Delivery.RequestID, []time.Duration{400 * day, 60 * day, 5 * day}[i])
	}
	// Failed requests: 1200 of 400 days ago (more than two batches), one of
	// 100 days, one of a day; and old ones of another EHR.
	if err := s.RecordDeliveries(ctx, failures(1200, ehr, "old")); err != nil {
		t.Fatal(err)
	}
	for _, d := range [][]Delivery{failures(1, ehr, "100d"), failures(1, ehr, "1d"), failures(10, "medicat", "other")} {
		if err := s.RecordDeliveries(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`UPDATE webhook_deliveries SET received_at = now() - interval '400 days' WHERE request_id LIKE 'old-%' OR ehr = 'medicat'`); err != nil {
		t.Fatal(err)
	}
	age(t, db, "100d-0", 100*day)
	age(t, db, "1d-0", day)

	deliveries := count(t, db, `SELECT count(*) FROM webhook_deliveries`)
	p, ran, err := s.Prune(ctx, ehr, retention, time.Now())
	if err != nil || !ran {
		t.Fatalf("Prune: ran %v, %v", ran, err)
	}
	// Deliveries: the first version's, the 400-day quarantine's, 1200 + 1
	// failures.
	want := Pruned{History: 1, Quarantine: 1, QuarantineContent: 1, DeliveryLog: 1203}
	if p != want {
		t.Fatalf("pruned %+v, want %+v", p, want)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries`); n != deliveries-1203 {
		t.Errorf("%d deliveries left, want %d", n, deliveries-1203)
	}
	for _, c := range []struct {
		query string
		want  int
	}{
		{`SELECT count(*) FROM webhook_deliveries WHERE request_id = '` + second.Delivery.RequestID + `'`, 1},
		{`SELECT count(*) FROM webhook_deliveries WHERE request_id = '` + first.Delivery.RequestID + `'`, 0},
		{`SELECT count(*) FROM webhook_deliveries WHERE request_id IN ('1d-0', '` + qs[1].Delivery.RequestID + `', '` + qs[2].Delivery.RequestID + `')`, 3},
		{`SELECT count(*) FROM webhook_deliveries WHERE ehr = 'medicat'`, 10},
		// A refused request's field errors are its row's: they go with it.
		{`SELECT count(*) FROM webhook_deliveries WHERE field_errors IS NOT NULL`, 11},
		{`SELECT count(*) FROM appointment_history WHERE appointment_external_id = 'apt-1'`, 1},
		{`SELECT count(*) FROM appointments WHERE external_id = 'apt-1' AND status = 'cancelled'`, 1},
		{`SELECT count(*) FROM quarantined_entries`, 2},
		{`SELECT count(*) FROM quarantined_entries WHERE raw IS NULL AND errors <> '[]'`, 1},
		{`SELECT count(*) FROM quarantined_entries WHERE raw = '{"a":3}'`, 1},
	} {
		if got := count(t, db, c.query); got != c.want {
			t.Errorf("%s: %d, want %d", c.query, got, c.want)
		}
	}
	if p, _, err := s.Prune(ctx, ehr, retention, time.Now()); err != nil || p != (Pruned{}) {
		t.Errorf("a second Prune removed %+v (%v), want nothing", p, err)
	}
}

// One pruner at a time per database, and a pruner never waits for a
// writer: rows another transaction holds are left for the next run.
func TestPruneLockAndSkipLocked(t *testing.T) {
	ctx := context.Background()
	s, db := newStore(t)
	b := batch(minimalEntry("apt-1"))
	mustWrite(t, s, b)
	if err := s.RecordDeliveries(ctx, failures(3, ehr, "old")); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE webhook_deliveries SET received_at = now() - interval '400 days'`); err != nil {
		t.Fatal(err)
	}
	age(t, db, b.Delivery.RequestID, 400*day)

	other, err := db.Connx(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, pruneLockID); err != nil {
		t.Fatal(err)
	}
	if p, ran, err := s.Prune(ctx, ehr, retention, time.Now()); err != nil || ran || p != (Pruned{}) {
		t.Fatalf("Prune while another holds the lock: ran %v, %+v, %v", ran, p, err)
	}
	if _, err := other.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, pruneLockID); err != nil {
		t.Fatal(err)
	}

	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.Exec(`SELECT 1 FROM appointment_history FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`SELECT 1 FROM webhook_deliveries WHERE request_id = 'old-0' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p, ran, err := s.Prune(ctx, ehr, retention, time.Now())
	if err != nil || !ran {
		t.Fatalf("Prune beside a writer: ran %v, %v", ran, err)
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Errorf("Prune took %v beside a writer: it waited for a lock", took)
	}
	if want := (Pruned{DeliveryLog: 2}); p != want {
		t.Errorf("pruned %+v beside a writer, want %+v (the locked rows left)", p, want)
	}
	_ = tx.Rollback()
	if p, _, err := s.Prune(ctx, ehr, retention, time.Now()); err != nil || p != (Pruned{History: 1, DeliveryLog: 1}) {
		t.Errorf("the next Prune removed %+v (%v), want the history row and old-0", p, err)
	}
}

// The delivery log's step reads a row still referred to without locking
// it, and goes on from where its last run stopped: a row freed behind that
// waits for the next full pass, a day after the last began, while rows
// coming past the period meanwhile go at every run.
func TestPruneDeliveryLogResumes(t *testing.T) {
	ctx := context.Background()
	s, db := newStore(t)
	r := Retention{DeliveryLog: 90 * day, History: 365 * day}
	first := batch(minimalEntry("apt-1"))
	mustWrite(t, s, first)
	age(t, db, first.Delivery.RequestID, 400*day)
	if err := s.RecordDeliveries(ctx, failures(1, ehr, "soon")); err != nil {
		t.Fatal(err)
	}
	age(t, db, "soon-0", 90*day-30*time.Minute)

	now := time.Now()
	if p, _, err := s.Prune(ctx, ehr, r, now); err != nil || p != (Pruned{History: 1}) {
		t.Fatalf("first run removed %+v (%v), want the history row only: the appointment refers to its delivery", p, err)
	}
	// A lock writes the row's header: xmax is the locker's transaction.
	if x := count(t, db, `SELECT xmax::text::bigint FROM webhook_deliveries WHERE request_id = '`+first.Delivery.RequestID+`'`); x != 0 {
		t.Errorf("the referred-to delivery row was locked (xmax %d)", x)
	}

	second := batch(minimalEntry("apt-1"))
	second.Entries[0].Appointment.Status = "cancelled"
	mustWrite(t, s, second) // the appointment now refers to the second delivery
	if p, _, err := s.Prune(ctx, ehr, r, now.Add(time.Hour)); err != nil || p != (Pruned{DeliveryLog: 1}) {
		t.Errorf("an hour later removed %+v (%v), want the failure that came past the period only", p, err)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries WHERE request_id = '`+first.Delivery.RequestID+`'`); n != 1 {
		t.Errorf("the freed delivery row went before the next full pass")
	}
	if p, _, err := s.Prune(ctx, ehr, r, now.Add(25*time.Hour)); err != nil || p != (Pruned{DeliveryLog: 1}) {
		t.Errorf("a day later removed %+v (%v), want the freed delivery row", p, err)
	}
}

func TestDeliveryPassNext(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	k := pruneKey{t0.Add(-100 * day), 42}
	for _, c := range []struct {
		name string
		d    deliveryPass
		now  time.Time
		want deliveryPass
	}{
		{"first run", deliveryPass{}, t0, deliveryPass{started: t0}},
		{"within a day", deliveryPass{after: k, started: t0, done: true}, t0.Add(23 * time.Hour), deliveryPass{after: k, started: t0, done: true}},
		{"a day on", deliveryPass{after: k, started: t0, done: true}, t0.Add(fullPassEvery), deliveryPass{started: t0.Add(fullPassEvery)}},
		{"a day on, pass unfinished", deliveryPass{after: k, started: t0}, t0.Add(30 * time.Hour), deliveryPass{after: k, started: t0}},
	} {
		if got := c.d.next(c.now); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestRetentionValidate(t *testing.T) {
	for _, r := range []Retention{{History: -time.Hour}, {Quarantine: day, QuarantineContent: 2 * day}} {
		if r.Validate() == nil {
			t.Errorf("%+v accepted", r)
		}
	}
	if err := (Retention{QuarantineContent: day}).Validate(); err != nil {
		t.Errorf("content period alone: %v", err)
	}
}

// lib/pq begins a transaction with BEGIN READ WRITE, which overrides a
// server's default_transaction_read_only (a managed service's, its disk
// full): retention must not delete there.
func TestPruneKeepsTheServersReadOnly(t *testing.T) {
	ctx := context.Background()
	u := pgtest.NewDatabase(t)
	s, db := openStore(t, u)
	if err := s.RecordDeliveries(ctx, failures(3, ehr, "old")); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE webhook_deliveries SET received_at = now() - interval '400 days'`); err != nil {
		t.Fatal(err)
	}
	pgtest.AlterDatabase(t, u, "default_transaction_read_only = on")
	newSessions(s)
	if _, _, err := s.Prune(ctx, ehr, retention, time.Now()); pq.As(err, "25006") == nil {
		t.Errorf("Prune on a read-only server: %v; want 25006", err)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries`); n != 3 {
		t.Errorf("%d deliveries left on a read-only server, want 3", n)
	}
}
