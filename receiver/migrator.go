package receiver

import (
	"context"
	"math/rand/v2"
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

// startBackground starts the database monitor and, when asked, the
// migration and the retention; stop ends them and waits. Readiness passes once the first
// migration attempt is over, or after startGrace, or at once without one.
func (s *Server) startBackground(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.db.watch(ctx, s.store.Ping) })
	if s.pruner != nil && s.cfg.Retention.Enabled() {
		wg.Go(func() { s.pruneEvery(ctx) })
	}
	if s.db.migrate == nil || s.db.migrated.Load() {
		s.db.started.Store(true)
		return func() { cancel(); wg.Wait() }
	}
	grace := time.AfterFunc(startGrace, func() { s.db.started.Store(true) })
	wg.Go(func() { s.migrateUntilDone(ctx) })
	return func() { grace.Stop(); cancel(); wg.Wait() }
}

// migrateUntilDone runs the migration until it succeeds or ctx is done.
func (s *Server) migrateUntilDone(ctx context.Context) {
	delay := migrateFirstRetry
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, migrateTimeout)
		err := s.db.migrate(actx)
		cancel()
		s.db.started.Store(true)
		if ctx.Err() != nil {
			return
		}
		s.db.observe(err)
		if err == nil {
			s.db.migrated.Store(true)
			s.log.Info("Database migrated", "ehr", s.cfg.EHR, "attempts", attempt)
			return
		}
		wait := jittered(delay)
		s.log.Warn("Migration failed; the webhook answers 503 until one succeeds", "ehr", s.cfg.EHR,
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
