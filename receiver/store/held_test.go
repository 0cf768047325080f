package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/lib/pq/pqerror"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// heldRows' rules, without a database: which writes go as probes, which
// rows a write marks, and when a row is forgotten.
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
	probe := func(what string, pr *prepared, want bool) {
		t.Helper()
		if got := len(h.admit(pr, now)) > 0; got != want {
			t.Errorf("%s: probe %v, want %v", what, got, want)
		}
	}

	probe("nothing held", p("a1", "prov-1"), false)
	h.note(p("a1", "prov-1"), false, fmt.Errorf("Write: %w", &pq.Error{Code: "23505"}), time.Second, now, nil)
	probe("after an error other than a lock timeout", p("a2", "prov-1"), false)
	h.note(p("a1", "prov-1"), false, timeout, heldAfter-time.Millisecond, now, nil)
	probe("after a lock timeout shorter than heldAfter", p("a2", "prov-1"), false)

	// A group's timeout that names no row: all its rows are suspects.
	h.note(p("a1", "prov-1"), false, timeout, 2*time.Second, now, nil)
	probe("same practitioner, after a group's timeout", p("a2", "prov-1"), true)
	probe("same patient", p("a1", "prov-2"), true)
	probe("another practitioner", p("a4", "prov-2"), false)
	// A probe's that names none marks nothing (its rows found held were
	// locked: the row is one of its others).
	h.note(p("a5", "prov-1"), true, timeout, heldAfter, now, nil)
	probe("patient of that probe", p("a5", "prov-3"), false)

	// A commit forgets the rows it wrote.
	h.note(p("a6", "prov-1"), true, nil, time.Millisecond, now, nil)
	probe("practitioner written since", p("a7", "prov-1"), false)

	// The row named (the error's tuple, or lockHeld's stillHeld) is the
	// only one marked; a request of the group that does not touch it
	// marks nothing.
	held := rowKey{'r', ehr, "prov-held"}
	h.note(p("b1", "prov-held"), false, timeout, time.Second, now, &held)
	h.note(p("b2", "prov-4"), false, timeout, time.Second, now, &held)
	probe("the practitioner named", p("b3", "prov-held"), true)
	probe("the patient beside it", p("b1", "prov-5"), false)
	probe("the other request's practitioner", p("b4", "prov-4"), false)
	h.note(p("b3", "prov-held"), true, fmt.Errorf("Write: %w", stillHeld{held}), time.Millisecond, now.Add(time.Minute), &held)

	// Forgotten after heldFor without a write finding it held again.
	now = now.Add(heldFor)
	probe("a1's rows after heldFor", p("a1", "prov-9"), false)
	probe("the practitioner found still held a minute later", p("b5", "prov-held"), true)
	if n := h.n.Load(); n != 1 {
		t.Errorf("%d rows held after heldFor, want 1", n)
	}
}

// heldTuple reads the tuple from PostgreSQL's context of a lock wait, and
// only for the tables the write statement upserts.
func TestHeldTuple(t *testing.T) {
	for _, c := range []struct {
		code, where string
		table       byte
		ctid        string
	}{
		{"55P03", `while inserting index tuple (0,1) in relation "practitioners"`, 'r', "(0,1)"},
		{"55P03", `while locking tuple (0,5) in relation "practitioners"`, 'r', "(0,5)"},
		{"55P03", "while updating tuple (12,31) in relation \"patients\"\nSQL statement \"…\"", 'p', "(12,31)"},
		{"55P03", `while locking updated version (3,7) of tuple in relation "appointments"`, 'a', "(3,7)"},
		{"55P03", `while inserting index tuple (0,1) in relation "appointment_history"`, 0, ""},
		{"55P03", ``, 0, ""},
		{"40P01", `while locking tuple (0,5) in relation "practitioners"`, 0, ""},
	} {
		table, ctid, ok := heldTuple(fmt.Errorf("Write: %w", &pq.Error{Code: pqerror.Code(c.code), Where: c.where}))
		if table != c.table || ctid != c.ctid || ok != (c.table != 0) {
			t.Errorf("%s %q: %q %q %v; want %q %q", c.code, c.where, table, ctid, ok, c.table, c.ctid)
		}
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
// transaction: the first write waits the sessions' lock_timeout and marks
// that row alone; the next ones go as probes, which find it still locked
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
	tx := holdRows(t, db, `SELECT 1 FROM practitioners WHERE external_id = 'prov-held' FOR UPDATE`)
	write := func(id string) (time.Duration, error) {
		t0 := time.Now()
		_, err := s.Write(context.Background(), batch(entry(id)))
		return time.Since(t0), err
	}
	// A batch of two: the held practitioner's appointment, and another's.
	t0 := time.Now()
	if _, err := s.Write(context.Background(), batch(entry("waits"), minimalEntry("beside"))); !isLockTimeout(err) || time.Since(t0) < time.Second {
		t.Fatalf("the first write touching the held row: %v after %s; want a lock timeout after the sessions' %s", err, time.Since(t0), lockTimeout)
	}
	// Only the practitioner's row is marked: the other entry's rows, and
	// the patient and appointment beside it, are written as usual.
	s.held.mu.Lock()
	marked := maps.Clone(s.held.rows)
	s.held.mu.Unlock()
	if _, ok := marked[rowKey{'r', ehr, "prov-held"}]; len(marked) != 1 || !ok {
		t.Errorf("rows marked held: %v; want the practitioner's alone", slices.Collect(maps.Keys(marked)))
	}
	if _, err := s.Write(context.Background(), batch(minimalEntry("beside"))); err != nil {
		t.Fatalf("the other practitioner's appointment, sent again alone: %v", err)
	}
	for _, id := range []string{"probe", "probe-2"} {
		if d, err := write(id); !errors.Is(err, ErrRowHeld) || !IsUnavailable(err) || d > heldAfter {
			t.Fatalf("%s: %v after %s; want ErrRowHeld at once", id, err, d)
		}
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
