package receiver

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/insighthealth/ehr-operator/receiver/store"
)

// The database monitor's ping: often enough that a database coming back is
// seen within seconds, short enough that a silent one counts as down.
// A failed write asks for a ping at once, at most once per checkGap however
// many writes fail.
const (
	pingInterval = 5 * time.Second
	pingTimeout  = 2 * time.Second
	checkGap     = time.Second
)

// reachability is what the receiver last saw of its database.
type reachability int

const (
	dbUnknown reachability = iota
	dbReachable
	dbUnreachable
)

func (r reachability) String() string {
	switch r {
	case dbReachable:
		return "reachable"
	case dbUnreachable:
		return "unreachable"
	}
	return "unknown"
}

// dbState is what the receiver knows of its database, for metrics, the log
// and GET /dbz, not for readiness: a database outage must not take every
// pod out of its Service, or vendors get the ingress's bare 502/503 instead
// of our 503 with Retry-After. The one exception is refusedAtStart.
type dbState struct {
	log *slog.Logger

	mu    sync.Mutex
	state reachability
	since time.Time // the last change, or the start while unknown
	// cause is store.Cause of the last failure (set), for /dbz while
	// unreachable.
	cause string

	up atomic.Bool // state == dbReachable, read without the lock on every write
	// migrated: the schema is current; until then the webhook answers 503
	// without touching the database.
	migrated atomic.Bool
	// started: readiness may pass (see Server.startBackground).
	started atomic.Bool
	// reached: the database answered once since the start. refused: the
	// last migration or ping failed because the database refuses this
	// receiver's settings (store.IsRefused). Both hold readiness back,
	// until reached: a new pod of a rollout that carries a wrong password
	// must not replace the pods that serve (see refusedAtStart).
	reached, refused atomic.Bool
	// migrate, when set, is run in the background by Server.Run.
	migrate func(context.Context) error
	// wake gets a token when the database becomes reachable, so that a
	// migration waiting out its back-off tries again at once.
	wake chan struct{}
	// check gets a token when a write or migration failed as if the
	// database were away: the next ping runs at once.
	check chan struct{}

	upDesc, sinceDesc, migratedDesc *prometheus.Desc
}

func newDBState(ehr string, log *slog.Logger) *dbState {
	labels := prometheus.Labels{"ehr": ehr}
	d := &dbState{
		log: log, since: time.Now(), wake: make(chan struct{}, 1), check: make(chan struct{}, 1),
		upDesc: prometheus.NewDesc("ehr_receiver_database_up",
			"1 when the database answered the last ping or write, 0 when it did not; absent until the first answer.", nil, labels),
		sinceDesc: prometheus.NewDesc("ehr_receiver_database_state_change_timestamp_seconds",
			"Unix time of the last change of ehr_receiver_database_up (the start while it is unknown).", nil, labels),
		migratedDesc: prometheus.NewDesc("ehr_receiver_database_migrated",
			"1 once the schema is current (migrated at start, or --migrate=false); until then the webhook answers 503.", nil, labels),
	}
	d.migrated.Store(true) // unless MigrateInBackground says otherwise
	return d
}

// observePing records a ping's result: any error means down (a timeout
// included: a database that does not answer in time cannot serve).
func (d *dbState) observePing(err error) {
	d.noteRefused(err)
	d.set(err == nil, err)
}

// noteRefused keeps whether the database's last definite answer refused
// the receiver's settings: a timeout or a lost connection says nothing
// either way, and must not open readiness for a moment in between.
func (d *dbState) noteRefused(err error) {
	switch {
	case store.IsRefused(err):
		d.refused.Store(true)
	case err == nil || !store.IsUnavailable(err):
		d.refused.Store(false)
	}
}

// refusedAtStart: the database has refused this receiver's settings and
// never answered it. Readiness follows the database in this case alone. An
// outage keeps pods in their Service (they answer 503 with Retry-After),
// but a rollout whose new pods carry a wrong password or database name
// would otherwise replace every pod that serves with pods that cannot.
func (d *dbState) refusedAtStart() bool { return d.refused.Load() && !d.reached.Load() }

// observe records a write's or a migration's result: success means up. An
// unavailable error asks for a ping, which decides: after a restart the pool
// still holds connections the old server closed, and a write on one fails
// while the database is back; a timeout under load is no outage either.
func (d *dbState) observe(err error) {
	switch {
	case err == nil:
		d.set(true, nil)
	case d.up.Load() && store.IsUnavailable(err):
		select {
		case d.check <- struct{}{}:
		default:
		}
	}
}

func (d *dbState) set(reachable bool, err error) {
	if reachable && d.up.Load() {
		return // the common case: one atomic load per successful write
	}
	want := dbUnreachable
	if reachable {
		want = dbReachable
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !reachable {
		d.cause = store.Cause(err) // also while the state stays: the cause may change
	}
	if d.state == want {
		return
	}
	prev, prevSince, now := d.state, d.since, time.Now()
	d.state, d.since = want, now
	d.up.Store(reachable)
	if reachable {
		d.reached.Store(true)
	}
	// One line per change, never per request.
	if reachable {
		// The end of an outage at the level of its start, so that a
		// receiver logging at warn shows both (operations.md, "Logs").
		level, attrs := slog.LevelInfo, []any(nil)
		if prev == dbUnreachable {
			level = slog.LevelWarn
			attrs = append(attrs, "down_for", now.Sub(prevSince).Round(time.Millisecond).String())
		}
		d.log.Log(context.Background(), level, "Database reachable", attrs...)
		select {
		case d.wake <- struct{}{}:
		default:
		}
		return
	}
	// Store errors name operations, addresses and SQLSTATEs, never values.
	d.log.Warn("Database unreachable", "since", now.UTC().Format(time.RFC3339), "error", err.Error())
}

func (d *dbState) snapshot() (reachability, time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state, d.since
}

// watch pings the database now, every pingInterval and when asked, until
// ctx is done. firstPinged, if not nil, is called once the first ping has
// been observed (answered or timed out).
func (d *dbState) watch(ctx context.Context, ping func(context.Context) error, firstPinged func()) {
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	var p pinger
	for {
		last := time.Now()
		err := p.ping(ctx, ping)
		if ctx.Err() != nil {
			return // shutting down: not the database's fault
		}
		d.observePing(err)
		if firstPinged != nil {
			firstPinged()
			firstPinged = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.check:
			if !sleep(ctx, time.Until(last.Add(checkGap))) {
				return
			}
		}
	}
}

// errNoAnswer is a ping that did not return within pingTimeout: a
// deadline, so store.IsUnavailable says so.
var errNoAnswer = fmt.Errorf("no answer to the database ping within %s: %w", pingTimeout, context.DeadlineExceeded)

// pinger runs each ping in a goroutine of its own and waits for it at most
// pingTimeout. lib/pq cannot interrupt a read from a database that accepts
// and never answers (packets dropped, a frozen server): the context only
// makes it send a cancel request on a new connection, which goes
// unanswered too. So a ping that has not answered in time counts as a
// failure, rather than leave the state "reachable" for as long as it hangs,
// and the monitor stays free to stop. A ping still under way is waited for
// again rather than another started: at most one connection is spent.
type pinger struct {
	pending chan error // the ping under way, if one outlived its timeout
}

func (p *pinger) ping(ctx context.Context, ping func(context.Context) error) error {
	if p.pending == nil {
		ch := make(chan error, 1)
		pctx, cancel := context.WithTimeout(ctx, pingTimeout)
		go func() {
			defer cancel()
			ch <- ping(pctx)
		}()
		p.pending = ch
	}
	t := time.NewTimer(pingTimeout)
	defer t.Stop()
	select {
	case err := <-p.pending:
		p.pending = nil
		return err
	case <-t.C:
		return errNoAnswer
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sleep waits d, or less if ctx ends first (then it returns false).
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// dbReport is GET /dbz's body.
type dbReport struct {
	Database string `json:"database"`
	Since    string `json:"since"`
	Migrated bool   `json:"migrated"`
	// Cause is why the last ping failed (store.Cause), while unreachable.
	Cause string `json:"cause,omitempty"`
}

// serveDBZ reports the database's state; always 200: it is a report for the
// operator, not a probe.
func (d *dbState) serveDBZ(w http.ResponseWriter, _ *http.Request) {
	d.mu.Lock()
	state, since, cause := d.state, d.since, d.cause
	d.mu.Unlock()
	if state != dbUnreachable {
		cause = ""
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(dbReport{
		Database: state.String(), Since: since.UTC().Format(time.RFC3339), Migrated: d.migrated.Load(), Cause: cause,
	})
}

// Describe and Collect make dbState a Prometheus collector, so that
// ehr_receiver_database_up is absent rather than 0 before the first answer.
func (d *dbState) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.upDesc
	ch <- d.sinceDesc
	ch <- d.migratedDesc
}

func (d *dbState) Collect(ch chan<- prometheus.Metric) {
	state, since := d.snapshot()
	if state != dbUnknown {
		ch <- prometheus.MustNewConstMetric(d.upDesc, prometheus.GaugeValue, boolFloat(state == dbReachable))
	}
	ch <- prometheus.MustNewConstMetric(d.sinceDesc, prometheus.GaugeValue, float64(since.UnixMilli())/1000)
	ch <- prometheus.MustNewConstMetric(d.migratedDesc, prometheus.GaugeValue, boolFloat(d.migrated.Load()))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
