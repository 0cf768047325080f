package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"io/fs"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/pressly/goose/v3"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/store/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestVersionsNeverCollide(t *testing.T) {
	vs, err := migrations.Versions()
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 || vs[0] != 1 {
		t.Fatalf("versions %v, want them to start at 1", vs)
	}
	if _, err := migrations.VersionsOf([]string{"000001_init.sql", "000002_a.sql", "000002_b.sql"}); err == nil {
		t.Error("two files with version 2 were accepted")
	}
}

// Every file is named NNNNNN_name.sql and has both directions.
func TestMigrationFiles(t *testing.T) {
	names, err := fs.Glob(migrations.FS, "*")
	if err != nil {
		t.Fatal(err)
	}
	valid := regexp.MustCompile(`^[0-9]{6}_[a-z0-9_]+\.sql$`)
	for _, n := range names {
		if !valid.MatchString(n) {
			t.Errorf("%s: want NNNNNN_name.sql", n)
		}
		b, err := fs.ReadFile(migrations.FS, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, mark := range []string{"-- +goose Up", "-- +goose Down"} {
			if !strings.Contains(string(b), mark) {
				t.Errorf("%s lacks %q", n, mark)
			}
		}
	}
}

// Up, down to nothing, and up again: the down sections really undo.
func TestUpDownUp(t *testing.T) {
	ctx := context.Background()
	db, err := sql.Open("postgres", pgtest.NewEmptyDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := migrations.Check(ctx, db); err != migrations.ErrPending {
		t.Fatalf("Check on an empty database: %v, want ErrPending", err)
	}
	if err := migrations.Up(ctx, db, nil); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Check(ctx, db); err != nil {
		t.Fatalf("Check after Up: %v", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithDisableGlobalRegistry(true), goose.WithTableName(migrations.VersionTable))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 0); err != nil {
		t.Fatalf("down: %v", err)
	}
	if err := migrations.Check(ctx, db); err != migrations.ErrPending {
		t.Fatalf("Check after down: %v, want ErrPending", err)
	}
	var tables int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> $1`, migrations.VersionTable).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("%d tables left after migrating down", tables)
	}
	if err := migrations.Up(ctx, db, nil); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if err := migrations.Check(ctx, db); err != nil {
		t.Fatalf("Check after up again: %v", err)
	}
}

// A concurrent index build cancelled part way (a migration timeout) leaves
// an invalid index; migrating again rebuilds it instead of keeping it.
func TestInvalidIndexIsRebuilt(t *testing.T) {
	ctx := context.Background()
	db, err := sql.Open("postgres", pgtest.NewEmptyDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := migrations.Up(ctx, db, nil); err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithDisableGlobalRegistry(true), goose.WithTableName(migrations.VersionTable))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 3); err != nil {
		t.Fatal(err)
	}
	// What a cancelled CREATE INDEX CONCURRENTLY leaves behind.
	for _, q := range []string{
		`CREATE INDEX appointments_delivery ON appointments (delivery_id)`,
		`UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'appointments_delivery'::regclass`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := migrations.Up(ctx, db, nil); err != nil {
		t.Fatal(err)
	}
	var valid bool
	if err := db.QueryRowContext(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = 'appointments_delivery'::regclass`).Scan(&valid); err != nil || !valid {
		t.Errorf("appointments_delivery valid = %v (%v), want rebuilt valid", valid, err)
	}
}

// Migration 7's index, likewise: a cancelled build's invalid index is
// dropped and built again, unique and partial.
func TestInvalidPendingContentIndexIsRebuilt(t *testing.T) {
	ctx := context.Background()
	_, db := atVersion(t, 6)
	for _, q := range []string{
		`CREATE INDEX quarantined_entries_pending_content ON quarantined_entries (ehr)`,
		`UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'quarantined_entries_pending_content'::regclass`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := migrations.Up(ctx, db, nil); err != nil {
		t.Fatal(err)
	}
	var valid, unique bool
	var def string
	if err := db.QueryRowContext(ctx, `SELECT i.indisvalid, i.indisunique, pg_get_indexdef(i.indexrelid) FROM pg_index i
		WHERE i.indexrelid = 'quarantined_entries_pending_content'::regclass`).Scan(&valid, &unique, &def); err != nil {
		t.Fatal(err)
	}
	if !valid || !unique || !strings.Contains(def, "(ehr, raw_sha256) WHERE ((replayed_at IS NULL) AND (raw IS NOT NULL))") {
		t.Errorf("quarantined_entries_pending_content: valid %v, unique %v, %s; want rebuilt as migration 7 has it", valid, unique, def)
	}
}

// Migrations 6 and 7 over what earlier releases kept: a retried delivery's
// pending quarantined entries, kept twice. They get no hash, so the unique
// index builds, and both rows stay as they were.
func TestPendingContentIndexOverEarlierDuplicates(t *testing.T) {
	ctx := context.Background()
	_, db := atVersion(t, 5)
	for _, q := range []string{
		`INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
			SELECT 'nexus', 'req-' || n, now(), sha256('body'), 1, 'quarantined', 200 FROM generate_series(1, 2) n`,
		`INSERT INTO quarantined_entries (ehr, delivery_id, entry_index, raw, errors)
			SELECT 'nexus', id, 0, '{"appointment":{}}', '[]' FROM webhook_deliveries`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := migrations.Up(ctx, db, nil); err != nil {
		t.Fatalf("migrating over identical pending entries: %v", err)
	}
	var rows, hashed int
	if err := db.QueryRowContext(ctx, `SELECT count(*), count(raw_sha256) FROM quarantined_entries`).Scan(&rows, &hashed); err != nil {
		t.Fatal(err)
	}
	if rows != 2 || hashed != 0 {
		t.Errorf("%d rows, %d with a hash; want both kept as they were", rows, hashed)
	}
	var valid bool
	if err := db.QueryRowContext(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = 'quarantined_entries_pending_content'::regclass`).Scan(&valid); err != nil || !valid {
		t.Errorf("quarantined_entries_pending_content valid = %v (%v)", valid, err)
	}
}

// Migration 8 over a delivery log of the previous release, with a
// receiver of that release still writing: the table is not rewritten (its
// file stays the same), its rows and that receiver's later ones have no
// field errors (NULL), and the new columns take a rejected request's.
func TestDeliveryFieldErrorsColumns(t *testing.T) {
	ctx := context.Background()
	_, db := atVersion(t, 7)
	// The previous release's insert (store.RecordDeliveries): it names its columns.
	const previousInsert = `INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
		VALUES ('nexus', $1, now(), sha256('body'), 4, 'rejected', 422)`
	if _, err := db.ExecContext(ctx, previousInsert, "before"); err != nil {
		t.Fatal(err)
	}
	fileOf := func() string {
		t.Helper()
		var f string
		if err := db.QueryRowContext(ctx, `SELECT pg_relation_filenode('webhook_deliveries')::text`).Scan(&f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	file := fileOf()
	if err := migrations.Up(ctx, db, nil); err != nil {
		t.Fatal(err)
	}
	if after := fileOf(); after != file {
		t.Errorf("webhook_deliveries was rewritten (file %s, then %s): the migration must change only the catalog", file, after)
	}
	var cols []string
	rows, err := db.QueryContext(ctx, `SELECT column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, 'no default')
		FROM information_schema.columns WHERE table_name = 'webhook_deliveries' AND column_name LIKE 'field_error%' ORDER BY column_name`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, c)
	}
	if want := []string{"field_error_count integer YES no default", "field_errors jsonb YES no default"}; strings.Join(cols, "; ") != strings.Join(want, "; ") {
		t.Errorf("columns %q, want %q", cols, want)
	}
	if _, err := db.ExecContext(ctx, previousInsert, "during"); err != nil {
		t.Fatalf("a receiver of the previous release, after the migration: %v", err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code,
		field_errors, field_error_count) VALUES ('nexus', 'after', now(), sha256('body'), 4, 'rejected', 422,
		'[{"index":1,"field":"appointments[1].patient","message":"is required"}]', 1)`); err != nil {
		t.Fatal(err)
	}
	var withErrors []string
	rows, err = db.QueryContext(ctx, `SELECT request_id || ' ' || coalesce(field_error_count::text, 'NULL') || ' ' || coalesce(field_errors::text, 'NULL')
		FROM webhook_deliveries ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		withErrors = append(withErrors, r)
	}
	want := []string{"before NULL NULL", "during NULL NULL",
		`after 1 [{"field": "appointments[1].patient", "index": 1, "message": "is required"}]`}
	if strings.Join(withErrors, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows\n%s\nwant\n%s", strings.Join(withErrors, "\n"), strings.Join(want, "\n"))
	}
}

// Dropping that invalid index takes an ACCESS EXCLUSIVE lock: behind a
// long transaction it gives up after migrations.LockTimeout, as the
// transactional migrations do, so writers queued behind it are delayed,
// not held until the long transaction ends.
func TestInvalidIndexDropWaitIsBounded(t *testing.T) {
	ctx := context.Background()
	url, migDB := atVersion(t, 3)
	other := open(t, url)
	for _, q := range []string{
		`CREATE INDEX appointments_delivery ON appointments (delivery_id)`,
		`UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'appointments_delivery'::regclass`,
	} {
		if _, err := migDB.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	long := readingTx(t, other, nil, "appointments")

	migrated := make(chan error, 1)
	start := time.Now()
	go func() { migrated <- migrations.Up(ctx, migDB, nil) }()
	waitForLockWait(t, other, "DO $$")
	writerBehind(t, other, "the drop")
	wantLockTimeout(t, <-migrated, start, migDB, "dropping the invalid index")
	if err := long.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Up(ctx, migDB, nil); err != nil {
		t.Fatalf("migrating after the long transaction: %v", err)
	}
	var valid bool
	if err := migDB.QueryRow(`SELECT indisvalid FROM pg_index WHERE indexrelid = 'appointments_delivery'::regclass`).Scan(&valid); err != nil || !valid {
		t.Errorf("appointments_delivery valid = %v (%v), want rebuilt valid", valid, err)
	}
}

// atVersion is a new database migrated up to version, and a pool on it
// with one connection, so that what the migrations leave on their session
// is what the next statement sees.
func atVersion(t *testing.T, version int64) (url string, db *sql.DB) {
	t.Helper()
	ctx := context.Background()
	url = pgtest.NewEmptyDatabase(t)
	db, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithDisableGlobalRegistry(true), goose.WithTableName(migrations.VersionTable))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, version); err != nil {
		t.Fatal(err)
	}
	return url, db
}

// open is another pool on url, closed when the test ends.
func open(t *testing.T, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// waitForLockWait waits until a session of db waits for a lock with a
// statement starting with prefix.
func waitForLockWait(t *testing.T, db *sql.DB, prefix string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1 || '%'`, prefix).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session waits for a lock with %q", prefix)
		}
	}
}

func lockTimeoutOf(t *testing.T, db *sql.DB) string {
	t.Helper()
	var v string
	if err := db.QueryRow(`SHOW lock_timeout`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// writerBehind runs a writer of the previous release's kind on db while a
// migration waits for its lock, and fails if it waited much longer than
// migrations.LockTimeout (or failed: it must be delayed, not refused).
func writerBehind(t *testing.T, db *sql.DB, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), migrations.LockTimeout+10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := db.ExecContext(ctx, `UPDATE appointments SET updated_at = now() WHERE ehr = 'nobody'`); err != nil {
		t.Fatalf("the writer queued behind %s failed after %v: %v", what, time.Since(start), err)
	}
	if waited := time.Since(start); waited > migrations.LockTimeout+2*time.Second {
		t.Errorf("the writer waited %v behind %s, want at most about the lock_timeout (%v)", waited, what, migrations.LockTimeout)
	}
}

// wantLockTimeout checks that a migration started at start gave up with a
// lock timeout (55P03) after about migrations.LockTimeout, and left no
// lock_timeout on the pool's session.
func wantLockTimeout(t *testing.T, err error, start time.Time, migDB *sql.DB, what string) {
	t.Helper()
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "55P03" {
		t.Fatalf("%s behind the long transaction: %v, want a lock timeout (55P03)", what, err)
	}
	if took := time.Since(start); took < migrations.LockTimeout-time.Second || took > migrations.LockTimeout+3*time.Second {
		t.Errorf("%s gave up after %v, want about %v", what, took, migrations.LockTimeout)
	}
	if v := lockTimeoutOf(t, migDB); v != "0" {
		t.Errorf("lock_timeout %q left on the pool's session after %s", v, what)
	}
}

// An ALTER TABLE queued behind a long transaction holds up every writer of
// that table (PostgreSQL's lock queue) until it gets its lock: a migration
// gives up after migrations.LockTimeout instead, so that the receivers of
// the previous release keep writing during a rolling upgrade, and succeeds
// once the long transaction has ended.
func TestMigrationLockWaitIsBounded(t *testing.T) {
	ctx := context.Background()
	url, migDB := atVersion(t, 1) // migration 2 alters appointments
	other := open(t, url)

	// A long transaction that read appointments: it holds ACCESS SHARE.
	long := readingTx(t, other, nil, "appointments")

	migrated := make(chan error, 1)
	start := time.Now()
	go func() { migrated <- migrations.Up(ctx, migDB, nil) }()
	waitForLockWait(t, other, "ALTER TABLE appointments")

	// A writer of the previous release, queued behind the ALTER TABLE.
	writerBehind(t, other, "the migration")
	wantLockTimeout(t, <-migrated, start, migDB, "migrating")

	// The long transaction ends: the next attempt applies everything.
	if err := long.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Up(ctx, migDB, nil); err != nil {
		t.Fatalf("migrating after the long transaction: %v", err)
	}
	if err := migrations.Check(ctx, migDB); err != nil {
		t.Fatal(err)
	}
	if v := lockTimeoutOf(t, migDB); v != "0" {
		t.Errorf("lock_timeout %q left on the pool's session after migrating", v)
	}
}

// CREATE INDEX CONCURRENTLY (migration 4) never queues writers, but it
// waits for transactions older than it, and PostgreSQL applies lock_timeout
// to that wait too: NO TRANSACTION migrations run without the short
// lock_timeout, so a long transaction (a backup's) delays the build rather
// than cancelling it, and writers carry on meanwhile. Also on a database
// whose default lock_timeout and statement_timeout (a DBA's) are shorter
// than the wait.
func TestConcurrentIndexOutlastsOldTransactions(t *testing.T) {
	ctx := context.Background()
	url, _ := atVersion(t, 3)
	pgtest.AlterDatabase(t, url, "lock_timeout = '1s'")
	pgtest.AlterDatabase(t, url, "statement_timeout = '3s'")
	other, migDB := open(t, url), open(t, url) // sessions with those defaults

	// A backup-like transaction: a snapshot older than the build.
	old := readingTx(t, other, &sql.TxOptions{Isolation: sql.LevelRepeatableRead}, "patients")

	migrated := make(chan error, 1)
	go func() { migrated <- migrations.Up(ctx, migDB, nil) }()
	waitForLockWait(t, other, "CREATE INDEX CONCURRENTLY")
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := other.ExecContext(wctx, `UPDATE appointments SET updated_at = now() WHERE ehr = 'nobody'`); err != nil {
		t.Errorf("a writer during the index build: %v", err)
	}
	select {
	case err := <-migrated:
		t.Fatalf("the migration ended while an older transaction was open: %v", err)
	case <-time.After(migrations.LockTimeout + 2*time.Second):
	}
	if err := old.Commit(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-migrated:
		if err != nil {
			t.Fatalf("migration 4: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("migration 4 did not end after the old transaction did")
	}
	var valid int
	if err := migDB.QueryRow(`SELECT count(*) FROM pg_index WHERE indisvalid AND indexrelid IN
		('appointments_delivery'::regclass, 'appointment_history_applied_at'::regclass)`).Scan(&valid); err != nil || valid != 2 {
		t.Errorf("valid indexes: %d (%v), want 2", valid, err)
	}
}

func TestNoTransaction(t *testing.T) {
	for src, want := range map[string]bool{
		"-- +goose NO TRANSACTION\n-- +goose Up\nSELECT 1;\n": true,
		"--  +goose no transaction\r\n-- +goose Up\n":         true,
		"-- +goose Up\nALTER TABLE a ADD COLUMN b int;\n":     false,
		"-- NO TRANSACTION, but not an annotation\n":          false,
	} {
		if got := migrations.NoTransaction(src); got != want {
			t.Errorf("%q: %v, want %v", src, got, want)
		}
	}
	b, err := fs.ReadFile(migrations.FS, "000004_retention_indexes.sql")
	if err != nil {
		t.Fatal(err)
	}
	if !migrations.NoTransaction(string(b)) {
		t.Error("migration 4 (CREATE INDEX CONCURRENTLY) is not seen as NO TRANSACTION")
	}
}

// readingTx begins a transaction on db that has read table, so it holds
// ACCESS SHARE on it (and, at repeatable read, its snapshot) until it is
// rolled back, at the latest when the test ends.
func readingTx(t *testing.T, db *sql.DB, opts *sql.TxOptions, table string) *sql.Tx {
	t.Helper()
	tx, err := db.BeginTx(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	var n int
	if err := tx.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return tx
}
