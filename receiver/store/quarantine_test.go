package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// invalidRaw is an invalid entry as a sender wrote it.
func invalidRaw(id string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"appointment":{"id":%q,"start_time":"13/45/2026 99:99"},"patient":{"first_name":"Zoë"}}`, id))
}

// quarantining is a request under onInvalid: Quarantine: the valid
// entries, then the invalid ones, as the receiver passes them.
func quarantining(valid []payload.Entry, raws ...json.RawMessage) Batch {
	b := batch(valid...)
	b.Delivery.Outcome, b.Delivery.ItemCount = OutcomeQuarantined, len(valid)+len(raws)
	for i, r := range raws {
		k := len(valid) + i
		b.Quarantined = append(b.Quarantined, Quarantined{Index: k, Raw: r, Errors: []payload.FieldError{
			{Index: k, Field: fmt.Sprintf("appointments[%d].appointment.start_time", k), Message: "must be a date and time MM/DD/YYYY HH:MM"}}})
	}
	return b
}

// again is b sent again (its 200 lost): the same items in a new request.
func again(b Batch) Batch {
	r := batch(b.Entries...)
	r.Delivery.Outcome, r.Delivery.ItemCount, r.Delivery.BodySHA256 = b.Delivery.Outcome, b.Delivery.ItemCount, b.Delivery.BodySHA256
	r.Quarantined = b.Quarantined
	return r
}

// quarantineRows are the EHR's quarantined entries as request id, entry
// index and whether the content is kept, in id order.
func quarantineRows(t *testing.T, s interface {
	Select(dest any, query string, args ...any) error
}) []string {
	t.Helper()
	var rows []string
	if err := s.Select(&rows, `SELECT d.request_id || ' #' || q.entry_index || CASE WHEN q.raw IS NULL THEN ' dropped'
		WHEN q.replayed_at IS NOT NULL THEN ' replayed' ELSE '' END
		FROM quarantined_entries q JOIN webhook_deliveries d ON d.id = q.delivery_id WHERE q.ehr = $1 ORDER BY q.id`, ehr); err != nil {
		t.Fatal(err)
	}
	return rows
}

// A request whose 200 was lost is sent again: its appointments are no-ops
// (content hash) and so, now, are its quarantined entries: each is kept
// once, and counts as a duplicate the second time. A different invalid
// entry still gets a row of its own, an entry twice in one batch is kept
// once, and another EHR's quarantine is its own.
func TestWriteRetriedQuarantineKeptOnce(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	a, b := invalidRaw("apt-a"), invalidRaw("apt-b")
	first := quarantining([]payload.Entry{minimalEntry("apt-1")}, a, b)
	if res := mustWrite(t, s, first); res != (Result{Written: 1, Quarantined: 2}) {
		t.Fatalf("first delivery: %+v, want 1 written, 2 quarantined", res)
	}
	retried := again(first)
	if res := mustWrite(t, s, retried); res != (Result{Duplicates: 3}) {
		t.Errorf("the retry: %+v, want its 3 items duplicates (1 appointment, 2 quarantined entries already held)", res)
	}
	req := first.Delivery.RequestID
	if diff := cmp.Diff([]string{req + " #1", req + " #2"}, quarantineRows(t, db)); diff != "" {
		t.Errorf("quarantined entries after the retry (-want +got):\n%s", diff)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'quarantined'`); n != 2 {
		t.Errorf("%d quarantined deliveries, want 2: the retry is a delivery of its own", n)
	}

	c := invalidRaw("apt-c")
	other := quarantining(nil, c, a)
	if res := mustWrite(t, s, other); res != (Result{Quarantined: 1, Duplicates: 1}) {
		t.Errorf("a new invalid entry beside a held one: %+v, want 1 quarantined, 1 duplicate", res)
	}
	d := invalidRaw("apt-d")
	twice := quarantining(nil, d, d)
	if res := mustWrite(t, s, twice); res != (Result{Quarantined: 1, Duplicates: 1}) {
		t.Errorf("one invalid entry twice in a batch: %+v, want 1 quarantined, 1 duplicate", res)
	}
	elsewhere := quarantining(nil, a)
	elsewhere.Delivery.EHR = "medicat"
	if res := mustWrite(t, s, elsewhere); res != (Result{Quarantined: 1}) {
		t.Errorf("another EHR's identical entry: %+v, want it quarantined", res)
	}
	want := []string{req + " #1", req + " #2", other.Delivery.RequestID + " #0", twice.Delivery.RequestID + " #0"}
	if diff := cmp.Diff(want, quarantineRows(t, db)); diff != "" {
		t.Errorf("quarantined entries (-want +got):\n%s", diff)
	}
	// The first copy's row is the one kept, its errors with it; every
	// row's hash is of its content as sent.
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries WHERE raw_sha256 = sha256(raw) AND octet_length(raw_sha256) = 32`); n != 5 {
		t.Errorf("%d rows whose raw_sha256 is the SHA-256 of raw, want 5", n)
	}
	var errs string
	if err := db.Get(&errs, `SELECT q.errors::text FROM quarantined_entries q JOIN webhook_deliveries d ON d.id = q.delivery_id
		WHERE d.request_id = $1 AND q.entry_index = 1`, req); err != nil || errs == "[]" {
		t.Errorf("the kept entry's errors: %s (%v)", errs, err)
	}
}

// Two requests of one group (one statement) with the same invalid entry:
// the first request's is kept, the second's counts as a duplicate.
func TestWriteGroupKeepsIdenticalQuarantinedEntryOnce(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	a := invalidRaw("apt-a")
	first := quarantining([]payload.Entry{minimalEntry("apt-1")}, a)
	// Not the same appointment again: the batcher never groups two
	// requests naming one.
	group := []*request{queued(t, first), queued(t, quarantining(nil, a))}
	s.commit(group, false)
	var got []Result
	for _, r := range group {
		o := <-r.done
		if o.err != nil {
			t.Fatal(o.err)
		}
		got = append(got, o.res)
	}
	if diff := cmp.Diff([]Result{{Written: 1, Quarantined: 1}, {Duplicates: 1}}, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{first.Delivery.RequestID + " #1"}, quarantineRows(t, db)); diff != "" {
		t.Errorf("quarantined entries (-want +got):\n%s", diff)
	}
}

// Only a pending entry (neither replayed nor emptied by retention) stands
// in the way of a new copy: once a replay stored it, or retention dropped
// its content, the same invalid entry is kept again, as the one a replay
// can act on. Retention drops the content's hash with the content.
func TestWriteQuarantineKeptAgainOnceNotPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := newStore(t)
	first := quarantining(nil, invalidRaw("apt-a"))
	mustWrite(t, s, first)
	var id int64
	if err := db.Get(&id, `SELECT id FROM quarantined_entries`); err != nil {
		t.Fatal(err)
	}
	// What a replay's statement does besides writing the entry.
	replay := batch()
	replay.Delivery.Outcome, replay.Replayed = OutcomeReplayed, []int64{id}
	mustWrite(t, s, replay)

	keptAgain := again(first)
	if res := mustWrite(t, s, keptAgain); res != (Result{Quarantined: 1}) {
		t.Errorf("after the replay: %+v, want the entry kept again", res)
	}
	if res := mustWrite(t, s, again(first)); res != (Result{Duplicates: 1}) {
		t.Errorf("a retry of that: %+v, want a duplicate", res)
	}
	p, ran, err := s.Prune(ctx, ehr, Retention{QuarantineContent: time.Hour}, time.Now().Add(48*time.Hour))
	if err != nil || !ran || p.QuarantineContent != 2 {
		t.Fatalf("Prune: %+v, ran %v, %v; want the 2 entries' content dropped", p, ran, err)
	}
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries WHERE raw_sha256 IS NOT NULL`); n != 0 {
		t.Errorf("%d hashes left after their content was dropped", n)
	}
	last := again(first)
	if res := mustWrite(t, s, last); res != (Result{Quarantined: 1}) {
		t.Errorf("after retention dropped the content: %+v, want the entry kept again", res)
	}
	want := []string{first.Delivery.RequestID + " #0 dropped", keptAgain.Delivery.RequestID + " #0 dropped", last.Delivery.RequestID + " #0"}
	if diff := cmp.Diff(want, quarantineRows(t, db)); diff != "" {
		t.Errorf("quarantined entries (-want +got):\n%s", diff)
	}
}

// Rows written before migration 6 (or by a receiver of the previous
// release during the upgrade) have no hash: they are kept as they are,
// even an identical pair, and an identical entry arriving now is kept once
// more, then once.
func TestWriteQuarantineBesideRowsWithoutHash(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	old := quarantining(nil, invalidRaw("apt-a"))
	mustWrite(t, s, old)
	if _, err := db.Exec(`INSERT INTO quarantined_entries (ehr, delivery_id, entry_index, raw, errors)
		SELECT ehr, delivery_id, 1, raw, errors FROM quarantined_entries`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE quarantined_entries SET raw_sha256 = NULL`); err != nil {
		t.Fatal(err)
	}
	if res := mustWrite(t, s, again(old)); res != (Result{Quarantined: 1}) {
		t.Errorf("beside rows without a hash: %+v, want the entry kept", res)
	}
	if res := mustWrite(t, s, again(old)); res != (Result{Duplicates: 1}) {
		t.Errorf("a retry of that: %+v, want a duplicate", res)
	}
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries`); n != 3 {
		t.Errorf("%d quarantined entries, want 3", n)
	}
}

// Two retries of one request written by two statements at once (two
// groups, here two receivers): one row. First a statement whose snapshot
// predates the other's commit (it waited for an appointment's row lock
// meanwhile), then one that finds the other's row still uncommitted and
// waits for it.
func TestWriteRetriedQuarantineInTwoStatementsAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := pgtest.NewDatabase(t)
	s, db := openStore(t, u)
	other, _ := openStore(t, u) // another replica
	base := minimalEntry("apt-0")
	mustWrite(t, s, batch(base))
	waiting := func(n int) func() bool {
		return func() bool {
			return count(t, db, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, storeSessions) == n
		}
	}

	t.Run("CommittedWhileItWaited", func(t *testing.T) {
		raw := invalidRaw("apt-x")
		lock, err := db.Beginx()
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = lock.Rollback() }()
		if _, err := lock.Exec(`SELECT 1 FROM appointments WHERE ehr = $1 AND external_id = 'apt-0' FOR UPDATE`, ehr); err != nil {
			t.Fatal(err)
		}
		slow := quarantining([]payload.Entry{withStatus(base, "arrived")}, raw)
		got := make(chan Result, 1)
		go func() {
			res, err := s.Write(ctx, slow)
			if err != nil {
				t.Error(err)
			}
			got <- res
		}()
		waitFor(t, 10*time.Second, "the first statement waiting for apt-0", waiting(1))
		fast := quarantining(nil, raw)
		if res := mustWrite(t, other, fast); res != (Result{Quarantined: 1}) {
			t.Errorf("the retry on the other replica: %+v, want the entry kept", res)
		}
		if err := lock.Commit(); err != nil {
			t.Fatal(err)
		}
		if res := <-got; res != (Result{Written: 1, Duplicates: 1}) {
			t.Errorf("the statement that waited: %+v, want 1 written and the entry a duplicate", res)
		}
		if diff := cmp.Diff([]string{fast.Delivery.RequestID + " #0"}, quarantineRows(t, db)); diff != "" {
			t.Errorf("quarantined entries (-want +got):\n%s", diff)
		}
	})

	t.Run("WaitsForTheOneInFlight", func(t *testing.T) {
		if _, err := db.Exec(`DELETE FROM quarantined_entries`); err != nil {
			t.Fatal(err)
		}
		raw := invalidRaw("apt-y")
		changed := withStatus(base, "cancelled")
		// The first statement inserts its quarantined entry, then waits
		// to insert its history row, which an open transaction holds.
		lock, err := db.Beginx()
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = lock.Rollback() }()
		if _, err := lock.Exec(`INSERT INTO appointment_history (ehr, appointment_external_id, status, start_time, content_hash, delivery_id)
			VALUES ($1, 'apt-0', 'cancelled', now(), $2, (SELECT min(id) FROM webhook_deliveries))`, ehr, hashOf(t, changed)); err != nil {
			t.Fatal(err)
		}
		first := quarantining([]payload.Entry{changed}, raw)
		got := make(chan Result, 1)
		go func() {
			res, err := s.Write(ctx, first)
			if err != nil {
				t.Error(err)
			}
			got <- res
		}()
		waitFor(t, 10*time.Second, "the first statement waiting for its history row", waiting(1))
		second := make(chan Result, 1)
		go func() {
			res, err := other.Write(ctx, quarantining(nil, raw))
			if err != nil {
				t.Error(err)
			}
			second <- res
		}()
		waitFor(t, 10*time.Second, "the retry waiting for the first statement's quarantined entry", waiting(2))
		if err := lock.Rollback(); err != nil {
			t.Fatal(err)
		}
		if res := <-got; res != (Result{Written: 1, Quarantined: 1}) {
			t.Errorf("the first statement: %+v, want 1 written, 1 quarantined", res)
		}
		if res := <-second; res != (Result{Duplicates: 1}) {
			t.Errorf("the retry that waited: %+v, want the entry a duplicate", res)
		}
		if diff := cmp.Diff([]string{first.Delivery.RequestID + " #1"}, quarantineRows(t, db)); diff != "" {
			t.Errorf("quarantined entries (-want +got):\n%s", diff)
		}
	})
}

// Two receivers writing the same requests at once, their invalid entries
// in opposite orders, round after round: each entry is kept once, every
// entry is counted once as quarantined or duplicate, and the statements
// never deadlock (they insert in content order).
func TestWriteRetriedQuarantineRaceKeepsOneRowWithoutDeadlocks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u := pgtest.NewDatabase(t)
	s, db := openStore(t, u)
	other, _ := openStore(t, u)
	const rounds, entries = 200, 6
	for round := range rounds {
		raws := make([]json.RawMessage, entries)
		reversed := make([]json.RawMessage, entries)
		for i := range raws {
			raws[i] = invalidRaw(fmt.Sprintf("apt-%d-%d", round, i))
			reversed[entries-1-i] = raws[i]
		}
		var wg sync.WaitGroup
		results := make([]Result, 2)
		for k, st := range []*Store{s, other} {
			b := quarantining(nil, raws...)
			if k == 1 {
				b = quarantining(nil, reversed...)
			}
			wg.Go(func() {
				res, err := st.Write(ctx, b)
				if err != nil {
					t.Errorf("round %d, receiver %d: %v", round, k, err)
				}
				results[k] = res
			})
		}
		wg.Wait()
		if q, d := results[0].Quarantined+results[1].Quarantined, results[0].Duplicates+results[1].Duplicates; q != entries || d != entries {
			t.Errorf("round %d: %+v; want %d quarantined and %d duplicates in all", round, results, entries, entries)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries`); n != rounds*entries {
		t.Errorf("%d quarantined entries, want %d: each kept once", n, rounds*entries)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	if n := deadlocks(t, s, db); n != 0 {
		t.Errorf("%d deadlocks", n)
	}
}
