package store

import (
	"context"
	"errors"
	"regexp"
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
// So once a statement's wait times out (55P03), the row it waited for is
// remembered as held. PostgreSQL's error names its tuple when the wait was
// for the transaction holding it (heldTuple), and the receiver looks up
// which of its rows that is (heldRowOf); when it names none (a wait queued
// behind another waiter, a look-up that failed), every appointment,
// patient and practitioner the statement upserts is remembered. A request
// touching a row remembered is a probe: written alone, never in a group
// with others. It first locks its rows found held without waiting
// (lockHeld): while one is still locked it is answered 503 at once
// (ErrRowHeld), holding none of its other rows, and that row is
// remembered again; otherwise its statement runs with a lock_timeout of
// probeLockTimeout. A write that commits forgets its rows. Only a lock
// timeout marks rows: a statement slow for another reason (a slow disk)
// must not send every request down the probes' path.
//
// Naming the row, and not waiting for it in a probe, matter for batches:
// one naming a held practitioner names a dozen others of the clinic,
// which other batches name too. Marking all its rows, and probes that
// waited for the held row holding those others' locks, made the other
// batches 503 or wait (TestHeldPractitionerHoldsUpOnlyItsBatches;
// docs/decisions.md, "Rows found held").
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

// ErrRowHeld: a row the request writes was found held by another
// transaction, and is still locked (lockHeld); answered 503 at once, as
// its own wait would be after the lock_timeout.
var ErrRowHeld = errors.New("a row of the batch is held by another transaction (a write waited for it past lock_timeout, and it is still locked): retry later")

// isLockTimeout reports whether err is a wait for a row lock that timed out.
func isLockTimeout(err error) bool { return pq.As(err, "55P03") != nil }

// heldTupleRE matches the context PostgreSQL gives a wait for the
// transaction holding a row (lmgr.c, XactLockTableWaitErrorCb). An
// upsert's wait for a row another transaction updated or locked gives
// `while inserting index tuple (0,1) in relation "practitioners"`, the
// tuple being the row in the table; others say "locking tuple", "updating
// tuple", "locking updated version (0,1) of tuple".
var heldTupleRE = regexp.MustCompile(`\((\d+),(\d+)\) (?:of tuple )?in relation "(appointments|patients|practitioners)"`)

// heldTuple reads from a lock timeout's context the tuple (ctid) it waited
// for and its table: ok is false when the context names none of the
// receiver's upserted tables (a wait queued behind another waiter has no
// context).
func heldTuple(err error) (table byte, ctid string, ok bool) {
	pqErr := pq.As(err, "55P03")
	if pqErr == nil {
		return 0, "", false
	}
	m := heldTupleRE.FindStringSubmatch(pqErr.Where)
	if m == nil {
		return 0, "", false
	}
	return tableKeys[m[3]], "(" + m[1] + "," + m[2] + ")", true
}

// tableKeys and heldRowSQL: rowKey.table of each upserted table, and the
// query that names the row at a ctid.
var (
	tableKeys  = map[string]byte{"appointments": 'a', "patients": 'p', "practitioners": 'r'}
	heldRowSQL = map[byte]string{
		'a': "SELECT external_id FROM appointments WHERE ctid = $1::tid AND ehr = $2",
		'p': "SELECT external_id FROM patients WHERE ctid = $1::tid AND ehr = $2",
		'r': "SELECT external_id FROM practitioners WHERE ctid = $1::tid AND ehr = $2",
	}
)

// heldRowLookupTimeout bounds the look-up of a held row, made before the
// requests that waited for it are answered.
const heldRowLookupTimeout = time.Second

// heldRowOf is the row a lock timeout waited for, when PostgreSQL's error
// names its tuple and that tuple is a row of ehr. A plain SELECT does not
// wait for the row's lock. ok is false otherwise (no tuple named, a row
// inserted by a transaction still open, a failed look-up).
func (s *Store) heldRowOf(err error, ehr string) (k rowKey, ok bool) {
	table, ctid, ok := heldTuple(err)
	if !ok {
		return rowKey{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), heldRowLookupTimeout)
	defer cancel()
	var id string
	if err := s.db.QueryRowxContext(ctx, heldRowSQL[table], ctid, ehr).Scan(&id); err != nil {
		return rowKey{}, false
	}
	return rowKey{table, ehr, id}, true
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

// lockHeldSQL locks a row found held, in the lock mode of the upserts, or
// fails at once (NOWAIT, 55P03) if it is locked. A row that does not exist
// is no error.
var lockHeldSQL = map[byte]string{
	'p': "SELECT 1 FROM patients WHERE ehr = $1 AND external_id = $2 FOR NO KEY UPDATE NOWAIT",
	'r': "SELECT 1 FROM practitioners WHERE ehr = $1 AND external_id = $2 FOR NO KEY UPDATE NOWAIT",
	'a': "SELECT 1 FROM appointments WHERE ehr = $1 AND external_id = $2 FOR NO KEY UPDATE NOWAIT",
}

// stillHeld is ErrRowHeld from lockHeld, naming the row still locked.
type stillHeld struct{ k rowKey }

func (stillHeld) Error() string        { return ErrRowHeld.Error() }
func (stillHeld) Is(target error) bool { return target == ErrRowHeld }

// lockHeld locks a probe's rows found held before its statement takes any
// other lock, one statement a row (NOWAIT does not name the row it found
// locked), and fails with stillHeld at the first still locked, holding
// nothing once the transaction is rolled back. Waiting for them instead
// held the probe's other rows meanwhile, which other batches of the
// clinic name: in its statement (which takes them in key order) for the
// probe's 200 ms, probe after probe, or here behind a row marked for a
// wait on the receiver's own statement, which in turn got another probe's
// wait on it marked (docs/decisions.md, "Rows found held").
func lockHeld(ctx context.Context, tx *sqlx.Tx, held []rowKey) error {
	for _, k := range held {
		if _, err := tx.ExecContext(ctx, lockHeldSQL[k.table], k.ehr, k.id); err != nil {
			if isLockTimeout(err) {
				return stillHeld{k}
			}
			return err
		}
	}
	return nil
}

// note records how p's write ended, after it ran for took. A commit
// forgets p's rows. A row found still locked (ErrRowHeld, exact), or a
// lock timeout after heldAfter, marks the row waited for (exact, when
// known: nothing if p does not touch it); a group's timeout that names no
// row marks all of p's rows, a probe's marks none (its rows found held
// were locked, and the row is one of its others, unknown). Anything else
// leaves the rows as they were.
func (h *heldRows) note(p *prepared, probe bool, err error, took time.Duration, now time.Time, exact *rowKey) {
	switch {
	case err == nil:
		if h.n.Load() == 0 {
			return
		}
		h.mu.Lock()
		p.each(h.forget)
		h.mu.Unlock()
	case took >= heldAfter && isLockTimeout(err), errors.Is(err, ErrRowHeld):
		h.mu.Lock()
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
		// A copy of the id: it shares the request body's memory.
		mark := func(k rowKey) { k.id = strings.Clone(k.id); h.rows[k] = now }
		switch {
		case len(h.rows) >= heldMax:
		case exact != nil:
			if p.touches(*exact) {
				mark(*exact)
			}
		case !probe:
			p.each(mark)
		}
		h.n.Store(int32(len(h.rows)))
		h.mu.Unlock()
	}
}

// forget drops k; h.mu is held.
func (h *heldRows) forget(k rowKey) {
	delete(h.rows, k)
	h.n.Store(int32(len(h.rows)))
}
