package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// TestOverlappingSenders has 16 senders write the same appointments,
// patients and practitioners in different orders at once: no answer may be
// an error (a deadlock or serialization failure that escaped the retries
// would be a 500 or 503), and the final state must be the last write of
// each appointment.
//
// "Last" is made well defined in two phases. In phase 1 every sender sends
// its own versions of shuffled, overlapping sets of appointments; which of
// them commits last is up to the scheduler, so phase 1's final state is not
// checked, only that every version was applied exactly once (each has its
// own content, so each adds one history row). Phase 2 starts after every
// phase-1 answer has arrived: each appointment's final version is sent
// exactly once (by one sender, still concurrently with the others, in
// shuffled batches), and each patient's final content is the same in every
// entry naming it. Whatever the interleaving, the last write of each
// appointment and patient is then its phase-2 version.
func TestOverlappingSenders(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	r := startReceiver(t, dbURL)
	const (
		senders       = 16
		rounds        = 6
		appointments  = 24
		patients      = 6
		practitioners = 4
		perBatch      = 8
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := harness.NewClient(senders)
	ids := make([]string, appointments)
	for i := range ids {
		ids[i] = fmt.Sprintf("overlap-%d", i)
	}
	v := func(i int, notes, phone string) version {
		return version{id: ids[i], patient: fmt.Sprintf("overlap-pat-%d", i%patients),
			practitioner: fmt.Sprintf("overlap-prov-%d", i%practitioners), notes: notes, phone: phone}
	}

	var (
		mu   sync.Mutex
		sent = map[string]int{} // versions of each appointment answered 200
	)
	// send posts each sender's batches concurrently; every answer must be 200.
	send := func(batches [senders][][]version) {
		var wg sync.WaitGroup
		for s := range senders {
			wg.Go(func() {
				for _, b := range batches[s] {
					a := harness.Post(ctx, client, r.URL, body(t, b), "")
					if a.Err != nil || a.Status != 200 {
						t.Errorf("sender %d: answer %d (%v): %s", s, a.Status, a.Err, a.Body)
						return
					}
					mu.Lock()
					for _, x := range b {
						sent[x.id]++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}

	// Phase 1: each sender, each round, a shuffled slice of the appointments
	// (never one twice in a batch) with content of its own.
	var phase1 [senders][][]version
	for s := range senders {
		rng := rand.New(rand.NewPCG(uint64(s), 1))
		for round := range rounds {
			var b []version
			for _, i := range rng.Perm(appointments)[:perBatch] {
				b = append(b, v(i, fmt.Sprintf("sender %d round %d", s, round), fmt.Sprintf("555-%02d-%02d", s, round)))
			}
			phase1[s] = append(phase1[s], b)
		}
	}
	send(phase1)
	if t.Failed() {
		t.FailNow()
	}

	// Phase 2: appointment i's final version comes from sender i%senders.
	var phase2 [senders][][]version
	for s := range senders {
		var b []version
		for i := s; i < appointments; i += senders {
			b = append(b, v(i, fmt.Sprintf("final %d", i), fmt.Sprintf("final-%d", i%patients)))
		}
		rand.New(rand.NewPCG(uint64(s), 2)).Shuffle(len(b), func(i, j int) { b[i], b[j] = b[j], b[i] })
		phase2[s] = [][]version{b}
	}
	send(phase2)

	d := openDB(t, dbURL)
	for i, id := range ids {
		var notes string
		var history int
		if err := d.QueryRowContext(ctx, `SELECT notes, (SELECT count(*) FROM appointment_history h WHERE h.appointment_external_id = a.external_id)
			FROM appointments a WHERE external_id = $1`, id).Scan(&notes, &history); err != nil {
			t.Fatalf("appointment %s: %v", id, err)
		}
		if want := fmt.Sprintf("final %d", i); notes != want {
			t.Errorf("appointment %s ends as %q, want its last write %q", id, notes, want)
		}
		// Every version has content of its own: each applied once.
		if history != sent[id] {
			t.Errorf("appointment %s has %d history rows, want one per version sent (%d)", id, history, sent[id])
		}
	}
	for p := range patients {
		var phone string
		if err := d.QueryRowContext(ctx, `SELECT phone FROM patients WHERE external_id = $1`, fmt.Sprintf("overlap-pat-%d", p)).Scan(&phone); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("final-%d", p); phone != want {
			t.Errorf("patient overlap-pat-%d ends with phone %q, want %q", p, phone, want)
		}
	}
	var n int
	if err := d.QueryRowContext(ctx, `SELECT count(*) FROM appointments`).Scan(&n); err != nil || n != appointments {
		t.Errorf("%d appointments stored (%v), want %d", n, err, appointments)
	}
}
