package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// heldRows' rules, without a database: which writes go as probes, which
// are answered at once, and when a row is forgotten.
func TestHeldRows(t *testing.T) {
	var h heldRows
	now := time.Now()
	p := func(id, practitioner string) *prepared {
		e := minimalEntry(id)
		e.Practitioner.ID = practitioner
		pr, err := prepare(batch(e))
		if err != nil {
			t.Fatal(err)
		}
		return pr
	}
	timeout := fmt.Errorf("Write: %w", &pq.Error{Code: "55P03"})
	admit := func(what string, pr *prepared, wantProbe, wantBusy bool) []rowKey {
		t.Helper()
		probe, busy, claimed := h.admit(pr, now)
		if probe != wantProbe || busy != wantBusy {
			t.Errorf("%s: probe %v, busy %v; want %v, %v", what, probe, busy, wantProbe, wantBusy)
		}
		return claimed
	}

	admit("nothing held", p("a1", "prov-1"), false, false)
	h.note(p("a1", "prov-1"), false, fmt.Errorf("Write: %w", &pq.Error{Code: "23505"}), time.Second, now)
	admit("after an error other than a lock timeout", p("a2", "prov-1"), false, false)

	h.note(p("a1", "prov-1"), false, timeout, heldAfter-time.Millisecond, now)
	admit("after a lock timeout shorter than heldAfter", p("a2", "prov-1"), false, false)

	// A group's statement timed out: its rows are suspects, probed alone,
	// any number at once.
	h.note(p("a1", "prov-1"), false, timeout, 2*time.Second, now)
	admit("same practitioner, after a group's timeout", p("a2", "prov-1"), true, false)
	if c := admit("again", p("a3", "prov-1"), true, false); len(c) != 0 {
		t.Errorf("a suspect row was claimed: %v", c)
	}
	admit("another practitioner", p("a4", "prov-2"), false, false)

	// A probe's timed out: its rows are confirmed, one probe at a time.
	h.note(p("a2", "prov-1"), true, timeout, heldAfter, now)
	claimed := admit("first probe of a confirmed row", p("a5", "prov-1"), true, false)
	if len(claimed) == 0 {
		t.Fatal("the probe claimed no row")
	}
	admit("while that probe is in flight", p("a6", "prov-1"), false, true)
	admit("another practitioner meanwhile", p("a7", "prov-2"), false, false)
	h.release(claimed)
	h.release(admit("after the probe ended", p("a6", "prov-1"), true, false))

	// A commit forgets the rows it wrote.
	h.note(p("a8", "prov-1"), true, nil, time.Millisecond, now)
	admit("practitioner written since", p("a9", "prov-1"), false, false)
	admit("patient of the probe that timed out", p("a2", "prov-3"), true, false)

	// Forgotten after heldFor.
	now = now.Add(heldFor)
	admit("after heldFor", p("a2", "prov-3"), false, false)
	// a1's appointment and patient, touched by no write since, wait for
	// a sweep (heldSweepAt).
	if n := h.n.Load(); n != 2 {
		t.Errorf("%d rows held after heldFor, want 2", n)
	}
}

// A probe's lock_timeout is probeLockTimeout, or the database's when
// shorter (0 is none: longer).
func TestProbeLockTimeout(t *testing.T) {
	t.Parallel()
	_, db := newStore(t)
	for _, c := range []struct{ session, want string }{
		{"2s", probeLockTimeout}, {"0", probeLockTimeout}, {"50ms", "50ms"}, {"1min", probeLockTimeout},
	} {
		tx, err := db.BeginTxx(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		var got string
		if _, err := tx.Exec(`SELECT set_config('lock_timeout', $1, true)`, c.session); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(probeLockTimeoutSQL); err != nil {
			t.Fatal(err)
		}
		if err := tx.Get(&got, `SHOW lock_timeout`); err != nil {
			t.Fatal(err)
		}
		_ = tx.Rollback()
		if got != c.want {
			t.Errorf("session lock_timeout %s: the probe's is %s, want %s", c.session, got, c.want)
		}
	}
}

// Through Write, on a practitioner's row held by someone else's
// transaction: the first write waits the sessions' lock_timeout; the next
// goes as a probe, timing out after probeLockTimeout; while a probe of
// the confirmed row is in flight another write touching it is answered
// at once; once the row is free, writes touching it commit again.
func TestWriteTouchingAHeldRow(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	entry := func(id string) payload.Entry {
		e := minimalEntry(id)
		e.Practitioner.ID = "prov-held"
		return e
	}
	mustWrite(t, s, batch(entry("first")))
	tx := pgtest.HoldRows(t, db.DB, `SELECT 1 FROM practitioners WHERE external_id = 'prov-held' FOR UPDATE`)
	write := func(id string) (time.Duration, error) {
		t0 := time.Now()
		_, err := s.Write(context.Background(), batch(entry(id)))
		return time.Since(t0), err
	}
	if d, err := write("waits"); !isLockTimeout(err) || d < time.Second {
		t.Fatalf("the first write touching the held row: %v after %s; want a lock timeout after the sessions' %s", err, d, lockTimeout)
	}
	if d, err := write("probe"); !isLockTimeout(err) || d > time.Second {
		t.Fatalf("the next: %v after %s; want a lock timeout after about %s", err, d, probeLockTimeout)
	}
	inFlight := make(chan error, 1)
	go func() { _, err := write("probe-2"); inFlight <- err }()
	waitFor(t, 5*time.Second, "probe claiming the row", func() bool {
		s.held.mu.Lock()
		defer s.held.mu.Unlock()
		return len(s.held.probing) > 0
	})
	if d, err := write("meanwhile"); !errors.Is(err, ErrRowHeld) || !IsUnavailable(err) || d > 150*time.Millisecond {
		t.Errorf("a write while the row's probe is in flight: %v after %s; want ErrRowHeld at once", err, d)
	}
	if err := <-inFlight; !isLockTimeout(err) {
		t.Errorf("the probe in flight: %v; want a lock timeout", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"after", "after-2"} {
		if _, err := write(id); err != nil {
			t.Fatalf("%s, once the row is free: %v", id, err)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM appointments WHERE practitioner_external_id = 'prov-held'`); n != 3 {
		t.Errorf("%d appointments of the practitioner stored, want 3 (first, after, after-2)", n)
	}
}
