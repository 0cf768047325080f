// Package migrations holds the receiver's SQL schema as goose migrations
// embedded in the binary, and applies them. It is its own package so that
// the test harness (internal/pgtest) can migrate databases without importing
// the store.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"slices"

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

// Up applies every pending migration under a session advisory lock. Others
// waiting for the lock retry every second for up to five minutes, then find
// nothing left to do.
func Up(ctx context.Context, db *sql.DB, logger *slog.Logger) error {
	p, err := provider(db, logger)
	if err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("while applying migrations: %w", err)
	}
	return nil
}

func provider(db *sql.DB, logger *slog.Logger) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(lockID), lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, fmt.Errorf("while creating the migration lock: %w", err)
	}
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
		return nil, fmt.Errorf("while reading the embedded migrations: %w", err)
	}
	return p, nil
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
