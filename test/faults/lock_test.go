package faults

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
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
	tx := pgtest.HoldRows(t, admin, `SELECT 1 FROM appointments WHERE external_id = $1 FOR UPDATE`, gen.AppointmentID(0))

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

// TestHeldPractitionerHoldsUpOnlyItsAppointments: someone else's
// transaction holds a practitioner's row while the vendor keeps sending
// that practitioner's appointments from 20 connections at once (a day's
// schedule cancelled for illness), each again as soon as it is answered.
// Each of those waits for the row, a statement that waits holds the
// locks it already took on its other rows, and requests that arrive with
// them share their statement: before held rows were remembered, the other
// appointments, sent one at a time, were answered 503 after 2 s (0-1 of
// 3-4 stored in 6 s). Now the held practitioner's requests are answered
// 503, and the others as if nothing were held, past the first half
// second (the store's watch; before it, the first lock timeout).
func TestHeldPractitionerHoldsUpOnlyItsAppointments(t *testing.T) {
	const heldProv = 7
	gen := harness.NewGen("heldprov") // entry n names practitioner prov-(n mod 500)
	client := harness.NewClient(32)
	ctx := context.Background()
	r, dbURL := startWithPractitioner(t, client, gen, heldProv)
	admin := openDB(t, dbURL)
	tx := pgtest.HoldRows(t, admin, `UPDATE practitioners SET first_name = 'Jon' WHERE external_id = $1`, fmt.Sprintf("prov-%d", heldProv))

	const senders = 20
	stop := time.Now().Add(6 * time.Second)
	var (
		mu      sync.Mutex
		heldAns = map[int]int{}
		wg      sync.WaitGroup
	)
	for s := range int64(senders) {
		wg.Go(func() {
			for k := int64(1); time.Now().Before(stop); k++ {
				n := heldProv + 500*(s*100000+k) // a new appointment of the held practitioner
				a := harness.Post(ctx, client, r.URL, gen.Body(n, 1), "")
				mu.Lock()
				heldAns[a.Status]++
				mu.Unlock()
				if a.Status != 503 || a.RetryAfter == "" {
					t.Errorf("an appointment of the held practitioner: %d (Retry-After %q) %v; want 503 with Retry-After", a.Status, a.RetryAfter, a.Err)
					return
				}
			}
		})
	}
	var (
		latencies []time.Duration
		others    = map[int]int{}
	)
	for n := int64(1); time.Now().Before(stop); n++ {
		if n%500 == heldProv {
			continue
		}
		t0 := time.Now()
		a := harness.Post(ctx, client, r.URL, gen.Body(n, 1), "")
		latencies = append(latencies, time.Since(t0))
		others[a.Status]++
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	slices.Sort(latencies)
	p90 := latencies[len(latencies)*9/10]
	t.Logf("the held practitioner's appointments: %v; the others: %v, p50 %s, p90 %s, slowest %s", heldAns, others,
		latencies[len(latencies)/2].Round(time.Millisecond), p90.Round(time.Millisecond), latencies[len(latencies)-1].Round(time.Millisecond))
	if others[200] < len(latencies)*9/10 || len(latencies) < 20 {
		t.Errorf("%d other appointments answered 200 of %d sent: want 90 %% of at least 20", others[200], len(latencies))
	}
	if p90 > 500*time.Millisecond {
		t.Errorf("the other appointments' p90 latency is %s; want under 500ms", p90.Round(time.Millisecond))
	}

	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	n := int64(heldProv + 500*999)
	if a := harness.Post(ctx, client, r.URL, gen.Body(n, 1), ""); a.Status != 200 {
		t.Fatalf("an appointment of the practitioner once the lock is gone: %d %s", a.Status, a.Body)
	}
	var stored int
	if err := admin.QueryRow(`SELECT count(*) FROM appointments WHERE practitioner_external_id = $1`, fmt.Sprintf("prov-%d", heldProv)).Scan(&stored); err != nil || stored != 2 {
		t.Errorf("the practitioner's appointments stored: %d %v; want 2 (the first, and the one sent after the lock went)", stored, err)
	}
}

// TestHeldPractitionerHoldsUpOnlyItsBatches: as above, in batches, the
// vendor's usual form. A batch naming the held practitioner names others
// of the same clinic, which other batches name too. Those other batches
// must be written as usual, not answered 503 or kept waiting because they
// share a practitioner with a batch that waited for the held one.
func TestHeldPractitionerHoldsUpOnlyItsBatches(t *testing.T) {
	const heldProv, size, senders = 7, 20, 4
	gen := harness.NewGen("heldbatch") // entry n names practitioner prov-(n mod 500)
	client := harness.NewClient(16)
	ctx := context.Background()
	r, dbURL := startWithPractitioner(t, client, gen, heldProv)
	var (
		mu                   sync.Mutex
		held, others, unheld = map[int]int{}, map[int]int{}, map[int]int{}
		wg                   sync.WaitGroup
	)
	send := func(first int64, answers map[int]int) {
		a := harness.Post(ctx, client, r.URL, gen.Body(first, size), "")
		mu.Lock()
		answers[a.Status]++
		mu.Unlock()
	}
	// New appointments of prov-8 … prov-27: twelve of the practitioners
	// of the batches below, not the held one.
	sendOthers := func(s, from int64, until time.Time, answers map[int]int) {
		for k := from; time.Now().Before(until); k++ {
			send(8+500*(s*100_000+k), answers)
		}
	}
	// First without a row held: the rate to compare with.
	until := time.Now().Add(2 * time.Second)
	for s := range int64(senders) {
		wg.Go(func() { sendOthers(s, 50_000, until, unheld) })
	}
	wg.Wait()

	admin := openDB(t, dbURL)
	tx := pgtest.HoldRows(t, admin, `UPDATE practitioners SET first_name = 'Jon' WHERE external_id = $1`, fmt.Sprintf("prov-%d", heldProv))
	until = time.Now().Add(6 * time.Second)
	for s := range int64(senders) {
		// New appointments of prov-0 … prov-19, the held one among them.
		wg.Go(func() {
			for k := int64(1); time.Now().Before(until); k++ {
				send(500*(s*100_000+k), held)
			}
		})
		wg.Go(func() { sendOthers(s, 70_000, until, others) })
	}
	wg.Wait()
	t.Logf("batches naming the held practitioner: %v; the others: %v in 6 s, against %v in 2 s with no row held", held, others, unheld)
	if held[200] != 0 || held[503] == 0 {
		t.Errorf("batches naming the held practitioner: %v; want 503 only", held)
	}
	total := 0
	for _, n := range others {
		total += n
	}
	// An 18th of the rate with no row held at least, beside senders that
	// send the held practitioner's batches again at once, which take much
	// of the CPU (measured: 14-25 %; with the probes waiting for their
	// rows in their statements, 1-3 %).
	if others[200] < unheld[200]/6 || others[200] < total*9/10 {
		t.Errorf("the other batches: %v in 6 s; want 90 %% answered 200, and a sixth as many as in 2 s with no row held (%d)", others, unheld[200])
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if a := harness.Post(ctx, client, r.URL, gen.Body(500*999_999, size), ""); a.Status != 200 {
		t.Fatalf("a batch naming the practitioner once the lock is gone: %d %s", a.Status, a.Body)
	}
}

// startWithPractitioner starts a receiver on a new database and stores one
// appointment of practitioner prov-n (gen's entry n), so that its row
// exists to be held.
func startWithPractitioner(t *testing.T, client *http.Client, gen harness.Gen, n int64) (*harness.Receiver, string) {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	r := startReceiver(t, dbURL)
	if a := harness.Post(context.Background(), client, r.URL, gen.Body(n, 1), ""); a.Status != 200 {
		t.Fatalf("first appointment of prov-%d: %d %s", n, a.Status, a.Body)
	}
	return r, dbURL
}
