package store

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
// So once a statement's wait times out (55P03), the rows its requests
// upsert are remembered as held: every appointment, patient and
// practitioner of the group, the error does not say which. A request
// touching one of them is a probe: written alone, never in a group with
// others, with a lock_timeout of probeLockTimeout, so that it holds its
// own rows' locks no longer than that. A probe that times out confirms
// its rows, and a confirmed row has at most one probe in flight: a
// request touching it meanwhile is answered 503 at once (ErrRowHeld), so
// a held row's traffic takes one worker, not all four. A write that
// commits forgets its rows. Only a lock timeout marks rows: a statement
// slow for another reason (a slow disk) must not send every request down
// the probes' one-at-a-time path.
type heldRows struct {
	n    atomic.Int32 // len(rows): the write path's whole cost while no row is held
	mu   sync.Mutex
	rows map[rowKey]heldRow
	// probing: the confirmed rows a probe in flight touches. A request
	// touching one of them is answered 503 at once (ErrRowHeld): one
	// probe a row at a time, so that a held row's traffic holds one
	// worker, not all of them.
	probing map[rowKey]struct{}
}

// heldRow is when a write last timed out on the row's group, and whether
// it was a probe's (a single request's: confirmed) or a group's, whose
// other requests' rows were only with it.
type heldRow struct {
	at        time.Time
	confirmed bool
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
// transaction, and a write touching it is under way; answered 503 without
// a statement, as its own wait would be.
var ErrRowHeld = errors.New("a row of the batch is held by another transaction (a lock wait timed out): retry later")

// isLockTimeout reports whether err is a wait for a row lock that timed out.
func isLockTimeout(err error) bool { return pq.As(err, "55P03") != nil }

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

// admit says how to write p, just taken from the queue: as usual (it
// touches no row found held less than heldFor before now), as a probe,
// or not at all (busy: a confirmed row it touches has a probe in flight).
// A probe claims its confirmed rows until release.
func (h *heldRows) admit(p *prepared, now time.Time) (probe, busy bool, claimed []rowKey) {
	if h.n.Load() == 0 {
		return false, false, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	p.each(func(k rowKey) {
		r, ok := h.rows[k]
		switch {
		case !ok:
		case now.Sub(r.at) >= heldFor:
			h.forget(k)
		default:
			probe = true
			if r.confirmed {
				if _, taken := h.probing[k]; taken {
					busy = true
				}
				claimed = append(claimed, k)
			}
		}
	})
	if busy {
		return false, true, nil
	}
	if len(claimed) > 0 && h.probing == nil {
		h.probing = make(map[rowKey]struct{})
	}
	for _, k := range claimed {
		h.probing[k] = struct{}{}
	}
	return probe, false, claimed
}

// release gives back a probe's claimed rows.
func (h *heldRows) release(claimed []rowKey) {
	if len(claimed) == 0 {
		return
	}
	h.mu.Lock()
	for _, k := range claimed {
		delete(h.probing, k)
	}
	h.mu.Unlock()
}

// note records how p's write ended, after its statement ran for took: a
// lock timeout after heldAfter marks its rows held (confirmed if p was a
// probe, written alone), a commit forgets them; anything else leaves them
// as they were.
func (h *heldRows) note(p *prepared, probe bool, err error, took time.Duration, now time.Time) {
	switch {
	case err == nil:
		if h.n.Load() == 0 {
			return
		}
		h.mu.Lock()
		p.each(h.forget)
		h.mu.Unlock()
	case took >= heldAfter && isLockTimeout(err):
		h.mu.Lock()
		if h.rows == nil {
			h.rows = make(map[rowKey]heldRow)
		}
		if len(h.rows) >= heldSweepAt {
			for k, r := range h.rows {
				if now.Sub(r.at) >= heldFor {
					h.forget(k)
				}
			}
		}
		if len(h.rows) < heldMax {
			p.each(func(k rowKey) {
				// A copy: the id shares the request body's memory.
				k.id = strings.Clone(k.id)
				h.rows[k] = heldRow{at: now, confirmed: probe || h.rows[k].confirmed}
			})
			h.n.Store(int32(len(h.rows)))
		}
		h.mu.Unlock()
	}
}

// forget drops k; h.mu is held.
func (h *heldRows) forget(k rowKey) {
	delete(h.rows, k)
	h.n.Store(int32(len(h.rows)))
}
