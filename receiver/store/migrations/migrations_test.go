package migrations_test

import (
	"context"
	"database/sql"
	"io/fs"
	"regexp"
	"strings"
	"testing"

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
