package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
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
	held := rowKey{'r', ehr, "prov-held"}
	h.note(p("a1", "prov-1"), timeout, now, nil)
	probe("after a lock timeout that found no row held elsewhere", p("a2", "prov-1"), false)
	probe("its patient", p("a1", "prov-2"), false)

	// The row found held (heldBy) is the only one marked; a request of the
	// group that does not touch it marks nothing.
	h.note(p("b1", "prov-held"), timeout, now, []rowKey{held})
	h.note(p("b2", "prov-4"), timeout, now, []rowKey{held})
	probe("the practitioner found held", p("b3", "prov-held"), true)
	probe("the patient beside it", p("b1", "prov-5"), false)
	probe("the other request's practitioner", p("b4", "prov-4"), false)
	h.note(p("b3", "prov-held"), fmt.Errorf("Write: %w", stillHeld{held}), now.Add(time.Minute), []rowKey{held})

	// A commit forgets the rows it wrote.
	other := rowKey{'p', ehr, "pat-b6"}
	h.note(p("b6", "prov-6"), timeout, now, []rowKey{other})
	probe("a patient found held", p("b6", "prov-7"), true)
	h.note(p("b6", "prov-7"), nil, now, nil)
	probe("the patient, written since", p("b6", "prov-8"), false)

	// Forgotten after heldFor without a write finding it held again.
	now = now.Add(heldFor)
	probe("the practitioner found still held a minute later", p("b5", "prov-held"), true)
	now = now.Add(time.Minute)
	probe("the practitioner, heldFor after that", p("b8", "prov-held"), false)
	if n := h.n.Load(); n != 0 {
		t.Errorf("%d rows held after heldFor, want none", n)
	}
}

// Which failures name a row held elsewhere without a database: a probe's
// stillHeld names its row; a lock timeout before heldAfter (a DBA's short
// lock_timeout, timing out on the receiver's own writes) and any other
// error name none.
func TestHeldBy(t *testing.T) {
	var s Store // no database: heldBy must not look
	k := rowKey{'r', ehr, "prov-held"}
	pr, err := prepare(batch(minimalEntry("a1")))
	if err != nil {
		t.Fatal(err)
	}
	group := []*request{{p: pr}}
	if got := s.heldBy(fmt.Errorf("Write: %w", stillHeld{k}), time.Millisecond, group); len(got) != 1 || got[0] != k {
		t.Errorf("stillHeld: %v, want %v", got, k)
	}
	if got := s.heldBy(fmt.Errorf("Write: %w", &pq.Error{Code: "55P03"}), heldAfter-time.Millisecond, group); got != nil {
		t.Errorf("a lock timeout shorter than heldAfter: %v, want none", got)
	}
	if got := s.heldBy(fmt.Errorf("Write: %w", &pq.Error{Code: "57014"}), heldAfter-time.Millisecond, group); got != nil {
		t.Errorf("a statement cancelled sooner than heldAfter: %v, want none", got)
	}
	if got := s.heldBy(fmt.Errorf("Write: %w", &pq.Error{Code: "23505"}), time.Second, group); got != nil {
		t.Errorf("another error: %v, want none", got)
	}
	if got := s.heldBy(nil, time.Second, group); got != nil {
		t.Errorf("no error: %v, want none", got)
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
	entry := practitionerStored(t, s, "prov-held")
	tx := pgtest.HoldRows(t, db.DB, `SELECT 1 FROM practitioners WHERE external_id = 'prov-held' FOR UPDATE`)
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

// A row the receiver's own sessions hold (another replica's statement, or
// one of this pool's waiting for a held row in turn) is not marked when a
// write times out on it, and a probe of a row marked earlier waits for
// such a session rather than answering 503: marking rows so held made
// other batches' probes find them locked, time after time
// (docs/decisions.md, "Rows found held").
func TestRowTheReceiverHoldsIsNotHeldElsewhere(t *testing.T) {
	t.Parallel()
	u := pgtest.NewDatabase(t)
	s, _ := openStore(t, u)
	entry := practitionerStored(t, s, "prov-busy")
	// A session named as the store's: the receiver's own, as far as the
	// store can tell.
	replica, err := sql.Open("postgres", withApplicationName(t, u, storeSessions))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Close() })
	tx := pgtest.HoldRows(t, replica, `SELECT 1 FROM practitioners WHERE external_id = 'prov-busy' FOR UPDATE`)
	if _, err := s.Write(context.Background(), batch(entry("waits"))); !isLockTimeout(err) {
		t.Fatalf("a write touching the row: %v; want a lock timeout", err)
	}
	if n := s.held.n.Load(); n != 0 {
		t.Errorf("%d rows marked held after a wait on the receiver's own session, want none", n)
	}

	// Marked earlier (by a DBA's hold since ended), and now held by the
	// receiver's own session a moment: the probe waits, and commits.
	k := rowKey{'r', ehr, "prov-busy"}
	pr, err := prepare(batch(entry("marked")))
	if err != nil {
		t.Fatal(err)
	}
	s.held.note(pr, errors.New("held"), time.Now(), []rowKey{k})
	done := make(chan error, 1)
	go func() { _, err := s.Write(context.Background(), batch(entry("probe"))); done <- err }()
	time.Sleep(50 * time.Millisecond)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("a probe of a row the receiver's own session held for 50 ms: %v; want it written", err)
	}
	if n := s.held.n.Load(); n != 0 {
		t.Errorf("%d rows marked held after the probe committed, want none", n)
	}
}

// A DBA's change made inside a savepoint since released (psql's
// ON_ERROR_ROLLBACK, a PL/pgSQL EXCEPTION block) leaves the row's xmax the
// subtransaction's id, whose lock in pg_locks ends at the RELEASE while
// the row stays locked until the transaction ends. The row is still found
// held, and the next write touching it is answered ErrRowHeld at once.
func TestRowHeldInAReleasedSavepointIsFound(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	entry := practitionerStored(t, s, "prov-sp")
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	for _, q := range []string{`SAVEPOINT pg_psql_temporary_savepoint`,
		`UPDATE practitioners SET first_name = 'Jon' WHERE external_id = 'prov-sp'`,
		`RELEASE pg_psql_temporary_savepoint`} {
		if _, err := tx.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Write(context.Background(), batch(entry("waits"))); !isLockTimeout(err) {
		t.Fatalf("the first write touching the row: %v; want a lock timeout", err)
	}
	if _, ok := s.held.rows[rowKey{'r', ehr, "prov-sp"}]; !ok {
		t.Errorf("the row changed in a released savepoint is not marked held")
	}
	t0 := time.Now()
	if _, err := s.Write(context.Background(), batch(entry("probe"))); !errors.Is(err, ErrRowHeld) || time.Since(t0) > heldAfter {
		t.Errorf("the next write: %v after %s; want ErrRowHeld at once", err, time.Since(t0))
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write(context.Background(), batch(entry("after"))); err != nil {
		t.Fatalf("once the row is free: %v", err)
	}
}

// A statement_timeout shorter than the sessions' lock_timeout ends a wait
// for a held row with 57014, not 55P03: the row is found held all the same.
func TestRowHeldPastStatementTimeoutIsFound(t *testing.T) {
	t.Parallel()
	s, db := openStore(t, withParam(t, pgtest.NewDatabase(t), "statement_timeout", "1000"))
	entry := practitionerStored(t, s, "prov-st")
	tx := pgtest.HoldRows(t, db.DB, `SELECT 1 FROM practitioners WHERE external_id = 'prov-st' FOR UPDATE`)
	if _, err := s.Write(context.Background(), batch(entry("waits"))); pq.As(err, "57014") == nil {
		t.Fatalf("the first write touching the row: %v; want 57014", err)
	}
	if n := s.held.n.Load(); n != 1 {
		t.Errorf("%d rows marked held after a statement_timeout on a held row, want 1", n)
	}
	_ = tx.Rollback()
}

// lib/pq begins a transaction with BEGIN READ WRITE, which overrides a
// server's default_transaction_read_only: a probe must still be refused.
func TestProbeKeepsTheServersReadOnly(t *testing.T) {
	t.Parallel()
	u := pgtest.NewDatabase(t)
	s, _ := openStore(t, u)
	entry := practitionerStored(t, s, "prov-ro")
	pr, err := prepare(batch(entry("marked")))
	if err != nil {
		t.Fatal(err)
	}
	s.held.note(pr, errors.New("held"), time.Now(), []rowKey{{'r', ehr, "prov-ro"}})
	pgtest.AlterDatabase(t, u, "default_transaction_read_only = on")
	newSessions(s)
	if _, err := s.Write(context.Background(), batch(entry("probe"))); pq.As(err, "25006") == nil {
		t.Errorf("a probe on a read-only server: %v; want 25006", err)
	}
}
