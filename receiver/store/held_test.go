package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
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
	p := func(id, practitioner string) *prepared { return preparedBy(t, id, practitioner) }
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

// preparedBy is a minimal appointment id seen by practitioner, prepared.
func preparedBy(t *testing.T, id, practitioner string) *prepared {
	t.Helper()
	e := minimalEntry(id)
	e.Practitioner.ID = practitioner
	pr, err := prepare(batch(e))
	if err != nil {
		t.Fatal(err)
	}
	return pr
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
// transaction, with a DBA's lock_timeout of 30 s: the first write is
// answered 503 once its statement has run lookAfter (watch), not at its
// lock_timeout nor at its 15 s deadline, and marks that row alone; the
// next ones go as probes, which find it still locked at once; once the
// row is free, writes touching it commit again.
func TestWriteTouchingAHeldRow(t *testing.T) {
	t.Parallel()
	u := pgtest.NewDatabase(t)
	pgtest.AlterDatabase(t, u, "lock_timeout = '30s'")
	s, db := openStore(t, u)
	entry := practitionerStored(t, s, "prov-held")
	tx := pgtest.HoldRows(t, db.DB, `SELECT 1 FROM practitioners WHERE external_id = 'prov-held' FOR UPDATE`)
	write := func(id string) (time.Duration, error) {
		t0 := time.Now()
		_, err := s.Write(context.Background(), batch(entry(id)))
		return time.Since(t0), err
	}
	// A batch of two: the held practitioner's appointment, and another's.
	t0 := time.Now()
	_, err := s.Write(context.Background(), batch(entry("waits"), minimalEntry("beside")))
	if d := time.Since(t0); !errors.Is(err, ErrRowHeld) || !IsUnavailable(err) || d < lookAfter || d > lookAfter+2*time.Second {
		t.Fatalf("the first write touching the held row: %v after %s; want ErrRowHeld after %s", err, d.Round(time.Millisecond), lookAfter)
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
	s.stmtsMu.Lock()
	checked := s.stmts[lockHeldSQL['r']] != nil
	s.stmtsMu.Unlock()
	if !checked {
		t.Errorf("the probes' check is not among the prepared statements: it would be parsed and planned at each probe")
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

// Rows found held cancel the statements under way that touch them, and
// no other; a group's requests are admitted again as its statement starts,
// so that one admitted before its rows were marked goes as a probe.
func TestFlights(t *testing.T) {
	var (
		h  heldRows
		fs flights
	)
	req := func(id, practitioner string) *request { return &request{p: preparedBy(t, id, practitioner)} }
	held := rowKey{'r', ehr, "prov-held"}
	touching, beside := req("a1", "prov-held"), req("a2", "prov-2")
	waiting := fs.takeOff(context.Background(), []*request{touching, beside}, &h)
	other := fs.takeOff(context.Background(), []*request{req("a3", "prov-3")}, &h)
	if len(waiting.reqs) != 2 || len(waiting.late) != 0 {
		t.Fatalf("nothing marked: %d written together, %d late; want 2 and 0", len(waiting.reqs), len(waiting.late))
	}

	// A write finds the practitioner held: it marks it, and cancels the
	// statement under way that touches it, not itself nor the other.
	finder := fs.takeOff(context.Background(), []*request{req("a4", "prov-held")}, &h)
	h.note(finder.reqs[0].p, errors.New("lock timeout"), time.Now(), []rowKey{held})
	fs.cancelTouching([]rowKey{held}, finder)
	var found foundHeld
	if !errors.As(context.Cause(waiting.ctx), &found) || len(found.rows) != 1 || found.rows[0] != held {
		t.Errorf("the statement under way touching the row: cause %v; want foundHeld naming it", context.Cause(waiting.ctx))
	}
	if finder.ctx.Err() != nil || other.ctx.Err() != nil {
		t.Errorf("the finder's statement: %v, the other: %v; want neither cancelled", finder.ctx.Err(), other.ctx.Err())
	}

	// Gathered before the mark, started after it: the request touching the
	// row goes late, as a probe; the other is written as usual.
	again := fs.takeOff(context.Background(), []*request{req("a5", "prov-held"), req("a6", "prov-6")}, &h)
	if len(again.reqs) != 1 || again.reqs[0].probe() || len(again.late) != 1 || !again.late[0].probe() {
		t.Errorf("a group started after the mark: %d written together, %d late; want 1 and 1, the late one a probe", len(again.reqs), len(again.late))
	}
	// A probe's flight is not registered: nothing cancels it.
	probe := fs.takeOff(context.Background(), again.late, &h)
	for _, f := range []*flight{waiting, other, finder, again, probe} {
		fs.land(f)
	}
	if len(fs.set) != 0 || probe.ctx.Err() != nil {
		t.Errorf("after landing: %d flights registered, the probe's context %v; want none, and not cancelled", len(fs.set), probe.ctx.Err())
	}
}

// A statement cancelled for rows found held committed nothing when
// PostgreSQL says it cancelled it (57014): ErrRowHeld. Given up by lib/pq
// as its answers were read (the context's error), it may have: the
// outcome is unknown. Without the cause, errors are as they were.
func TestCancelledFor(t *testing.T) {
	cancelled := fmt.Errorf("Write: %w", &pq.Error{Code: "57014"})
	ctx, cancel := context.WithCancelCause(context.Background())
	if err := cancelledFor(ctx, cancelled); err != cancelled {
		t.Errorf("not cancelled for rows found held: %v; want the error unchanged", err)
	}
	cancel(foundHeld{[]rowKey{{'r', ehr, "prov-held"}}})
	if err := cancelledFor(ctx, cancelled); !errors.Is(err, ErrRowHeld) || !IsUnavailable(err) {
		t.Errorf("57014 after rows were found held: %v; want ErrRowHeld", err)
	}
	if err := cancelledFor(ctx, fmt.Errorf("Write: %w", context.Canceled)); !errors.Is(err, ErrOutcomeUnknown) {
		t.Errorf("lib/pq's context error after rows were found held: %v; want ErrOutcomeUnknown", err)
	}
	if err := cancelledFor(ctx, nil); err != nil {
		t.Errorf("a statement that committed before its cancel: %v; want no error", err)
	}
}

// Writes under way when a row is found held, which touch it, are answered
// then, not when their own waits end: each waits for the row behind the
// one before it, up to the sessions' lock_timeout, and then for the row
// itself as long again (TestHeldPractitionerHoldsUpOnlyItsBatches stalled
// so in 2 of 25 runs). The second write here, sent while the first waits,
// was answered a lock timeout 2 s after the first. The watch is off: the
// first write's lock timeout finds the row (as when a DBA's lock_timeout
// is shorter than lookAfter).
func TestWriteUnderWayOnARowFoundHeldIsCancelled(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	s.lookAfter = time.Hour // before the first write: the workers read it after
	entry := practitionerStored(t, s, "prov-wait")
	tx := pgtest.HoldRows(t, db.DB, `UPDATE practitioners SET first_name = 'Jon' WHERE external_id = 'prov-wait'`)
	type answer struct {
		err error
		at  time.Time
	}
	write := func(id string) <-chan answer {
		done := make(chan answer, 1)
		go func() {
			_, err := s.Write(context.Background(), batch(entry(id), minimalEntry(id+"-beside")))
			done <- answer{err, time.Now()}
		}()
		return done
	}
	firstDone := write("waits")
	time.Sleep(500 * time.Millisecond) // past turnHold: the second's statement waits behind the first's
	second := <-write("behind")
	first := <-firstDone
	if !isLockTimeout(first.err) {
		t.Fatalf("the first write: %v; want a lock timeout", first.err)
	}
	if !errors.Is(second.err, ErrRowHeld) || !IsUnavailable(second.err) {
		t.Errorf("the second write: %v; want ErrRowHeld", second.err)
	}
	if d := second.at.Sub(first.at); d > time.Second {
		t.Errorf("the second write was answered %s after the first; want at once", d.Round(time.Millisecond))
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// Nothing of the cancelled statement was committed, and its session
	// gone with it leaves the pool writing.
	if _, err := s.Write(context.Background(), batch(entry("behind"), minimalEntry("behind-beside"))); err != nil {
		t.Fatalf("the second write again, once the row is free: %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries`); n != 2 {
		t.Errorf("%d deliveries stored; want 2 (the practitioner's first, the second's retry)", n)
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
// The first is answered ErrRowHeld by the watch when a transaction that
// began after the savepoint has ended (other tests' here, other writes
// in production), else a lock timeout (heldElsewhereSQL).
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
	if _, err := s.Write(context.Background(), batch(entry("waits"))); !errors.Is(err, ErrRowHeld) && !isLockTimeout(err) {
		t.Fatalf("the first write touching the row: %v; want ErrRowHeld or a lock timeout", err)
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

// A statement_timeout shorter than the sessions' lock_timeout (and than
// lookAfter) ends a wait for a held row with 57014, not 55P03: the row is
// found held all the same.
func TestRowHeldPastStatementTimeoutIsFound(t *testing.T) {
	t.Parallel()
	s, db := openStore(t, withParam(t, pgtest.NewDatabase(t), "statement_timeout", "300"))
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

// The look-up of held rows and a probe's check read pg_locks and
// pg_stat_activity once each, whatever the tables and arms: each read is
// most of a check's cost (withXactsSQL).
func TestHeldRowChecksReadTheSessionsOnce(t *testing.T) {
	t.Parallel()
	_, db := newStore(t)
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	checks := map[string]struct{ query, args string }{
		"heldRowsSQL":    {heldRowsSQL, `('nexus', ARRAY['a'], ARRAY['p'], ARRAY['r'])`},
		"lockHeldSQL[a]": {lockHeldSQL['a'], `('nexus', 'a')`},
		"lockHeldSQL[p]": {lockHeldSQL['p'], `('nexus', 'p')`},
		"lockHeldSQL[r]": {lockHeldSQL['r'], `('nexus', 'r')`},
	}
	for i, name := range slices.Sorted(maps.Keys(checks)) {
		c := checks[name]
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("PREPARE check%d AS %s", i, c.query)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var plan string
		if err := conn.QueryRowContext(ctx, fmt.Sprintf("EXPLAIN (FORMAT JSON) EXECUTE check%d%s", i, c.args)).Scan(&plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, f := range []string{"pg_lock_status", "pg_stat_get_activity"} {
			if n := strings.Count(plan, `"Function Name": "`+f+`"`); n != 1 {
				t.Errorf("%s reads %s %d times; want once", name, f, n)
			}
		}
	}
}
