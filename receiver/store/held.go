package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"
)

// Rows held by someone else's transaction. A DBA's fix left open in psql
// (BEGIN; UPDATE practitioners …) holds one row's lock, and every write
// touching that row waits for the sessions' lock_timeout (2 s) before it
// is answered 503. Such a statement holds, meanwhile, the locks it has
// already taken on its other patients and practitioners, which recur (a
// clinic's practitioners), and the requests that came with it share its
// 503. Measured: with 20 connections sending a held practitioner's
// appointments, the other appointments, sent one at a time, were answered
// 503 after 2 s, 0-1 of 3-4 stored in 6 s
// (TestHeldPractitionerHoldsUpOnlyItsAppointments).
//
// So once a group's statement has run lookAfter (watch), and once a
// statement's wait times out (55P03, or 57014: isCancelled), the receiver
// looks for the rows of its requests that another session's transaction
// holds (heldElsewhereSQL: a DBA's psql, say) and remembers those as held
// (heldRowsOf); rows so found cancel the statements under way that touch
// them (cancelTouching).
// Rows the receiver's own statements hold are not marked: a statement of
// this pool or of another replica that waits for a held row keeps its
// other rows locked meanwhile, and the writes timing out on those must not
// mark them. Marking them (all of a timed-out statement's rows, or the
// tuple PostgreSQL's error names) made the probes below lock them, time
// after time, and other batches' probes find them locked
// (docs/decisions.md, "Rows found held").
//
// A request touching a row remembered is a probe: written alone, never in
// a group with others. It first tries to lock its rows found held without
// waiting (lockHeld): while one is still held by another session it is
// answered 503 at once (ErrRowHeld), holding none of its other rows, and
// that row is remembered again; otherwise its statement runs with a
// lock_timeout of probeLockTimeout. A write that commits forgets its rows.
// Only rows another session holds are marked: a statement slow for
// another reason (a slow disk) must not send every request down the
// probes' path.
//
// Marking only rows held elsewhere, and not waiting for them in a probe,
// matter for batches: one naming a held practitioner names a dozen others
// of the clinic, which other batches name too, and those were answered
// 503 or kept waiting (TestHeldPractitionerHoldsUpOnlyItsBatches).
type heldRows struct {
	n    atomic.Int32 // len(rows): the write path's whole cost while no row is held
	mu   sync.Mutex
	rows map[rowKey]time.Time // when a write last found the row held
}

// rowKey names one row a write upserts.
type rowKey struct {
	table   byte // 'a'ppointments, 'p'atients, p'r'actitioners
	ehr, id string
}

const (
	// probeLockTimeout is a probe's lock_timeout (a shorter one of the
	// database's is kept): long beside a receiver's own statements' hold
	// on a row (milliseconds), short enough that a probe's locks on its
	// other rows hold up no one for long.
	probeLockTimeout = "200ms"
	// heldAfter: a lock timeout marks rows only after a statement that
	// ran this long. A shorter lock_timeout (a DBA's 1 ms, say) holds no
	// one up for long, and times out on the receiver's own overlapping
	// writes: marking their rows made more of them 503 (measured: 85-92
	// against 53-55 of 320 in TestShortLockTimeoutIsNoError).
	heldAfter = 150 * time.Millisecond
	// lookAfter: a group's statement still running this long looks for
	// rows of its requests that another session holds (watch), not to wait
	// the sessions' lock_timeout to find them: past turnHold, and a
	// quarter of the sessions' lock_timeout.
	lookAfter = 500 * time.Millisecond
	// heldFor: a row no write has timed out on for this long is forgotten.
	heldFor = 5 * time.Minute
	// heldSweepAt: past this many rows, marking drops the forgotten ones;
	// heldMax bounds the memory held rows take (about 100 bytes each).
	heldSweepAt = 4096
	heldMax     = 100_000
)

// probeLockTimeoutSQL sets a probe's lock_timeout for its transaction.
const probeLockTimeoutSQL = "SELECT set_config('lock_timeout', '" + probeLockTimeout + "', true) " +
	"WHERE current_setting('lock_timeout')::interval = interval '0' " +
	"OR current_setting('lock_timeout')::interval > interval '" + probeLockTimeout + "'"

// probeSetupSQL is run first in a probe's transaction, one round trip (a
// simple query without arguments).
const probeSetupSQL = keepReadOnlySQL + ";" + probeLockTimeoutSQL

// ErrRowHeld: a row the request writes was found held by another
// transaction, and is still locked (lockHeld); answered 503 at once, as
// its own wait would be after the lock_timeout.
var ErrRowHeld = errors.New("a row of the batch is held by another transaction (a write waited for it past lock_timeout, and it is still locked): retry later")

// isLockTimeout reports whether err is a wait for a row lock that timed out.
func isLockTimeout(err error) bool { return pq.As(err, "55P03") != nil }

// isCancelled reports whether err is a statement cancelled before it
// ended: by a statement_timeout shorter than the lock_timeout, or by the
// write's own deadline (txTimeout) before a lock_timeout of the DBA's
// longer than it. A wait for a held row ends so when the database's
// timeouts are set so, and was then never found held: every write naming
// the row waited the whole timeout, holding its other rows meanwhile. The
// look-up marks only rows another session holds, so a statement slow for
// another reason marks nothing. (lib/pq answers a cancelled context with
// the server's 57014 once the statement was sent; a connection that never
// got as far is no wait for a row, and is not looked up.)
func isCancelled(err error) bool { return pq.As(err, "57014") != nil }

// heldElsewhereSQL is the condition that a row's xmax is a transaction
// still open in a session other than the receiver's, in a statement that
// begins with withXactsSQL. A row lock is its transaction's id in the
// tuple's xmax. The receiver's own sessions, of this process and of other
// replicas, share the pool's application_name, and their statements use
// no savepoints.
//
// An id is held elsewhere when it is the top-level transaction of a
// session not so named, among the granted locks of pg_locks. That alone
// missed a row changed inside a savepoint since released (psql's
// ON_ERROR_ROLLBACK, a PL/pgSQL EXCEPTION block, JDBC's autosave): its
// xmax is the subtransaction's id, whose lock ends at the RELEASE while
// the row stays locked until the transaction ends, so every write naming
// it waited lock_timeout again. So an id is also held elsewhere when
// pg_xact_status finds it open and it is not the top-level transaction of
// a session named as the pool's; for that test only ids below the
// snapshot's xmax count: one above may be a statement of the receiver
// that began after pg_locks was read, and would be taken for another
// session's. The first test needs no such bound: on a quiet database a
// DBA's transaction stays at or above the snapshot's xmax (the last ended
// transaction's id, plus one) until a later one ends, and a statement
// still waiting for its row (watch) found nothing held. A row locked by
// several transactions at once (xmax a multixact) is not found: its
// writes wait lock_timeout, as they would unmarked.
//
// xmax is a 32-bit id and pg_xact_status takes a 64-bit one: the id is
// placed within 2^31 below the snapshot's xmax (snapshotXmax), behindSQL
// ids below it.
const heldElsewhereSQL = `(xmax IN (SELECT xid FROM xacts WHERE NOT ours)
	OR xmax NOT IN (SELECT xid FROM xacts WHERE ours)
	AND CASE WHEN xmax <> '0'::xid AND ` + behindSQL + ` BETWEEN 1 AND 2147483647 AND ` + snapshotXmax + ` - ` + behindSQL + ` >= 3
		THEN pg_xact_status((` + snapshotXmax + ` - ` + behindSQL + `)::text::xid8) = 'in progress' END)`

// withXactsSQL reads the sessions' top-level transactions once per
// statement (a CTE named twice is materialized), each marked ours if its
// session is named as the pool is. Read once per condition and table, the
// look-up read them six times (docs/decisions.md, "Rows found held").
const withXactsSQL = `WITH xacts AS (
	SELECT l.transactionid AS xid, coalesce(a.application_name = current_setting('application_name'), false) AS ours
	FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
	WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
) `

const (
	snapshotXmax = "pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
	behindSQL    = "((" + snapshotXmax + " - xmax::text::bigint) & 4294967295)"
)

// heldRowsSQL names the rows of ehr ($1) among appointments ($2), patients
// ($3) and practitioners ($4) that another session holds. A plain SELECT
// does not wait for a row's lock.
const heldRowsSQL = withXactsSQL + `SELECT 'a' AS t, external_id FROM appointments WHERE ehr = $1 AND external_id = ANY($2) AND ` + heldElsewhereSQL + `
UNION ALL SELECT 'p', external_id FROM patients WHERE ehr = $1 AND external_id = ANY($3) AND ` + heldElsewhereSQL + `
UNION ALL SELECT 'r', external_id FROM practitioners WHERE ehr = $1 AND external_id = ANY($4) AND ` + heldElsewhereSQL

// heldRowsLookupTimeout bounds the look-up of held rows, made before the
// requests that waited for them are answered.
const heldRowsLookupTimeout = time.Second

// heldRowsOf returns the rows of group's requests (one EHR's) that
// another session holds; none if the look-up fails.
func (s *Store) heldRowsOf(group []*request) []rowKey {
	var ids, patients, practitioners []string
	for _, r := range group {
		ids = append(ids, r.p.ids...)
		patients = append(patients, r.p.patients...)
		practitioners = append(practitioners, r.p.practitioners...)
	}
	ehr := group[0].p.delivery.EHR
	ctx, cancel := context.WithTimeout(context.Background(), heldRowsLookupTimeout)
	defer cancel()
	var found []struct {
		T  string `db:"t"`
		ID string `db:"external_id"`
	}
	stmt, err := s.stmt(ctx, heldRowsSQL)
	if err != nil {
		return nil
	}
	if err := stmt.SelectContext(ctx, &found, ehr, pq.Array(ids), pq.Array(patients), pq.Array(practitioners)); err != nil {
		return nil
	}
	held := make([]rowKey, len(found))
	for i, f := range found {
		held[i] = rowKey{f.T[0], ehr, f.ID}
	}
	return held
}

// heldBy is the rows another session holds that a group's write failed
// on, if any: the one a probe found still held, those another write found
// held that cancelled the group's statement (foundHeld), or those of the
// group's requests after a lock timeout of a statement that ran heldAfter
// or longer.
func (s *Store) heldBy(err error, took time.Duration, group []*request) []rowKey {
	var (
		still stillHeld
		found foundHeld
	)
	switch {
	case errors.As(err, &still):
		return []rowKey{still.k}
	case errors.As(err, &found):
		return found.rows
	case err != nil && took >= heldAfter && (isLockTimeout(err) || isCancelled(err)):
		return s.heldRowsOf(group)
	}
	return nil
}

// touches reports whether p's statement upserts k.
func (p *prepared) touches(k rowKey) (found bool) {
	if k.ehr != p.delivery.EHR {
		return false
	}
	p.each(func(r rowKey) { found = found || r == k })
	return found
}

// each calls f with every row p's statement upserts.
func (p *prepared) each(f func(rowKey)) {
	ehr := p.delivery.EHR
	for _, id := range p.ids {
		f(rowKey{'a', ehr, id})
	}
	for _, id := range p.patients {
		f(rowKey{'p', ehr, id})
	}
	for _, id := range p.practitioners {
		f(rowKey{'r', ehr, id})
	}
}

// admit returns the rows found held, less than heldFor before now, that p
// touches: none for a request written as usual, some for a probe.
func (h *heldRows) admit(p *prepared, now time.Time) (held []rowKey) {
	if h.n.Load() == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	p.each(func(k rowKey) {
		at, ok := h.rows[k]
		switch {
		case !ok:
		case now.Sub(at) >= heldFor:
			h.forget(k)
		default:
			held = append(held, k)
		}
	})
	return held
}

// lockHeldSQL locks a row found held, in the lock mode of the upserts,
// unless it is locked (SKIP LOCKED), and says whether another session
// still holds it (heldElsewhereSQL). A row the receiver's own statement holds
// is left to the probe's statement, which waits for it at most
// probeLockTimeout. A row that does not exist is no error.
var lockHeldSQL = map[byte]string{
	'p': lockHeldQuery("patients"),
	'r': lockHeldQuery("practitioners"),
	'a': lockHeldQuery("appointments"),
}

func lockHeldQuery(table string) string {
	return withXactsSQL + "SELECT NOT EXISTS (SELECT 1 FROM " + table + " WHERE ehr = $1 AND external_id = $2 FOR NO KEY UPDATE SKIP LOCKED) " +
		"AND EXISTS (SELECT 1 FROM " + table + " WHERE ehr = $1 AND external_id = $2 AND " + heldElsewhereSQL + ")"
}

// stillHeld is ErrRowHeld from lockHeld, naming the row still locked.
type stillHeld struct{ k rowKey }

func (stillHeld) Error() string        { return ErrRowHeld.Error() }
func (stillHeld) Is(target error) bool { return target == ErrRowHeld }

// lockHeld locks a probe's rows found held before its statement takes any
// other lock, one statement a row (stmts, lockHeldStmts'), and fails with
// stillHeld at the first another session still holds, holding nothing
// once the transaction is rolled back. Waiting for them instead held the
// probe's other rows meanwhile, which other batches of the clinic name: in
// its statement (which takes them in key order) for the probe's 200 ms,
// probe after probe (docs/decisions.md, "Rows found held").
func lockHeld(ctx context.Context, tx *sqlx.Tx, held []rowKey, stmts []*sqlx.Stmt) error {
	for i, k := range held {
		var elsewhere bool
		if err := tx.StmtxContext(ctx, stmts[i]).QueryRowxContext(ctx, k.ehr, k.id).Scan(&elsewhere); err != nil {
			return err
		}
		if elsewhere {
			return stillHeld{k}
		}
	}
	return nil
}

// lockHeldStmts are lockHeld's statements for held, prepared before the
// probe's transaction takes a connection: preparing needs one of the
// pool's.
func (s *Store) lockHeldStmts(ctx context.Context, held []rowKey) ([]*sqlx.Stmt, error) {
	stmts := make([]*sqlx.Stmt, len(held))
	for i, k := range held {
		stmt, err := s.stmt(ctx, lockHeldSQL[k.table])
		if err != nil {
			return nil, err
		}
		stmts[i] = stmt
	}
	return stmts, nil
}

// note records how p's write ended. A commit forgets p's rows. Otherwise
// the rows another session was found holding (heldBy) that p touches are
// marked. Anything else leaves the rows as they were.
func (h *heldRows) note(p *prepared, err error, now time.Time, held []rowKey) {
	switch {
	case err == nil:
		if h.n.Load() == 0 {
			return
		}
		h.mu.Lock()
		p.each(h.forget)
		h.mu.Unlock()
	case len(held) > 0:
		h.mark(p, held, now)
	}
}

// mark marks the rows of held that p touches, found held at now.
func (h *heldRows) mark(p *prepared, held []rowKey, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rows == nil {
		h.rows = make(map[rowKey]time.Time)
	}
	if len(h.rows) >= heldSweepAt {
		for k, at := range h.rows {
			if now.Sub(at) >= heldFor {
				h.forget(k)
			}
		}
	}
	for _, k := range held {
		if len(h.rows) < heldMax && p.touches(k) {
			k.id = strings.Clone(k.id) // it shares the request body's memory
			h.rows[k] = now
		}
	}
	h.n.Store(int32(len(h.rows)))
}

// forget drops k; h.mu is held.
func (h *heldRows) forget(k rowKey) {
	delete(h.rows, k)
	h.n.Store(int32(len(h.rows)))
}

// Statements under way when rows are found held. Those of requests
// admitted before the rows were marked, which touch them, wait for them
// in turn: each behind the one before it, for up to the sessions'
// lock_timeout on each lock, and then for the held row itself another
// lock_timeout, holding the rows they took meanwhile. So a statement that
// took its other rows just before its wait for them timed out held up the
// other batches of the clinic 4 or 6 s instead of 2, and those grouped
// with it waited as long (2 of 25 runs of
// TestHeldPractitionerHoldsUpOnlyItsBatches: 2-5 of the other batches
// stored in 6 s). Now rows found held cancel the statements under way that
// touch them (cancelTouching), and a group's requests are admitted again
// as its statement starts (takeOff), so that one queued or carried since
// the rows were marked goes as a probe.
type flights struct {
	mu  sync.Mutex
	set map[*flight]struct{}
}

// flight is a statement under way: a group's, or a probe's.
type flight struct {
	ctx    context.Context
	cancel context.CancelCauseFunc // nil for a probe: none is cancelled
	reqs   []*request              // written by the statement
	late   []*request              // touching rows marked since their admission: each a probe, after it
}

// takeOff starts a group's flight. Its requests are admitted again and
// the flight is registered under one lock, the one cancelTouching takes
// after rows are marked: rows marked before are seen here, and a flight
// registered before is seen there.
func (fs *flights) takeOff(ctx context.Context, group []*request, h *heldRows) *flight {
	f := &flight{ctx: ctx, reqs: group}
	if group[0].probe() {
		return f
	}
	f.ctx, f.cancel = context.WithCancelCause(ctx)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if h.n.Load() > 0 {
		f.reqs = make([]*request, 0, len(group))
		now := time.Now()
		for _, r := range group {
			if r.held = h.admit(r.p, now); r.probe() {
				f.late = append(f.late, r)
			} else {
				f.reqs = append(f.reqs, r)
			}
		}
	}
	if fs.set == nil {
		fs.set = make(map[*flight]struct{})
	}
	fs.set[f] = struct{}{}
	return f
}

// watch looks, once f's statement has run s.lookAfter, for the rows of
// its requests that another session holds; if there are any, it marks them
// and cancels the statements under way that touch them, f's among them.
// So a statement waiting for a held row is answered 503 then, and frees
// the rows it took, rather than at its lock_timeout (the sessions' 2 s; a
// DBA's 30 s was cut only by the write's 15 s deadline). A statement
// merely slow (a slow disk, a frozen connection) finds no row held, and
// goes on. The returned func stops the watch.
func (s *Store) watch(f *flight) (stop func() bool) {
	if f.cancel == nil { // a probe: it waits probeLockTimeout at most
		return func() bool { return false }
	}
	return time.AfterFunc(s.lookAfter, func() {
		held := s.heldRowsOf(f.reqs)
		if len(held) == 0 {
			return
		}
		now := time.Now()
		for _, r := range f.reqs {
			s.held.mark(r.p, held, now)
		}
		s.flights.cancelTouching(held, nil)
	}).Stop
}

// land ends f's flight.
func (fs *flights) land(f *flight) {
	if f.cancel == nil {
		return
	}
	fs.mu.Lock()
	delete(fs.set, f)
	fs.mu.Unlock()
	f.cancel(nil)
}

// cancelTouching cancels the statements under way, other than self's
// (if any), that touch a row of held.
func (fs *flights) cancelTouching(held []rowKey, self *flight) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for f := range fs.set {
		if f != self && touchesAny(f.reqs, held) {
			f.cancel(foundHeld{held})
		}
	}
}

func touchesAny(reqs []*request, rows []rowKey) bool {
	for _, r := range reqs {
		for _, k := range rows {
			if r.p.touches(k) {
				return true
			}
		}
	}
	return false
}

// foundHeld cancels a statement touching rows another write found held
// (cancelTouching).
type foundHeld struct{ rows []rowKey }

func (foundHeld) Error() string {
	return "the batch's statement touched a row another transaction holds, found so by the receiver's look-up, and was cancelled: retry later"
}
func (foundHeld) Is(target error) bool { return target == ErrRowHeld }

// cancelledFor is err, the outcome of a statement run with ctx, told
// apart when cancelTouching cancelled it: foundHeld when PostgreSQL
// cancelled the statement (57014), so nothing was committed;
// ErrOutcomeUnknown when lib/pq gave up on it first, with the context's
// error (the cancel came as its answers were read, after it had taken
// its rows, and it may have committed).
func cancelledFor(ctx context.Context, err error) error {
	var found foundHeld
	switch {
	case err == nil || !errors.As(context.Cause(ctx), &found):
		return err
	case isCancelled(err):
		return fmt.Errorf("Write: %w", found)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("Write: %w", ErrOutcomeUnknown)
	}
	return err
}
