package store

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// A store whose role may open 2 connections: concurrent large writes,
// which would use 4, share those 2 and all commit; the retention skips its runs
// meanwhile; the cap is lifted poolCapFor after it was set.
func TestPoolSharesTheConnectionsTheServerGives(t *testing.T) {
	t.Parallel()
	adminURL := pgtest.NewDatabase(t)
	u := pgtest.NewRole(t, adminURL, `SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public`)
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	s, db := openStore(t, adminURL) // db: the admin's
	_ = s.Close()
	if _, err := db.Exec(`ALTER ROLE ` + pu.User.Username() + ` CONNECTION LIMIT 2`); err != nil {
		t.Fatal(err)
	}
	s, _ = openStore(t, u)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Go(func() {
			for i := range 4 {
				entries := make([]payload.Entry, smallGroupEntries) // not small: up to 4 at once
				for k := range entries {
					entries[k] = minimalEntry(fmt.Sprintf("apt-%d-%d-%d", g, i, k))
				}
				if _, err := s.Write(context.Background(), batch(entries...)); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a write with 2 connections to share: %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM appointments`); n != 32*smallGroupEntries {
		t.Errorf("%d appointments stored, want %d", n, 32*smallGroupEntries)
	}
	s.pool.mu.Lock()
	capped, lowered := s.maxOpen(), s.pool.lowered
	s.pool.mu.Unlock()
	if capped < 1 || capped > 2 {
		t.Fatalf("the pool's cap is %d; want the 1 or 2 connections the server gave", capped)
	}
	if _, ran, err := s.Prune(context.Background(), ehr, retention, time.Now()); ran || err != nil {
		t.Errorf("the retention while the pool is capped: ran %v, %v; want it skipped", ran, err)
	}
	s.liftPoolCap(lowered.Add(poolCapFor - time.Millisecond))
	if s.poolShort() == false {
		t.Error("the cap was lifted before poolCapFor")
	}
	s.liftPoolCap(lowered.Add(poolCapFor))
	if s.poolShort() {
		t.Error("the cap was not lifted after poolCapFor")
	}
}
