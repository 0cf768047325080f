// Package pgtest gives tests a real PostgreSQL (architecture.md, "Development and tests").
//
// With TEST_DATABASE_URL set (a URL of a server where the user may CREATE
// DATABASE), tests use that server. Otherwise the package starts a throwaway
// cluster from the installed binaries (initdb/postgres on PATH or under
// /usr/lib/postgresql/*/bin) in a temporary directory, listening on a free
// 127.0.0.1 port only. initdb refuses to run as root, so under root the
// cluster runs as the "postgres" (or else "nobody") account.
//
// Use:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestX(t *testing.T) {
//	    url := pgtest.NewDatabase(t) // fresh database, all migrations applied
//	    …
//	}
//
// Tests that take the database down use a cluster of their own:
//
//	c := pgtest.NewCluster(t)
//	url := c.NewDatabase(t)
//	c.Stop() … c.Start() // same port, same data
//
// NewEmptyDatabase (and Cluster.NewEmptyDatabase) give an unmigrated
// database, for tests of migrating itself.
//
// Programs that are not tests (hack/devrun, hack/bench) use StartCluster
// and Destroy.
//
// A missing PostgreSQL fails the test (never skips) and says how to get one.
package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/lib/pq" // the database/sql driver the product uses

	"github.com/insighthealth/ehr-operator/receiver/store/migrations"
)

// EnvURL names the variable that points tests at an existing server.
const EnvURL = "TEST_DATABASE_URL"

const howToGet = "no PostgreSQL for tests: `apt-get install postgresql` (initdb and postgres are then found under /usr/lib/postgresql/*/bin) or set " + EnvURL + " to a server URL where the user may CREATE DATABASE"

// shared is the server of pgtest.Main, used by NewDatabase.
var shared struct {
	mu     sync.Mutex
	srv    *server
	err    error
	inMain bool
}

// Main is for TestMain: it runs the package's tests and exits with their
// code. The shared server (TEST_DATABASE_URL, or a throwaway cluster started
// on first use by NewDatabase) is cleaned up afterwards.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	if shared.srv != nil {
		shared.srv.close()
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// NewDatabase returns the URL of a new database on the shared server, with
// every migration applied. The package's TestMain must call Main.
func NewDatabase(t testing.TB) string {
	t.Helper()
	srv := sharedServer(t)
	return srv.newDatabase(t)
}

// NewEmptyDatabase returns the URL of a new database on the shared server
// with no migration applied, for tests of migrating itself.
func NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	return sharedServer(t).newEmptyDatabase(t)
}

func sharedServer(t testing.TB) *server {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		t.Fatal("pgtest: call pgtest.Main(m) from the package's TestMain, so the shared PostgreSQL is stopped after the tests")
	}
	if shared.srv == nil && shared.err == nil {
		shared.srv, shared.err = newSharedServer()
	}
	if shared.err != nil {
		t.Fatalf("pgtest: %v", shared.err)
	}
	return shared.srv
}

func newSharedServer() (*server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		return &server{adminURL: u, external: true}, nil
	}
	c, err := startCluster(nil, false)
	if err != nil {
		return nil, err
	}
	return &server{adminURL: c.URL(), cluster: c}, nil
}

// server is a PostgreSQL server databases are made on.
type server struct {
	adminURL string
	// external servers are shared with others: databases made there are
	// dropped after each test, and names carry the process id.
	external bool
	cluster  *Cluster

	templateOnce sync.Once
	template     string
	templateErr  error
	seq          atomic.Int64
}

func (s *server) close() {
	if s.external {
		if s.template != "" {
			_ = s.exec(context.Background(), s.adminURL, `DROP DATABASE IF EXISTS `+quoteIdent(s.template)+` WITH (FORCE)`)
		}
		return
	}
	if s.cluster != nil {
		s.cluster.destroy()
	}
}

// newDatabase copies a migrated template database: cheaper than migrating
// every test's database.
func (s *server) newDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s.templateOnce.Do(func() { s.template, s.templateErr = s.makeTemplate(ctx) })
	if s.templateErr != nil {
		t.Fatalf("pgtest: %v", s.templateErr)
	}
	return s.create(ctx, t, `TEMPLATE `+quoteIdent(s.template))
}

func (s *server) newEmptyDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return s.create(ctx, t, "")
}

func (s *server) create(ctx context.Context, t testing.TB, options string) string {
	t.Helper()
	name := fmt.Sprintf("pgtest_%d_%d", os.Getpid(), s.seq.Add(1))
	if err := s.exec(ctx, s.adminURL, `CREATE DATABASE `+quoteIdent(name)+` `+options); err != nil {
		t.Fatalf("pgtest: while creating a test database: %v", err)
	}
	if s.external {
		t.Cleanup(func() {
			if err := s.exec(context.Background(), s.adminURL, `DROP DATABASE IF EXISTS `+quoteIdent(name)+` WITH (FORCE)`); err != nil {
				t.Logf("pgtest: while dropping test database %s: %v", name, err)
			}
		})
	}
	u, err := withDatabase(s.adminURL, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return u
}

func (s *server) makeTemplate(ctx context.Context) (string, error) {
	name := fmt.Sprintf("pgtest_template_%d", os.Getpid())
	if err := s.exec(ctx, s.adminURL, `DROP DATABASE IF EXISTS `+quoteIdent(name)); err != nil {
		return "", fmt.Errorf("while dropping a stale template database: %w", err)
	}
	if err := s.exec(ctx, s.adminURL, `CREATE DATABASE `+quoteIdent(name)); err != nil {
		return "", fmt.Errorf("while creating the template database: %w", err)
	}
	u, err := withDatabase(s.adminURL, name)
	if err != nil {
		return "", err
	}
	db, err := sql.Open("postgres", u)
	if err != nil {
		return "", err
	}
	// Closing the pool before any CREATE DATABASE … TEMPLATE matters: a
	// template with open sessions cannot be copied.
	defer db.Close()
	if err := migrations.Up(ctx, db, nil); err != nil {
		return "", fmt.Errorf("while migrating the template database: %w", err)
	}
	return name, nil
}

func (s *server) exec(ctx context.Context, u, query string) error {
	db, err := sql.Open("postgres", u)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, query)
	return err
}

func withDatabase(u, name string) (string, error) {
	pu, err := url.Parse(u)
	if err != nil {
		return "", fmt.Errorf("while parsing the server URL: %w", err)
	}
	pu.Path = "/" + name
	return pu.String(), nil
}

func quoteIdent(s string) string { return `"` + s + `"` }

var roleSeq atomic.Int64

// NewRole makes a login role with grants (each "SELECT, INSERT ON ALL
// TABLES IN SCHEMA public" or the like, granted TO it) and returns dbURL
// with the role as its user: a database seen with a receiver's least
// privileges. The role and what it owns go at the end of t.
func NewRole(t testing.TB, dbURL string, grants ...string) string {
	t.Helper()
	admin, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	role := fmt.Sprintf("role_%d_%d", os.Getpid(), roleSeq.Add(1))
	stmts := []string{`CREATE ROLE ` + role + ` LOGIN`}
	for _, g := range grants {
		stmts = append(stmts, `GRANT `+g+` TO `+role)
	}
	for _, stmt := range stmts {
		if _, err := admin.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(`DROP OWNED BY ` + role)
		_, _ = admin.Exec(`DROP ROLE ` + role)
	})
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	return u.String()
}

// AlterDatabase sets a default of dbURL's database for the sessions opened
// after it (ALTER DATABASE … SET setting, e.g. "lock_timeout = '1ms'"), as
// a DBA's configuration would: a database seen with someone else's
// defaults.
func AlterDatabase(t testing.TB, dbURL, setting string) {
	t.Helper()
	admin, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	stmt := `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET ` + strings.ReplaceAll(setting, "'", "''") + `', current_database()); END $$`
	if _, err := admin.Exec(stmt); err != nil {
		t.Fatalf("ALTER DATABASE … SET %s: %v", setting, err)
	}
}

// HoldRows runs lockSQL in a transaction of someone else's (a DBA's fix
// left open in psql) and returns it, to be rolled back by the test (at its
// end at the latest).
func HoldRows(t testing.TB, db *sql.DB, lockSQL string, args ...any) *sql.Tx {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback() })
	if _, err := tx.Exec(lockSQL, args...); err != nil {
		t.Fatal(err)
	}
	return tx
}
