package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"
	"sync/atomic"

	"github.com/lib/pq"
)

// sessionSettings are the receiver's settings of each of its sessions, in
// the order they are set.
//
// plan_cache_mode: a generic plan of the write statement. Planning it per
// call (a custom plan) costs a large part of the statement
// (docs/performance.md), and its plan does not depend on the arrays'
// sizes (OFFSET 0 pins the history check to an index probe; the rest is
// inserts and sorts). Forced rather than left to plan_cache_mode = auto,
// which may keep custom plans when small groups make them look cheap.
//
// enable_seqscan: that generic plan is made once per connection, with the
// statistics of that moment, and kept until an ANALYZE invalidates it.
// Made when the tables were a few rows (a new integration, just after its
// first autoanalyze), it read them by sequential scan, per entry:
// measured, 0.2 ms a statement grew to 15 ms as the tables grew, for the
// minute until the next autoanalyze (docs/decisions.md). Every read of
// this receiver has an index; sequential scans are left for when none
// serves.
//
// default_transaction_isolation: the write statement's lock order and
// its ON CONFLICT checks are made for read committed, PostgreSQL's
// default. A database or role whose default is repeatable read or
// serializable (some DBAs set one) made concurrent writes of the same
// appointments fail with 40001 beyond the retries: measured, 44-46 of 480
// requests of 16 overlapping senders answered 503.
//
// synchronous_commit: a 200 says the appointment is stored, and the vendor
// does not send it again, so a commit must have reached the WAL on disk
// before it returns. A database or role whose default is off (a DBA's
// setting for speed) returns first, and a crash of the server loses the
// last commits: measured, an immediate shutdown lost the last 2-4 of 20
// appointments answered 200 one after another, in each of five runs
// (test/faults, TestDatabaseCrashUnderLoad).
// Off is raised to local, the local flush and no more; any other value is
// kept: on and remote_* also wait for synchronous standbys, which is the
// DBA's choice to make (local where a standby must not hold up writes).
//
// lock_timeout: a write waits for the row locks of the appointments,
// patients and practitioners it touches. Another writer of this receiver
// holds one for a statement's time (milliseconds; 0.5 s for a request of
// 1,000 appointments under load), but someone else's transaction left
// open (a DBA's fix in psql) holds it until it ends, and without a limit
// each request touching that row kept a worker for the batch's whole 15 s
// and was answered 503 only then. None (PostgreSQL's default) becomes 2 s:
// such a request is answered 503 (not run again here: retryable), and the
// vendor retries it; a DBA's own value is kept.
var sessionSettings = []struct{ name, set string }{
	{"plan_cache_mode", "SET plan_cache_mode = force_generic_plan"},
	{"enable_seqscan", "SET enable_seqscan = off"},
	{"default_transaction_isolation", "SET default_transaction_isolation = 'read committed'"},
	{"synchronous_commit", "SELECT set_config('synchronous_commit', 'local', false) WHERE current_setting('synchronous_commit') = 'off'"},
	{"lock_timeout", "SELECT set_config('lock_timeout', '" + lockTimeout + "', false) WHERE current_setting('lock_timeout') = '0'"},
}

// lockTimeout is the sessions' lock_timeout where the database sets none.
const lockTimeout = "2s"

// keepReadOnlySQL, run first in a transaction that writes, keeps a
// server set read-only (default_transaction_read_only: a managed
// service's when its disk is full) read-only for it: lib/pq begins every
// transaction with BEGIN READ WRITE, which overrides that default.
// Measured: a probe (held.go) was stored and answered 200 while every other
// write was refused 25006 and answered 503, and /dbz flapped.
const keepReadOnlySQL = "SELECT set_config('transaction_read_only', 'on', true) " +
	"WHERE current_setting('default_transaction_read_only')::boolean"

// sessionSetup is the statement that sets sessionSettings on a new
// connection, leaving out those the database URL sets as run-time
// parameters (the URL wins). They are SET once the session is open, not
// sent as startup parameters: PgBouncer closes a connection whose startup
// packet names a parameter it does not know ("unsupported startup
// parameter", SQLSTATE 08P01) unless ignore_startup_parameters lists it,
// and then the setting is dropped without a word. A SET reaches the
// server in every mode (PgBouncer's session mode keeps it for the
// client's session); it costs one round trip per new connection, and the
// pool's connections live up to 30 minutes.
func sessionSetup(runtime map[string]string) string {
	var b strings.Builder
	for _, s := range sessionSettings {
		if _, set := runtime[s.name]; set {
			continue
		}
		b.WriteString(s.set + ";")
	}
	return b.String()
}

// sessionConnector opens lib/pq connections and runs setup on each before
// the pool uses it: one simple query, one round trip.
type sessionConnector struct {
	driver.Connector
	setup string
	// refused, if not nil, is called when the server has no slot for a
	// new connection (pool.go).
	refused func()
	// path, if not nil, pins the sessions' search_path.
	path *searchPath
}

func (c sessionConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil && c.refused != nil && isRefusedConnection(err) {
		c.refused()
		return nil, refusedConnError{err}
	}
	if err != nil {
		return conn, err
	}
	setup := c.setup
	if c.path != nil {
		setup += c.path.load()
	}
	if setup != "" {
		if _, err := conn.(driver.ExecerContext).ExecContext(ctx, setup, nil); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	if c.path != nil && c.path.load() == "" {
		if err := c.path.pin(ctx, conn); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	return conn, nil
}

// searchPath keeps every session of the store on the search_path of its
// first: the schema its migrations ran in. Tables are named without a
// schema, so a session takes the role's or database's search_path, and a
// DBA's ALTER ROLE … SET search_path to another schema made each new
// session's writes fail with 42P01 (undefined table), answered 500, while
// /readyz and database_up said all was well; after the DBA's RESET the
// sessions opened meanwhile stayed in the pool, failing, for up to its
// connections' lifetime. A search_path the database URL sets is the first
// session's too.
type searchPath struct{ set atomic.Pointer[string] }

// load is the statement that pins the search_path, "" until the first
// session reported its own.
func (p *searchPath) load() string {
	if s := p.set.Load(); s != nil {
		return *s
	}
	return ""
}

// pin records conn's search_path as the sessions'.
func (p *searchPath) pin(ctx context.Context, conn driver.Conn) error {
	rows, err := conn.(driver.QueryerContext).QueryContext(ctx, "SHOW search_path", nil)
	if err != nil {
		return err
	}
	defer rows.Close()
	v := make([]driver.Value, 1)
	if err := rows.Next(v); err != nil {
		return err
	}
	var path string
	switch x := v[0].(type) {
	case string:
		path = x
	case []byte:
		path = string(x)
	}
	set := "SELECT set_config('search_path', " + pq.QuoteLiteral(path) + ", false);"
	p.set.CompareAndSwap(nil, &set)
	return nil
}

// ErrTransactionPooling: the database URL leads to a pooler that hands a
// client's transactions to different server sessions (PgBouncer's
// pool_mode = transaction or statement). The receiver needs its sessions:
// its write statement is a named prepared statement (PgBouncer before
// 1.21 does not follow those: measured, 2 % of requests answered 500 with
// SQLSTATE 26000 or 42P05 under load), and the retention's, the replay's
// and the migrations' advisory locks are session locks, which leak on
// whichever server session took them when the release runs on another
// (measured: retention then ran only when its lock statement happened to
// land on that session, with no error). A refused setting: retrying does
// not help, session mode does.
var ErrTransactionPooling = errors.New("the database URL leads to a pooler in transaction mode (statements of one connection ran in different database sessions): use session mode (PgBouncer pool_mode = session)")

// checkSessions fails with ErrTransactionPooling when the pool's
// connections do not each keep one database session. Its first verdict
// is kept: a pass, or a pooler found. It cannot be fooled into failing:
// one connection whose statements report two backend pids, or two
// connections open at once reporting the same one, cannot happen without
// a pooler that moves sessions. It could miss one if the pooler gave each
// statement the session it had before. A round: a statement on
// connection a, then a transaction on connection b (a pooler in
// transaction mode gives it an idle server session, PgBouncer the one
// released last: a's), a's statement while b's transaction holds its
// session, and a's again once b's has ended (PgBouncer then gives it the
// session b released last). The last step finds PgBouncer even when
// another statement of the pool released a session in between and a and
// b kept one each (the receiver's ping beside its migrations' check:
// TestCheckSessionsFindsTransactionPooling; docs/decisions.md). A missed
// pooler fails each retention run with this error, when its lock's
// release finds the lock gone (tryAdvisoryLock).
func (s *Store) checkSessions(ctx context.Context) error {
	s.sessionsMu.Lock()
	defer s.sessionsMu.Unlock()
	if s.sessionsChecked || s.sessionsErr != nil {
		return s.sessionsErr
	}
	a, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	pid := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) (int, error) {
		var p int
		err := q.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&p)
		return p, err
	}
	aPid, err := pid(a)
	if err != nil {
		return err
	}
	bPid := 0
	for range sessionCheckRounds {
		tx, err := b.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		b1, err := pid(tx)
		if err == nil && (b1 == aPid || bPid != 0 && b1 != bPid) {
			err = ErrTransactionPooling
		}
		bPid = b1
		if err == nil {
			var a1 int
			if a1, err = pid(a); err == nil && a1 != aPid {
				err = ErrTransactionPooling
			}
		}
		if rerr := tx.Rollback(); err == nil && rerr != nil {
			err = rerr
		}
		if err == nil {
			var a2 int
			if a2, err = pid(a); err == nil && a2 != aPid {
				err = ErrTransactionPooling
			}
		}
		if errors.Is(err, ErrTransactionPooling) {
			// Definite: later checks that miss it must not undo it.
			s.sessionsErr = err
		}
		if err != nil {
			return err
		}
	}
	s.sessionsChecked = true
	return nil
}

// sessionCheckRounds: see checkSessions.
const sessionCheckRounds = 5
