package receiver

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// The background migration's schedule. An attempt may wait minutes for the
// advisory lock while another replica migrates.
const (
	migrateFirstRetry = time.Second
	migrateMaxRetry   = 30 * time.Second
	migrateTimeout    = 5 * time.Minute
	// startGrace bounds how long readiness waits for the first migration
	// attempt: long enough that a rolling update's new pods join the Service
	// migrated, short enough that an unreachable database (a 10 s connect
	// timeout) does not hold them out of it.
	startGrace = 10 * time.Second
)

// Migrator applies the database migrations; receiver/store.Store is one.
type Migrator interface {
	Migrate(ctx context.Context) error
}

// MigrateInBackground makes Run migrate with m in the background, retrying
// with capped exponential back-off, instead of assuming the schema is
// current. Until a migration succeeds the webhook answers 503 with
// Retry-After without touching the database. Call it before Run.
func (s *Server) MigrateInBackground(m Migrator) {
	s.db.migrate = m.Migrate
	s.db.migrated.Store(false)
}

// backgroundStopTimeout bounds how long shutdown waits for the background
// work, counted from when it was told to stop (for Run: the signal, so the
// drain of requests counts). lib/pq cannot interrupt a read from a database
// that accepts and never answers (packets dropped, a frozen server): its
// cancel is a request on a new connection, which goes unanswered too. Such
// a goroutine is left to the process's exit rather than let the shutdown
// run into the pod's SIGKILL.
const backgroundStopTimeout = 5 * time.Second

// startBackground starts the database monitor and, when asked, the
// migration and the retention; they stop when ctx ends. stop ends them
// and waits, until backgroundStopTimeout after they were told to. Readiness
// passes once the first migration attempt is over (without one: the first
// ping), or after startGrace.
func (s *Server) startBackground(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	ended := make(chan time.Time, 1)
	context.AfterFunc(ctx, func() { ended <- time.Now() })
	bg := &background{running: map[string]int{}}
	started := func() { s.db.started.Store(true) }
	grace := time.AfterFunc(startGrace, started)
	// Without a migration the first ping's answer plays its part: a
	// database that refuses the settings is known before the pod is ready.
	firstPinged, migrate := started, s.db.migrate != nil && !s.db.migrated.Load()
	if migrate {
		firstPinged = nil
	}
	bg.goNamed("database monitor", func() { s.db.watch(ctx, s.store.Ping, firstPinged) })
	if migrate {
		bg.goNamed("migration", func() { s.migrateUntilDone(ctx) })
	}
	if s.pruner != nil && s.cfg.Retention.Enabled() {
		bg.goNamed("retention", func() { s.pruneEvery(ctx) })
	}
	return func() {
		grace.Stop()
		cancel()
		told := <-ended
		if left := bg.wait(time.Until(told.Add(backgroundStopTimeout))); len(left) > 0 {
			s.log.Warn("Background database work did not stop in time; exiting without it (the database does not answer?)",
				"waited", backgroundStopTimeout.String(), "running", left)
		}
	}
}

// background is the goroutines startBackground started, by name.
type background struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	running map[string]int
}

func (b *background) goNamed(name string, f func()) {
	b.mu.Lock()
	b.running[name]++
	b.mu.Unlock()
	b.wg.Go(func() {
		defer func() {
			b.mu.Lock()
			if b.running[name]--; b.running[name] == 0 {
				delete(b.running, name)
			}
			b.mu.Unlock()
		}()
		f()
	})
}

// wait waits until every goroutine has returned or d has passed, and
// returns the names of those still running.
func (b *background) wait(d time.Duration) []string {
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	t := time.NewTimer(max(d, 10*time.Millisecond))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	left := make([]string, 0, len(b.running))
	for name := range b.running {
		left = append(left, name)
	}
	slices.Sort(left)
	return left
}

// migrateUntilDone runs the migration until it succeeds or ctx is done.
func (s *Server) migrateUntilDone(ctx context.Context) {
	delay := migrateFirstRetry
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, migrateTimeout)
		err := s.db.migrate(actx)
		cancel()
		s.db.noteRefused(err)
		s.db.started.Store(true)
		if ctx.Err() != nil {
			return
		}
		s.db.observe(err)
		if err == nil {
			s.db.migrated.Store(true)
			s.log.Info("Database migrated", "attempts", attempt)
			return
		}
		wait := jittered(delay)
		s.log.Warn("Migration failed; the webhook answers 503 until one succeeds",
			"attempt", attempt, "retry_in", wait.Round(time.Millisecond).String(), "error", err.Error())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.db.wake: // the database came back: no need to wait out the back-off
			t.Stop()
		}
		delay = min(2*delay, migrateMaxRetry)
	}
}

// jittered is d less up to half of it, so replicas that failed together do
// not retry together.
func jittered(d time.Duration) time.Duration {
	return d - rand.N(d/2+1)
}
