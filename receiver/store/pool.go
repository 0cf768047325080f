package store

import (
	"database/sql/driver"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
)

// A server with no free connection slot for the receiver (SQLSTATE 53300:
// max_connections reached, or its role's or database's CONNECTION LIMIT)
// refuses every new connection, while those the pool already has still
// work. database/sql opens a new connection whenever all its open ones are
// busy, if only for a millisecond, and fails the query that asked when it
// is refused: measured, a receiver whose role was limited to 2
// connections under load answered 5,502 of 6,725 requests 503 in 7 s,
// and its /dbz flapped every second (TestServerFullSharesItsConnections).
// So a refused connection caps the pool at the connections it has, and
// queries wait for one of them; the query whose connection was refused is
// run again at once by database/sql (refusedConnError), and gets one. The cap is lifted
// poolCapFor after it was last lowered, so that the pool grows back once
// slots are free; if the server is still full, the next refusal sets it
// again, at the cost of the attempt. A pool with no connection left has
// nothing to share: its queries fail as before, and the receiver answers
// 503. Its two log lines go to slog's default logger, which the receiver
// sets to one naming its EHR.
const poolCapFor = 10 * time.Second

// poolCap: the cap itself is the pool's MaxOpenConns (maxConns when not
// capped); mu orders its changes.
type poolCap struct {
	refused atomic.Uint64 // connections refused so far
	mu      sync.Mutex
	lowered time.Time
}

// maxOpen is the pool's MaxOpenConns.
func (s *Store) maxOpen() int { return s.db.Stats().MaxOpenConnections }

// refusedConnError is a connection refused for want of a slot, once the
// pool is capped. It is also driver.ErrBadConn, which database/sql answers
// by running the query again, on a connection the pool has: safe, since
// 53300 comes before any statement. When none is left, the query fails
// with it, and it still says 53300 (Cause, IsUnavailable).
type refusedConnError struct{ err error }

func (e refusedConnError) Error() string   { return e.err.Error() }
func (e refusedConnError) Unwrap() []error { return []error{e.err, driver.ErrBadConn} }

// isRefusedConnection reports whether err is the server refusing a new
// connection for want of slots. It happens only at a connection's start,
// before any statement: running the statement again is safe.
func isRefusedConnection(err error) bool { return pq.As(err, "53300") != nil }

// connectionRefused caps the pool at its open connections. The connector
// calls it while the refused connection still counts as open.
func (s *Store) connectionRefused() {
	s.pool.refused.Add(1)
	open := s.db.Stats().OpenConnections - 1
	if open < 1 {
		return
	}
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	if open >= s.maxOpen() {
		return
	}
	s.pool.lowered = time.Now()
	s.db.SetMaxOpenConns(open) // and MaxIdleConns with it
	slog.Warn("The database refused a new connection (no free slot, SQLSTATE 53300); writing through the connections open",
		"connections", open, "retry_full_pool_in", poolCapFor.String())
}

// RefusedConnections is how many new connections the server has refused
// the store for want of a free slot (SQLSTATE 53300).
func (s *Store) RefusedConnections() uint64 { return s.pool.refused.Load() }

// poolShort reports whether the pool is capped below maxConns: the
// retention skips its run then (it is retried at the next interval), not
// to hold one of the few connections the writes share for minutes.
func (s *Store) poolShort() bool {
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	return s.maxOpen() < maxConns
}

// liftPoolCap lifts the cap poolCapFor after it was last lowered.
func (s *Store) liftPoolCap(now time.Time) {
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	capped := s.maxOpen()
	if capped >= maxConns || now.Sub(s.pool.lowered) < poolCapFor {
		return
	}
	slog.Info("Opening new database connections again", "capped_at", capped)
	s.db.SetMaxOpenConns(maxConns)
	s.db.SetMaxIdleConns(maxConns)
}
