package store

import (
	"context"
	"crypto/x509"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/store/migrations"
)

func TestMigrateConcurrentlyThenReady(t *testing.T) {
	t.Parallel()
	u := pgtest.NewEmptyDatabase(t)
	ctx := context.Background()
	first, _ := openStore(t, u)
	if err := first.Ready(ctx); !errors.Is(err, migrations.ErrPending) {
		t.Fatalf("Ready before migrating: %v, want ErrPending", err)
	}
	// Replicas starting at once: each migrates under the advisory lock.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		s, _ := openStore(t, u)
		wg.Go(func() { errs[i] = s.Migrate(ctx) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d: %v", i, err)
		}
	}
	if err := first.Ready(ctx); err != nil {
		t.Fatalf("Ready after migrating: %v", err)
	}
	if err := first.Migrate(ctx); err != nil {
		t.Errorf("Migrate again: %v", err)
	}
	mustWrite(t, first, batch(specEntry()))
}

// A server set read-only (default_transaction_read_only: a managed
// service's when its disk is full) gets no migration until it takes writes
// again: lib/pq begins goose's transactions READ WRITE, which overrides
// that default, so a new release's receivers applied theirs.
func TestMigrateWaitsForAWritableServer(t *testing.T) {
	t.Parallel()
	u := pgtest.NewEmptyDatabase(t)
	ctx := context.Background()
	pgtest.AlterDatabase(t, u, "default_transaction_read_only = on")
	s, db := openStore(t, u)
	if err := s.Migrate(ctx); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Migrate on a read-only server: %v, want ErrReadOnly", err)
	}
	var tables int
	if err := db.Get(&tables, `SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()`); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("%d tables made on a read-only server, want 0", tables)
	}
	// BEGIN READ WRITE, as lib/pq's, is how a session writes here.
	tx := db.MustBegin()
	tx.MustExec(`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I RESET default_transaction_read_only', current_database()); END $$`)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	newSessions(s)
	if err := s.Migrate(ctx); err != nil {
		t.Errorf("Migrate once the server takes writes: %v", err)
	}
}

func TestReadyWhenDatabaseUnreachable(t *testing.T) {
	t.Parallel()
	// A port nobody listens on: take a free one and close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s, err := Open(context.Background(), "postgres://u:secret-password@"+addr+"/db?sslmode=disable")
	if err != nil {
		t.Fatalf("Open must not need the database: %v", err)
	}
	defer s.Close()
	err = s.Ready(context.Background())
	if err == nil || !IsUnavailable(err) {
		t.Fatalf("Ready: %v, want an unavailable error", err)
	}
	_, err = s.Write(context.Background(), batch(minimalEntry("apt-1")))
	if !IsUnavailable(err) {
		t.Errorf("Write: %v, want an unavailable error", err)
	}
	if strings.Contains(err.Error(), "secret-password") {
		t.Errorf("error %q shows the password", err)
	}
}

func TestOpenRejectsBadURLWithoutEchoingIt(t *testing.T) {
	t.Parallel()
	for url, secret := range map[string]string{
		"postgres://user:pa%zzword@host/db":                  "%zz",
		"postgres://app:Sup3r/Secret#pw@127.0.0.1:5499/ehr":  "Sup3r",
		"postgres://app:Pa55w0rdPrefix?x@127.0.0.1:5499/ehr": "Pa55w0rd",
		"postgres://app:se:cr@et@host/db?sslmode=bogus":      "cr@et",
		// Not a URL: lib/pq reads key=value pairs and quotes what it
		// could not read.
		"postgres//app:Sup3rSecret@127.0.0.1:5499/ehr":   "Sup3rSecret",
		"postgresql:/app:Sup3rSecret@127.0.0.1:5499/ehr": "Sup3rSecret",
		"host=db user=app password=Sup3r Secret":         "Secret",
	} {
		_, err := Open(context.Background(), url)
		if err == nil {
			t.Errorf("Open accepted the malformed URL with %q", secret)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q shows the password", err)
		}
	}
	// Without a password, lib/pq's reason is kept: it names the parameter.
	if _, err := Open(context.Background(), "postgres://app@host/db?sslmode=bogus"); err == nil || !strings.Contains(err.Error(), "sslmode") {
		t.Errorf("an unknown sslmode: %v, want the reason", err)
	}
}

// The database goes away and comes back: Write fails as unavailable while
// it is down and succeeds afterwards on the same Store.
func TestWriteAcrossDatabaseOutage(t *testing.T) {
	t.Parallel()
	c := pgtest.NewCluster(t)
	s, db := openStore(t, c.NewDatabase(t))
	ctx := context.Background()
	mustWrite(t, s, batch(minimalEntry("apt-before")))

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // pooled connections first, then new ones
		_, err := s.Write(ctx, batch(minimalEntry(fmt.Sprintf("apt-down-%d", i))))
		if err == nil {
			t.Fatal("Write succeeded with the database stopped")
		}
		if !IsUnavailable(err) {
			t.Fatalf("Write while down: %v; IsUnavailable is false", err)
		}
	}
	if err := s.Ready(ctx); !IsUnavailable(err) {
		t.Errorf("Ready while down: %v, want unavailable", err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, s, batch(minimalEntry("apt-after")))
	if err := s.Ready(ctx); err != nil {
		t.Errorf("Ready after restart: %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM appointments`); n != 2 {
		t.Errorf("%d appointments, want 2", n)
	}
}

// A database that accepts connections but never answers: Write gives up
// with an unavailable error instead of hanging.
func TestWriteCallerDeadline(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			defer conn.Close() // hold it open, say nothing
		}
	}()
	s, err := Open(context.Background(), "postgres://u@"+l.Addr().String()+"/db?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = s.Write(ctx, batch(minimalEntry("apt-1")))
	if !IsUnavailable(err) {
		t.Errorf("Write to a silent server: %v, want unavailable", err)
	}
}

func TestIsUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("something else"), false},
		{ErrClosed, true},
		{driver.ErrBadConn, true},
		{fmt.Errorf("while: %w", io.ErrUnexpectedEOF), true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{fmt.Errorf("write: %w", syscall.EPIPE), true},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{context.DeadlineExceeded, true},
		{context.Canceled, false},                       // the caller went away; nothing to do with the database
		{wrap("Write", &pq.Error{Code: "57P01"}), true}, // admin shutdown
		{wrap("Write", &pq.Error{Code: "57P02"}), true},
		{wrap("Write", &pq.Error{Code: "57P03"}), true},
		{wrap("Write", &pq.Error{Code: "08006"}), true},
		{wrap("Write", &pq.Error{Code: "53300"}), true},
		{wrap("Write", &pq.Error{Code: "40P01"}), true},
		{wrap("Write", &pq.Error{Code: "25006"}), true}, // read-only: a standby, a full disk's protection
		{wrap("Write", &pq.Error{Code: "55P03"}), true}, // a DBA's lock_timeout, after the retries
		{wrap("Ping", ErrReadOnly), true},
		{wrap("Write", &pq.Error{Code: "23505"}), false},
		{wrap("Write", &pq.Error{Code: "22P02"}), false},
		{wrap("Write", &pq.Error{Code: "42P01"}), false},
	}
	for _, tc := range tests {
		if got := IsUnavailable(tc.err); got != tc.want {
			t.Errorf("IsUnavailable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestIsRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{wrap("Ping", &pq.Error{Code: "28P01"}), true}, // password authentication failed
		{wrap("Ping", &pq.Error{Code: "28000"}), true}, // no pg_hba.conf entry
		{wrap("Ping", &pq.Error{Code: "3D000"}), true}, // database does not exist
		{fmt.Errorf("while applying migrations: %w", &pq.Error{Code: "42501"}), true},

		{fmt.Errorf("tls: %w", x509.UnknownAuthorityError{}), true},
		{fmt.Errorf("tls: %w", x509.HostnameError{Host: "db"}), true},
		{wrap("Ping", pq.ErrSSLNotSupported), true}, // sslmode=require, a server without TLS
		// PgBouncer refuses settings with 08P01 (measured, 1.18).
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "unsupported startup parameter: statement_timeout"}), true},
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "no such database: appointments"}), true},
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "password authentication failed"}), true},
		// Away, not refusing: an outage keeps the pods ready. A name
		// not found may be a headless Service with no pod up.
		{&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "db.example", IsNotFound: true}}, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "server misbehaving", Name: "db.example", IsTemporary: true}}, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, false},
		{wrap("Ping", &pq.Error{Code: "57P03"}), false}, // the database is starting
		{wrap("Ping", ErrReadOnly), false},              // a standby during a failover
		{wrap("Ping", &pq.Error{Code: "53300"}), false}, // too many connections
		{wrap("Ping", &pq.Error{Code: "53300", Message: "remaining connection slots are reserved for non-replication superuser connections"}), false},
		// PgBouncer's own outages: 08P01 as well.
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "query_wait_timeout"}), false},
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "no more connections allowed (max_client_conn)"}), false},
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "server login has been failing, try again later (server_login_retry)"}), false},
		{context.DeadlineExceeded, false},
	}
	for _, tc := range tests {
		if got := IsRefused(tc.err); got != tc.want {
			t.Errorf("IsRefused(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestCause(t *testing.T) {
	t.Parallel()
	dns := func(notFound bool) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "x", Name: "db.secret-host.example", IsNotFound: notFound}}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("something else"), ""},
		{wrap("Ping", &pq.Error{Code: "28P01", Message: `password authentication failed for user "app"`}), "SQLSTATE 28P01 (invalid_password)"},
		{wrap("Ping", &pq.Error{Code: "3D000"}), "SQLSTATE 3D000 (invalid_catalog_name)"},
		{wrap("Ping", &pq.Error{Code: "XX999"}), "SQLSTATE XX999"},
		{wrap("Ping", &pq.Error{Code: "53300", Message: "sorry, too many clients already"}), "SQLSTATE 53300 (too_many_connections)"},
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "no such database: app"}), "SQLSTATE 08P01: the pooler does not know the database"},
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "unsupported startup parameter: statement_timeout"}),
			"SQLSTATE 08P01: the pooler refuses a startup parameter of the URL (PgBouncer: ignore_startup_parameters)"},
		{wrap("Ping", &pq.Error{Code: "08P01", Message: "query_wait_timeout"}), "SQLSTATE 08P01 (protocol_violation)"},
		{wrap("Ping", pq.ErrSSLNotSupported), "the server does not offer TLS, which the URL's sslmode requires"},
		{fmt.Errorf("tls: %w", x509.UnknownAuthorityError{}), "the server's certificate is not signed by a trusted CA"},
		{fmt.Errorf("tls: %w", x509.HostnameError{Host: "db"}), "the server's certificate does not name the host"},
		{fmt.Errorf("tls: %w", x509.CertificateInvalidError{Reason: x509.Expired}), "the server's certificate is not valid (expired?)"},
		{dns(true), "the host name does not resolve"},
		{dns(false), "the DNS lookup of the host failed"},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, "connection refused"},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.EHOSTUNREACH}, "no route to the host"},
		{fmt.Errorf("ping: %w", context.DeadlineExceeded), "no answer in time"},
		{fmt.Errorf("read: %w", syscall.ECONNRESET), "the connection was closed"},
		{driver.ErrBadConn, "the connection was closed"},
		{ErrClosed, "the receiver is shutting down"},
		{wrap("Ping", ErrReadOnly), "the database is read-only (a standby, or set read-only): the receiver needs the writable primary"},
	} {
		got := Cause(tc.err)
		if got != tc.want {
			t.Errorf("Cause(%v) = %q, want %q", tc.err, got, tc.want)
		}
		for _, secret := range []string{"app", "secret-host"} {
			if strings.Contains(got, secret) {
				t.Errorf("Cause(%v) = %q names %q", tc.err, got, secret)
			}
		}
	}
}

func TestDBErrorHidesValues(t *testing.T) {
	t.Parallel()
	err := wrap("Write", &pq.Error{
		Code: "22007", Message: `invalid input syntax for type date: "05/15/1990"`,
		Detail: "Key (external_id)=(Jane Doe) already exists.", Table: "patients", Column: "birth_date",
	})
	got := err.Error()
	for _, v := range []string{"05/15/1990", "Jane"} {
		if strings.Contains(got, v) {
			t.Errorf("%q contains the value %q", got, v)
		}
	}
	for _, s := range []string{"Write", "22007", "patients", "birth_date"} {
		if !strings.Contains(got, s) {
			t.Errorf("%q lacks %q", got, s)
		}
	}
}
