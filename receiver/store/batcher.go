package store

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
)

// The batcher (architecture.md, "Schema and write path"). One transaction per request caps a receiver at a
// few hundred requests per second, whatever the disk: the round trips are
// the limit. So Write hands its request to a queue, and each of a few
// workers takes whatever is queued when it is free (no timer: under load the
// queue fills while the workers commit, at low load nothing waits) and
// writes the group with ONE statement, which is one round trip and one
// transaction, answering every caller after its commit.
//
// Small groups take turns. A statement's fixed cost (executor start,
// commit, the WAL flush, the round trip) is most of what a group of a few
// single-appointment requests costs, and several small groups in flight at
// once split the queue into more, smaller groups for the same work. So at
// most one group of fewer than smallGroupEntries entries is in flight; one
// worker gathers at a time, and while its small group waits for the turn
// it keeps taking every queued request into it, going as soon as the turn
// comes or the group is no longer small. Large groups do not wait: their
// cost is their rows, and two of them keep PostgreSQL busy while the
// receiver decodes the next requests. (Measured against four small groups
// at once, single appointments from 8 senders: 3.7–3.9 instead of 1.4
// requests per commit, 77–96 % of the limit instead of 60 %;
// docs/performance.md, "Grouping".)
//
// A failure is kept to the request that caused it without savepoints: if a
// group's statement fails for a reason other than the database being away,
// the group is rolled back whole and each of its requests is written again
// alone, so only the culprit fails. That costs a round trip per request, but
// only after a failure, where savepoints would cost two per request always.
// Every transaction is then a single statement, whose lock order is fixed
// (see writeSQL), so concurrent writers cannot deadlock.
const (
	maxGroup = 64
	// maxGroupEntries bounds one statement's arrays; a larger request is
	// written alone. Statements of bounded size keep PostgreSQL busy while
	// the receiver decodes the next requests (measured: docs/performance.md).
	maxGroupEntries = 200
	maxAttempts     = 3
	// smallGroupEntries: a group of fewer entries is small (above).
	smallGroupEntries = 50
	// turnHold is how long a small group keeps the turn before passing it
	// on, returned or not: a hundred times a small statement's usual time
	// (1-2 ms, docs/performance.md), and short beside a sender's patience.
	// A statement still running then is waiting: for a row lock someone
	// else's transaction holds (a DBA's fix left open), or on a connection
	// whose server stopped answering. Without it one such statement held up
	// every small write of the receiver until its deadline (measured: a
	// held appointment row kept 20 others, sent one at a time, waiting
	// 15 s). The next small group goes meanwhile; a slow server's small
	// statements then overlap as large groups' do, up to the workers.
	turnHold = 200 * time.Millisecond
)

type request struct {
	ctx  context.Context
	p    *prepared
	done chan outcome // buffered: a worker never waits for a caller
	// state is queued until a worker starts the request's statement or
	// the request is given up, whichever comes first (one CompareAndSwap
	// decides): a caller never gives up on a statement under way, so its
	// answer says whether the data was committed.
	state   atomic.Int32
	release func() // Batch.Release, or nil
	// held: the rows found held r touches (held.go). A request touching
	// any is a probe, written alone, which locks them first. Set by admit.
	held []rowKey
}

// probe reports whether r is written as a probe (held.go).
func (r *request) probe() bool { return len(r.held) > 0 }

// A request's states.
const (
	reqQueued int32 = iota
	reqStarted
	reqAbandoned // by its caller, or by a worker for a caller past its deadline
)

// ErrOutcomeUnknown: the statement holding the request neither returned
// nor failed within txTimeout and outcomeGrace of the caller's deadline, so
// whether it committed is not known (a database that stopped answering
// mid-statement; lib/pq cannot interrupt a blocked read). It is
// unavailable: a retry is safe, the write being idempotent.
var ErrOutcomeUnknown = errors.New("the database did not answer: whether the batch was committed is unknown")

// outcomeGrace is how long past txTimeout a caller waits for a statement
// under way: the time for the cancelled statement's error to come back.
const outcomeGrace = 5 * time.Second

// finish is the end of the store's hold on r: no worker reads r again,
// and its caller is answered (or gone). Release comes first, so that a
// caller answered holds the only claim on the batch.
func (r *request) finish(o outcome, answer bool) {
	if r.release != nil {
		r.release()
	}
	if answer {
		r.done <- o
	}
}

type outcome struct {
	res Result
	err error
}

// Write stores b all-or-nothing and returns after COMMIT (see api.go).
// An error means nothing was stored, except ErrOutcomeUnknown.
func (s *Store) Write(ctx context.Context, b Batch) (Result, error) {
	released := false
	defer func() {
		if !released && b.Release != nil {
			b.Release()
		}
	}()
	p, err := prepare(b)
	if err != nil {
		return Result{}, fmt.Errorf("Write: %w", err)
	}
	r := &request{ctx: ctx, p: p, done: make(chan outcome, 1), release: b.Release}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return Result{}, fmt.Errorf("Write: %w", ErrClosed)
	}
	select {
	case s.queue <- r:
		s.mu.RUnlock()
		released = true // by the worker that takes r
	case <-ctx.Done():
		s.mu.RUnlock()
		return Result{}, fmt.Errorf("Write: while queued: %w", ctx.Err())
	}
	select {
	case o := <-r.done:
		return o.res, o.err
	case <-ctx.Done():
	}
	if r.state.CompareAndSwap(reqQueued, reqAbandoned) {
		// No worker will write it: nothing was stored.
		return Result{}, fmt.Errorf("Write: while queued: %w", ctx.Err())
	}
	// Its statement is under way (or a worker answers it as abandoned):
	// wait for the outcome, so that a 503 never hides a commit.
	t := time.NewTimer(s.txTimeout + s.outcomeGrace)
	defer t.Stop()
	select {
	case o := <-r.done:
		return o.res, o.err
	case <-t.C:
		return Result{}, fmt.Errorf("Write: %w", ErrOutcomeUnknown)
	}
}

// group is the requests one statement writes: one EHR, distinct
// appointments (an upsert cannot touch a row twice), bounded in size. A
// request touching a row found held (held.go) is a probe, written alone.
type group struct {
	reqs    []*request
	entries int
	appts   map[string]struct{}
}

// probe reports whether g is a probe: its one request touches a row found
// held (nothing joins a probe, and a probe joins nothing).
func (g *group) probe() bool { return len(g.reqs) > 0 && g.reqs[0].probe() }

// add puts r in g if it fits, and reports whether it did. An empty group
// takes any request.
func (g *group) add(r *request) bool {
	if len(g.reqs) > 0 {
		if g.probe() || r.probe() || len(g.reqs) >= maxGroup || r.p.delivery.EHR != g.reqs[0].p.delivery.EHR ||
			g.entries+len(r.p.ids) > maxGroupEntries {
			return false
		}
		for _, id := range r.p.ids {
			if _, dup := g.appts[id]; dup {
				return false
			}
		}
	}
	if g.appts == nil {
		g.appts = make(map[string]struct{})
	}
	for _, id := range r.p.ids {
		g.appts[id] = struct{}{}
	}
	g.reqs = append(g.reqs, r)
	g.entries += len(r.p.ids)
	return true
}

// addOrCarry adds r to g, or carries it over to the next group.
func (g *group) addOrCarry(r *request, carry *[]*request) {
	if !g.add(r) {
		*carry = append(*carry, r)
	}
}

// work gathers groups and writes them. A request that does not fit the
// group (it names an appointment already in it, or another EHR) is carried
// over and leads this worker's next group, so requests naming the same
// appointment are written in the order they were queued.
//
// One worker gathers at a time: a small group waiting for its turn takes
// every request queued meanwhile, instead of sharing them with other
// waiting workers as groups just as small. A worker with carried requests
// does not queue up behind the gatherer, which may be waiting for a first
// request that never comes: the carried requests' callers are waiting.
func (s *Store) work() {
	defer s.wg.Done()
	var carry []*request
	for {
		alone := len(carry) == 0
		if alone {
			s.gathering.Lock()
		}
		g, turn, ok := s.gather(&carry)
		if alone {
			s.gathering.Unlock()
		}
		if !ok {
			return
		}
		s.commit(g.reqs, turn)
	}
}

// gather makes the next group: the carried requests that fit, then what is
// queued, waiting for a first request if there is none. A small group also
// waits for its turn (awaitTurn), but not a probe, which goes at once.
// ok is false once the queue is closed and nothing is left.
func (s *Store) gather(carry *[]*request) (g group, turn, ok bool) {
	held := *carry
	*carry = nil
	for _, r := range held {
		g.addOrCarry(r, carry)
	}
	for len(g.reqs) == 0 {
		r, ok := <-s.queue
		if !ok {
			return g, false, false
		}
		s.admit(r)
		g.add(r)
	}
gather:
	for len(*carry) == 0 && len(g.reqs) < maxGroup && !g.probe() {
		select {
		case r, ok := <-s.queue:
			if !ok {
				break gather
			}
			s.admit(r)
			g.addOrCarry(r, carry)
		default:
			break gather
		}
	}
	if g.entries < smallGroupEntries && !g.probe() {
		turn = s.awaitTurn(&g, carry)
	}
	return g, turn, true
}

// awaitTurn waits for the small groups' turn, adding queued requests to g
// meanwhile. It returns without the turn once g is no longer small or can
// grow no more (a request that does not fit is carried, or the queue is
// closed): such a group goes at once.
func (s *Store) awaitTurn(g *group, carry *[]*request) bool {
	for g.entries < smallGroupEntries && len(*carry) == 0 && len(g.reqs) < maxGroup {
		select {
		case s.smallTurn <- struct{}{}:
			return true
		case r, ok := <-s.queue:
			if !ok {
				return false
			}
			s.admit(r)
			g.addOrCarry(r, carry)
		}
	}
	return false
}

// admit decides how r, just taken from the queue, is written: as a probe
// or not (held.go).
func (s *Store) admit(r *request) { r.held = s.held.admit(r.p, time.Now()) }

// commit writes a group and answers each of its callers. A group holding
// the small groups' turn passes it on once its statement has returned,
// before the callers are answered, so that the next small group's
// statement runs while they are. A probe (held.go) is written with a
// short lock_timeout; a request found touching a row marked held since it
// was gathered is written as one after its group (takeOff).
func (s *Store) commit(group []*request, turn bool) {
	var once sync.Once
	release := func() {
		if turn {
			once.Do(func() { <-s.smallTurn })
		}
	}
	defer release()
	if turn {
		// Passed on at turnHold if the statement is still running.
		t := time.AfterFunc(s.turnHold, release)
		defer t.Stop()
	}
	live := make([]*request, 0, len(group))
	for _, r := range group {
		switch {
		case r.ctx.Err() != nil && r.state.CompareAndSwap(reqQueued, reqAbandoned):
			r.finish(outcome{err: fmt.Errorf("Write: before the transaction: %w", r.ctx.Err())}, true)
		case r.state.CompareAndSwap(reqQueued, reqStarted):
			live = append(live, r)
		default: // abandoned by its caller, who has gone
			r.finish(outcome{}, false)
		}
	}
	if len(live) == 0 {
		return
	}
	// The transaction outlives any one caller: a caller that gives up must
	// not roll back its neighbours.
	ctx, cancel := context.WithTimeout(context.Background(), s.txTimeout)
	defer cancel()
	f := s.flights.takeOff(ctx, live, &s.held)
	if len(f.reqs) > 0 {
		stop := s.watch(f)
		s.write(f, f.reqs, func() {
			if turn {
				release()
				// The worker waiting for the turn is now runnable, but Go
				// runs the goroutine readied last first, so each caller
				// answered below would go ahead of it, and the next
				// statement would wait for their responses. Yield: the next
				// statement goes to PostgreSQL first (measured:
				// docs/performance.md, "Grouping").
				runtime.Gosched()
			}
		})
		stop()
	}
	s.flights.land(f)
	release()
	for _, r := range f.late {
		s.write(&flight{ctx: ctx}, []*request{r}, nil)
	}
}

// write runs f's statement for reqs (a group, or a probe alone) and
// answers each of them; returned, if any, is called once the statement
// has returned.
func (s *Store) write(f *flight, reqs []*request, returned func()) {
	start := time.Now()
	out, err := s.writeRetrying(f.ctx, reqs)
	if returned != nil {
		returned()
	}
	err = cancelledFor(f.ctx, err)
	if err != nil && len(reqs) > 1 && !IsUnavailable(err) {
		// One request's rows failed the statement: each alone, so the
		// failure is its own.
		for i, r := range reqs {
			res, err := s.writeRetrying(f.ctx, []*request{r})
			if err = cancelledFor(f.ctx, err); err != nil {
				out[i] = outcome{err: err}
			} else {
				out[i] = res[0]
			}
		}
		err = nil
	}
	now := time.Now()
	held := s.heldBy(err, now.Sub(start), reqs)
	for i, r := range reqs {
		if err != nil {
			out[i] = outcome{err: err}
		}
		// Before the answer, so that the vendor's retry sees it.
		s.held.note(r.p, out[i].err, now, held)
	}
	if len(held) > 0 {
		s.flights.cancelTouching(held, f)
	}
	for i, r := range reqs {
		r.finish(out[i], true)
	}
}

// writeRetrying writes a group, again on deadlock or serialization failure
// (which the lock order makes unexpected, but a database may still report).
// The outcomes are allocated even on error, for commit's fallback.
func (s *Store) writeRetrying(ctx context.Context, group []*request) ([]outcome, error) {
	out := make([]outcome, len(group))
	var err error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if err = s.writeGroup(ctx, group, out); err == nil || !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	return out, err
}

// writeGroup runs the group's statement in autocommit: the rows are read to
// the end, which lib/pq reaches only after the server committed. A probe's
// runs in a transaction of its own, which first sets its lock_timeout for
// it alone and keeps a read-only server read-only (probeSetupSQL), then
// locks its rows found held without waiting (lockHeld): a round trip a row
// found held and three more, for a request touching one.
func (s *Store) writeGroup(ctx context.Context, group []*request, out []outcome) error {
	ps := make([]*prepared, len(group))
	for i, r := range group {
		ps[i] = r.p
	}
	simple := simpleGroup(ps)
	query := writeSQL
	if simple {
		query = writeSimpleSQL
	}
	stmt, err := s.stmt(ctx, query)
	if err != nil {
		return err
	}
	if !group[0].probe() {
		return readAnswers(ctx, stmt, ps, out, simple)
	}
	locks, err := s.lockHeldStmts(ctx, group[0].held)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTxx(ctx, nil)
	if err != nil {
		return wrap("Write", err)
	}
	defer tx.Rollback() //nolint:errcheck // after Commit, ErrTxDone
	if _, err := tx.ExecContext(ctx, probeSetupSQL); err != nil {
		return wrap("Write", err)
	}
	if err := lockHeld(ctx, tx, group[0].held, locks); err != nil {
		return wrap("Write", err)
	}
	if err := readAnswers(ctx, tx.StmtxContext(ctx, stmt), ps, out, simple); err != nil {
		return err
	}
	return wrap("Write", tx.Commit())
}

// readAnswers runs stmt on the group and reads each request's counts.
func readAnswers(ctx context.Context, stmt *sqlx.Stmt, ps []*prepared, out []outcome, simple bool) error {
	rows, err := stmt.QueryContext(ctx, writeArgs(ps, simple)...)
	if err != nil {
		return wrap("Write", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var req, written, superseded, quarantined int
		if err := rows.Scan(&req, &written, &superseded, &quarantined); err != nil {
			return wrap("Write", err)
		}
		if req < 1 || req > len(ps) {
			return fmt.Errorf("Write: the statement answered for request %d of %d", req, len(ps))
		}
		p := ps[req-1]
		// An invalid entry whose content was already pending in the
		// quarantine was not kept again: a duplicate too.
		out[req-1] = outcome{res: Result{Written: written, Duplicates: p.entries - written - superseded + p.quarantined - quarantined,
			Superseded: superseded, Quarantined: quarantined}}
		n++
	}
	if err := rows.Err(); err != nil {
		return wrap("Write", err)
	}
	if n != len(ps) {
		return fmt.Errorf("Write: the statement answered for %d of %d requests", n, len(ps))
	}
	return nil
}
