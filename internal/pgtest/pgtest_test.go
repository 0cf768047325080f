package pgtest

import (
	"context"
	"database/sql"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/store/migrations"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewDatabaseIsMigratedAndFresh(t *testing.T) {
	ctx := context.Background()
	a, b := NewDatabase(t), NewDatabase(t)
	if a == b {
		t.Fatalf("two calls gave the same database %q", a)
	}
	dba := open(t, a)
	if err := migrations.Check(ctx, dba); err != nil {
		t.Fatalf("new database not migrated: %v", err)
	}
	if _, err := dba.ExecContext(ctx, `CREATE TABLE only_in_a (x int)`); err != nil {
		t.Fatal(err)
	}
	var exists bool
	if err := open(t, b).QueryRowContext(ctx, `SELECT to_regclass('only_in_a') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Error("a table made in one test database shows in another")
	}
}

func TestClusterStopStart(t *testing.T) {
	ctx := context.Background()
	c := NewCluster(t)
	db := open(t, c.NewDatabase(t))
	if _, err := db.ExecContext(ctx, `CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)`); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := db.PingContext(short); err == nil {
		t.Fatal("ping succeeded while the cluster was stopped")
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	var x int
	if err := db.QueryRowContext(ctx, `SELECT x FROM kept`).Scan(&x); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if x != 42 {
		t.Errorf("after restart got %d, want 42", x)
	}
}

func open(t *testing.T, u string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestFindBinaries(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"13", "16", "9"} {
		dir := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"initdb", "postgres"} {
			if err := os.WriteFile(filepath.Join(dir, name), nil, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := findBinariesIn("", filepath.Join(root, "*", "bin"))
	if err != nil || got != filepath.Join(root, "16", "bin") {
		t.Errorf("findBinariesIn = %q, %v; want the newest version's bin", got, err)
	}
	got, err = findBinariesIn(filepath.Join(root, "9", "bin"), filepath.Join(root, "*", "bin"))
	if err != nil || got != filepath.Join(root, "9", "bin") {
		t.Errorf("findBinariesIn = %q, %v; want PATH first", got, err)
	}
	_, err = findBinariesIn(t.TempDir(), filepath.Join(t.TempDir(), "*", "bin"))
	if err == nil || !strings.Contains(err.Error(), "apt-get install postgresql") || !strings.Contains(err.Error(), EnvURL) {
		t.Errorf("without PostgreSQL: %v; want advice naming apt-get install postgresql and %s", err, EnvURL)
	}
}

// A TLS cluster is verified against its own CA with verify-full, and a
// client holding another CA refuses it.
func TestTLSClusterVerifyFull(t *testing.T) {
	c, caPEM := NewTLSCluster(t)
	dir := t.TempDir()
	other, err := NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"right.crt": caPEM, "wrong.crt": other.CertPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := strings.Replace(c.NewDatabase(t), "sslmode=disable", "sslmode=verify-full", 1)
	ctx := context.Background()
	var ssl bool
	db := open(t, base+"&sslrootcert="+filepath.Join(dir, "right.crt"))
	if err := db.QueryRowContext(ctx, `SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl); err != nil {
		t.Fatalf("verify-full with the cluster's CA: %v", err)
	}
	if !ssl {
		t.Error("the verify-full connection is not encrypted")
	}
	err = open(t, base+"&sslrootcert="+filepath.Join(dir, "wrong.crt")).PingContext(ctx)
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("verify-full with another CA: %v, want an unknown-authority error", err)
	}
}

// TestDurableCluster: the bench's durable cluster runs with PostgreSQL's
// production durability settings, and the fast one without.
func TestDurableCluster(t *testing.T) {
	ctx := context.Background()
	for _, durable := range []bool{true, false} {
		start := StartCluster
		want := "off"
		if durable {
			start, want = StartDurableCluster, "on"
		}
		c, err := start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Destroy)
		db := open(t, c.URL())
		for name, want := range map[string]string{"fsync": want, "full_page_writes": want, "synchronous_commit": "on"} {
			var got string
			if err := db.QueryRowContext(ctx, "SHOW "+name).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("durable %v: %s = %s, want %s", durable, name, got, want)
			}
		}
		if _, err := os.Stat(filepath.Join(c.DataDir(), "pg_wal")); err != nil {
			t.Errorf("durable %v: no WAL in the data directory: %v", durable, err)
		}
	}
}

// A port taken between choosing it and PgBouncer binding it (another
// test's listener) makes PgBouncer exit at start; it is started again on
// another port.
func TestPgBouncerPortTakenMeanwhile(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	var chosen []int
	pgBouncerPort = func() (int, error) {
		p, err := freePort()
		if len(chosen) == 0 {
			p = takenPort
		}
		chosen = append(chosen, p)
		return p, err
	}
	defer func() { pgBouncerPort = freePort }()

	pooled := NewPgBouncer(t, NewDatabase(t), "session")
	if len(chosen) != 2 {
		t.Fatalf("ports chosen: %v; want the taken one, then another", chosen)
	}
	if !strings.Contains(pooled, ":"+strconv.Itoa(chosen[1])+"/") {
		t.Fatalf("URL %s is not on the second port %d", pooled, chosen[1])
	}
	var one int
	if err := open(t, pooled).QueryRowContext(context.Background(), `SELECT 1`).Scan(&one); err != nil {
		t.Fatalf("through PgBouncer: %v", err)
	}
}
