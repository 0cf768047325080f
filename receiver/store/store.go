package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/receiver/store/migrations"
)

// Tuning of the batcher and the pool: workers statements run at once (see
// batcher.go for what each takes).
const (
	workers    = 4
	queueDepth = 4 * maxGroup
	// txTimeout bounds one shared transaction: a database that does not
	// answer fails its callers with context.DeadlineExceeded (unavailable).
	txTimeout = 15 * time.Second
	// Besides the workers: the delivery log, Ping, Migrate.
	maxConns = workers + 4
	// defaultConnectTimeout applies unless the URL sets connect_timeout.
	defaultConnectTimeout = 10 * time.Second
	// poolCloseWait bounds closing the pool: database/sql waits for every
	// query under way, and one may be blocked for minutes in a read from a
	// database that does not answer (the receiver's ping, its delivery log).
	poolCloseWait = 5 * time.Second
	// closeWait bounds Close's wait for the writes under way, before the
	// pool's.
	closeWait = 5 * time.Second
)

// Store is the receiver's PostgreSQL storage. It is safe for concurrent
// use.
type Store struct {
	db *sqlx.DB

	// checkSessions passed, or found a pooler in transaction mode
	// (session.go): both are kept.
	sessionsMu      sync.Mutex
	sessionsChecked bool
	sessionsErr     error

	// deliveryPasses: how far Prune has read each EHR's delivery log
	// (retention.go).
	pruneMu        sync.Mutex
	deliveryPasses map[string]deliveryPass

	stmtsMu sync.Mutex
	// stmts are the statements the write path runs (writeSQL,
	// writeSimpleSQL, and those of held rows: held.go) by their text,
	// prepared on first use: Open does not need the database up.
	stmts map[string]*sqlx.Stmt

	mu     sync.RWMutex // held for reading while enqueueing, for writing by Close
	closed bool
	queue  chan *request
	// gathering is held by the worker gathering a group; smallTurn holds
	// a token while a small group is in flight (batcher.go).
	gathering sync.Mutex
	smallTurn chan struct{}
	held      heldRows
	flights   flights // held.go
	pool      poolCap // pool.go
	wg        sync.WaitGroup
	// txTimeout, outcomeGrace and turnHold (batcher.go) and lookAfter
	// (held.go), fields so that a test can change them.
	txTimeout, outcomeGrace, turnHold, lookAfter time.Duration
}

// urlError says what is wrong with a database URL without quoting any of
// it: a url.Error quotes the URL, and its cause what it took for a part,
// such as the start of a password holding an unescaped '/' read as the port
// ("invalid port \":Sup3r\" after host"). lib/pq's own errors (an unknown
// sslmode, say) name a parameter and its value, and are kept when the URL
// has no password to show.
//
// A string that is not a postgres:// or postgresql:// URL is read by lib/pq
// as key=value pairs, and its errors quote the string from the point it
// could not read: all of it for a URL with a typo in its scheme
// ("postgres//app:Sup3r@host/db"), or a password's tail. Its reason is
// not shown.
func urlError(databaseURL string, err error) error {
	const msg = "the database URL is not a valid postgres:// URL (percent-encode / ? # @ % : in the user name and password)"
	if !strings.HasPrefix(databaseURL, "postgres://") && !strings.HasPrefix(databaseURL, "postgresql://") {
		return errors.New("the database URL does not start with postgres:// or postgresql://, and is not a valid key=value connection string either (its error is not shown: it could quote a password)")
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return errors.New(msg)
	}
	u, perr := url.Parse(databaseURL)
	if perr != nil {
		return errors.New(msg)
	}
	if _, has := u.User.Password(); has {
		return errors.New(msg)
	}
	return fmt.Errorf("while parsing the database URL: %w", err)
}

// ApplicationName is the receiver's sessions' application_name, unless the
// database URL sets one.
const ApplicationName = "ehr-receiver"

// Open sets up the pool for databaseURL (a postgres:// URL) and starts the
// batcher. It does not contact the database, so a receiver starts while the
// database is down. It does not migrate.
func Open(ctx context.Context, databaseURL string) (*Store, error) {
	cfg, err := pq.NewConfig(databaseURL)
	if err != nil {
		return nil, urlError(databaseURL, err)
	}
	// lib/pq's connection handshake ignores the context: without a
	// connect_timeout a server that accepts but never answers would hold a
	// worker forever.
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	// The receiver's sessions are told from others by it: in
	// pg_stat_activity for a DBA, and by the write path for a row another
	// session holds (held.go). A URL's or PGAPPNAME's value wins.
	if cfg.ApplicationName == "" {
		cfg.ApplicationName = ApplicationName
	}
	connector, err := pq.NewConnectorConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("while configuring the database connection: %w", err)
	}
	connector.Dialer(newDialer())
	s := &Store{queue: make(chan *request, queueDepth), smallTurn: make(chan struct{}, 1),
		txTimeout: txTimeout, outcomeGrace: outcomeGrace, turnHold: turnHold, lookAfter: lookAfter}
	s.db = sqlx.NewDb(sql.OpenDB(sessionConnector{Connector: connector, setup: sessionSetup(cfg.Runtime),
		refused: s.connectionRefused, path: &searchPath{}}), "postgres")
	s.db.SetMaxOpenConns(maxConns)
	s.db.SetMaxIdleConns(maxConns)
	// Recycle connections now and then so a failover or a DNS change is
	// picked up even when no error forces it.
	s.db.SetConnMaxLifetime(30 * time.Minute)
	s.db.SetConnMaxIdleTime(5 * time.Minute)
	for range workers {
		s.wg.Add(1)
		go s.work()
	}
	return s, nil
}

// Migrate applies the embedded migrations under a PostgreSQL advisory lock,
// so replicas that start together are safe. A server that takes no writes
// gets none (ErrReadOnly, retried by the caller): lib/pq begins goose's
// transactions READ WRITE, which overrides a server set read-only.
func (s *Store) Migrate(ctx context.Context) error {
	if err := s.checkSessions(ctx); err != nil {
		return wrap("Migrate", err)
	}
	if err := s.writable(ctx); err != nil {
		return wrap("Migrate", err)
	}
	if err := migrations.Up(ctx, s.db.DB, slog.Default()); err != nil {
		return wrap("Migrate", err)
	}
	return nil
}

// Ping is nil when the database answers, takes writes (ErrReadOnly), and
// the URL does not lead to a pooler in transaction mode (checkSessions: its
// first verdict is kept); it says nothing of the schema.
func (s *Store) Ping(ctx context.Context) error {
	s.liftPoolCap(time.Now())
	if err := s.writable(ctx); err != nil {
		return wrap("Ping", err)
	}
	return wrap("Ping", s.checkSessions(ctx))
}

// writable is ErrReadOnly when the server takes no writes: a standby, or
// a server set read-only (default_transaction_read_only).
func (s *Store) writable(ctx context.Context) error {
	var readOnly string
	if err := s.db.QueryRowContext(ctx, `SHOW transaction_read_only`).Scan(&readOnly); err != nil {
		return err
	}
	if readOnly == "on" {
		return ErrReadOnly
	}
	return nil
}

// Ready is nil when the database answers and every migration is applied.
func (s *Store) Ready(ctx context.Context) error {
	if err := s.db.PingContext(ctx); err != nil {
		return wrap("Ready: ping", err)
	}
	if err := s.checkSessions(ctx); err != nil {
		return wrap("Ready", err)
	}
	if err := migrations.Check(ctx, s.db.DB); err != nil {
		return wrap("Ready", err)
	}
	return nil
}

// Close stops taking writes, lets queued and in-flight writes finish, then
// closes the pool.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeWait):
		// A database that stopped answering mid-statement: its callers
		// have had their answers (outcome unknown; the receiver closes
		// the store after its server drained), so waiting for the kernel
		// to give up on the connection would only hold the shutdown past
		// the pod's grace period.
		go s.db.Close()
		return errors.New("Close: in-flight writes did not finish; the database does not answer")
	}
	closed := make(chan error, 1)
	go func() {
		s.stmtsMu.Lock()
		for _, st := range s.stmts {
			_ = st.Close()
		}
		s.stmtsMu.Unlock()
		closed <- s.db.Close()
	}()
	select {
	case err := <-closed:
		return err
	case <-time.After(poolCloseWait):
		return errors.New("Close: the pool did not close: a query does not return; the database does not answer")
	}
}

// stmt returns query prepared once for the pool; database/sql prepares it
// again on each connection that runs it, once. The sessions' generic plan
// (session.go) then spares each call its planning too, which for the
// held-row checks cost several times their execution (a probe's check:
// 2.3-2.7 ms of the server's time unprepared, 0.3 prepared; decisions.md,
// "Rows found held"). The lock is not held while preparing: a
// slow server must not hold up the statements already prepared.
func (s *Store) stmt(ctx context.Context, query string) (*sqlx.Stmt, error) {
	s.stmtsMu.Lock()
	st := s.stmts[query]
	s.stmtsMu.Unlock()
	if st != nil {
		return st, nil
	}
	prepared, err := s.db.PreparexContext(ctx, query)
	if err != nil {
		return nil, wrap("Write: prepare", err)
	}
	s.stmtsMu.Lock()
	defer s.stmtsMu.Unlock()
	if st := s.stmts[query]; st != nil { // prepared meanwhile by another caller
		_ = prepared.Close()
		return st, nil
	}
	if s.stmts == nil {
		s.stmts = map[string]*sqlx.Stmt{}
	}
	s.stmts[query] = prepared
	return prepared, nil
}

func (d Delivery) check() error {
	switch {
	case d.EHR == "":
		return errors.New("delivery without an EHR")
	case d.Outcome == "":
		return errors.New("delivery without an outcome")
	case d.ReceivedAt.IsZero():
		return errors.New("delivery without a received time")
	case len(d.FieldErrors) > MaxFieldErrors:
		return fmt.Errorf("delivery with %d field errors: at most %d are kept", len(d.FieldErrors), MaxFieldErrors)
	case d.FieldErrorCount < len(d.FieldErrors):
		return fmt.Errorf("delivery with %d field errors, of which the answer listed %d", len(d.FieldErrors), d.FieldErrorCount)
	}
	return nil
}
