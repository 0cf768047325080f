// Package migrations holds the receiver's SQL schema as goose migrations
// embedded in the binary, and applies them. It is its own package so that
// the test harness (internal/pgtest) can migrate databases without importing
// the store.
package migrations

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/lib/pq"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// FS holds the migrations: NNNNNN_name.sql files, each with a
// "-- +goose Up" and a "-- +goose Down" section.
//
//go:embed *.sql
var FS embed.FS

// VersionTable is goose's bookkeeping table.
const VersionTable = "goose_db_version"

// lockID is the advisory lock key held while migrating, so receivers that
// start at once apply each migration exactly once. Advisory locks are per
// database, so one key serves every tenant database.
const lockID int64 = 0x6568725f6d6967 // "ehr_mig"

// LockTimeout bounds each wait for a lock of a migration that runs in a
// transaction (its session's lock_timeout). An ALTER TABLE waiting for its
// ACCESS EXCLUSIVE lock behind a long transaction is first in the table's
// lock queue, so every writer of the receivers still running the previous
// release waits behind it: for at most this long, after which the attempt
// fails (SQLSTATE 55P03), releases the queue and is tried again later
// (receiver/migrator.go's back-off, or the migrate command run again).
// Above the receivers' own longest routine waits (a write statement is
// milliseconds, the retention's batches give up after 1 s) so that they do
// not cancel a migration; well below a write's 15 s transaction timeout
// and the 20 s a request waits for its commit, so the writers queued
// meanwhile are delayed, not failed (docs/decisions.md).
const LockTimeout = 5 * time.Second

// Up applies every pending migration under a session advisory lock. Others
// waiting for the lock retry every second for up to five minutes, then find
// nothing left to do.
//
// Migrations that run in a transaction do so with lock_timeout LockTimeout;
// NO TRANSACTION ones (CREATE INDEX CONCURRENTLY and the like) with none
// (whatever the database's or role's default): their locks never queue writers, and
// PostgreSQL applies lock_timeout to their waits for older transactions
// too, so one long transaction (a backup) would cancel a build at its end,
// leaving an invalid index, on every attempt.
func Up(ctx context.Context, db *sql.DB, logger *slog.Logger) error {
	locker, p, err := provider(db, logger)
	if err != nil {
		return err
	}
	runs, err := plan()
	if err != nil {
		return err
	}
	// One UpTo per run of migrations of the same kind, each under the
	// advisory lock: UpTo applies only what is pending up to the run's last
	// version, so a replica that applied some meanwhile changes nothing.
	for _, r := range runs {
		locker.timeout = r.lockTimeout
		if _, err := p.UpTo(ctx, r.last); err != nil {
			return fmt.Errorf("while applying migrations: %w", err)
		}
	}
	return nil
}

// run is consecutive migrations applied with one lock_timeout, up to last.
type run struct {
	last        int64
	lockTimeout time.Duration // 0: none
}

// plan splits the embedded migrations into runs: transactional ones get
// LockTimeout, NO TRANSACTION ones none.
func plan() ([]run, error) {
	names, err := fs.Glob(FS, "*.sql")
	if err != nil {
		return nil, err
	}
	type mig struct {
		version int64
		timeout time.Duration
	}
	migs := make([]mig, 0, len(names))
	for _, n := range names {
		v, err := goose.NumericComponent(n)
		if err != nil {
			return nil, fmt.Errorf("while reading migration %s: %w", n, err)
		}
		b, err := fs.ReadFile(FS, n)
		if err != nil {
			return nil, err
		}
		m := mig{version: v, timeout: LockTimeout}
		if noTransaction(string(b)) {
			m.timeout = 0
		}
		migs = append(migs, m)
	}
	slices.SortFunc(migs, func(a, b mig) int { return cmp.Compare(a.version, b.version) })
	var runs []run
	for _, m := range migs {
		if len(runs) > 0 && runs[len(runs)-1].lockTimeout == m.timeout {
			runs[len(runs)-1].last = m.version
			continue
		}
		runs = append(runs, run{last: m.version, lockTimeout: m.timeout})
	}
	return runs, nil
}

// noTransaction reports a "-- +goose NO TRANSACTION" line, read as goose's
// parser reads annotations.
func noTransaction(src string) bool {
	for line := range strings.Lines(src) {
		line = strings.TrimRight(line, "\r\n")
		if !strings.HasPrefix(strings.TrimSpace(line), "--") || !strings.Contains(line, "+goose") {
			continue
		}
		cmd := strings.TrimSpace(strings.Replace(strings.ReplaceAll(line, "--", ""), "+goose", "", 1))
		if strings.EqualFold(cmd, "NO TRANSACTION") {
			return true
		}
	}
	return false
}

// timeoutLocker is goose's advisory session lock, which also sets the
// timeouts of the locked session, the one goose runs the SQL migrations
// on, and puts back the session's own values before the connection goes
// back to the pool (the receivers' write pool, whose sessions have
// settings of their own, store.sessionSettings: a RESET would restore the
// database's defaults instead): lock_timeout to the run's (0, none, for NO
// TRANSACTION runs), statement_timeout to none. Both are set whatever the
// database's or role's defaults: a DBA's statement_timeout of 30 s
// cancelled CREATE INDEX CONCURRENTLY at a year's volume (25-31 s,
// docs/performance.md) on every attempt, and a role's lock_timeout its
// wait for older transactions, and receivers answer 503 until their
// migration is done.
type timeoutLocker struct {
	lock.SessionLocker
	timeout time.Duration // lock_timeout of the next lock's run; 0: none
	// the locked session's own lock_timeout and statement_timeout, put
	// back at unlock
	lockTimeout, statementTimeout string
}

func (l *timeoutLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	if err := l.SessionLocker.SessionLock(ctx, conn); err != nil {
		return err
	}
	err := conn.QueryRowContext(ctx, `SELECT current_setting('lock_timeout'), current_setting('statement_timeout')`).
		Scan(&l.lockTimeout, &l.statementTimeout)
	if err == nil {
		_, err = conn.ExecContext(ctx, `SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', '0', false)`,
			fmt.Sprintf("%dms", l.timeout.Milliseconds()))
	}
	if err == nil {
		return nil
	}
	// goose only closes the connection after a failed lock: release the
	// advisory lock here, or drop a session that may still hold it.
	if uerr := l.SessionLocker.SessionUnlock(context.WithoutCancel(ctx), conn); uerr != nil {
		discard(conn)
	}
	return fmt.Errorf("while setting the timeouts of the migrations: %w", err)
}

func (l *timeoutLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, rerr := conn.ExecContext(ctx, `SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false)`,
		l.lockTimeout, l.statementTimeout)
	uerr := l.SessionLocker.SessionUnlock(ctx, conn)
	if rerr != nil || uerr != nil {
		// Never return to the pool a session with the migrations'
		// timeouts or the advisory lock.
		discard(conn)
	}
	return errors.Join(rerr, uerr)
}

// discard closes conn's session instead of returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
}

func provider(db *sql.DB, logger *slog.Logger) (*timeoutLocker, *goose.Provider, error) {
	advisory, err := lock.NewPostgresSessionLocker(lock.WithLockID(lockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, nil, fmt.Errorf("while creating the migration lock: %w", err)
	}
	locker := &timeoutLocker{SessionLocker: advisory}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, FS,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithTableName(VersionTable),
		goose.WithSlog(logger),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("while reading the embedded migrations: %w", err)
	}
	return locker, p, nil
}

// Versions lists the embedded migrations' versions in ascending order, and
// fails when two files share a version.
func Versions() ([]int64, error) {
	names, err := fs.Glob(FS, "*.sql")
	if err != nil {
		return nil, err
	}
	return versionsOf(names)
}

func versionsOf(names []string) ([]int64, error) {
	vs := make([]int64, 0, len(names))
	seen := make(map[int64]string, len(names))
	for _, n := range names {
		v, err := goose.NumericComponent(n)
		if err != nil {
			return nil, fmt.Errorf("while reading migration %s: %w", n, err)
		}
		if other, ok := seen[v]; ok {
			return nil, fmt.Errorf("migrations %s and %s share version %d", other, n, v)
		}
		seen[v] = n
		vs = append(vs, v)
	}
	slices.Sort(vs)
	return vs, nil
}

// ErrPending means the database lacks some embedded migration.
var ErrPending = errors.New("database migrations are not all applied")

// Check returns nil when every embedded migration is applied. Unlike
// goose's HasPending it only reads: it never creates the version table, so
// a readiness probe has no side effects.
func Check(ctx context.Context, db *sql.DB) error {
	want, err := Versions()
	if err != nil {
		return err
	}
	var n int
	// goose v3 deletes the row of a migration that is rolled back, so an
	// applied version is one that has a row.
	err = db.QueryRowContext(ctx,
		`SELECT count(DISTINCT version_id) FROM `+VersionTable+` WHERE version_id = ANY($1) AND is_applied`,
		pq.Array(want)).Scan(&n)
	if err != nil {
		var missing bool
		if qerr := db.QueryRowContext(ctx, `SELECT to_regclass($1) IS NULL`, VersionTable).Scan(&missing); qerr == nil && missing {
			return ErrPending
		}
		return fmt.Errorf("while reading the applied migrations: %w", err)
	}
	if n != len(want) {
		return ErrPending
	}
	return nil
}
