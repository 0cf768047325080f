package faults

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// sent is one request and what it came to.
type sent struct {
	first    int64 // its entries are gen's first … first+size-1
	size     int
	began    time.Time
	answered time.Time
	a        harness.Answer
}

// TestDatabaseRestartUnderLoad stops PostgreSQL under continuous load from
// several senders and starts it again: every request answered 200 is in the
// database, every other answer is a 503 with Retry-After (or a connection
// error), and the same receiver process answers 200 again within seconds.
func TestDatabaseRestartUnderLoad(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	restartUnderLoad(t, cluster, cluster.NewDatabase(t), cluster.Stop)
}

// TestDatabaseCrashUnderLoad: the same with the server crashing (an
// immediate shutdown: nothing is written out), on a database whose default
// is synchronous_commit = off, a DBA's setting for speed with which a
// commit returns before its WAL is written, so that a crash loses the last
// ones. A 200 is an appointment stored all the same: the receiver's
// sessions wait for the local flush (store.sessionSettings). The WAL
// writer, which writes such commits in the background, is made lazy, and
// once the receiver has recovered, single appointments are sent one after
// another and the server crashes right after the last 200. The code
// before lost the last 2-4 of those 20 in each of five runs, and 3-16 of
// the 32-48 answered 200 before the crash under load in four runs of four.
func TestDatabaseCrashUnderLoad(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	dbURL := cluster.NewDatabase(t)
	pgtest.AlterDatabase(t, dbURL, "synchronous_commit = off")
	admin := openDB(t, cluster.URL())
	for _, q := range []string{`ALTER SYSTEM SET wal_writer_delay = '10s'`, `SELECT pg_reload_conf()`} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	r := restartUnderLoad(t, cluster, dbURL, cluster.Crash)

	gen := harness.NewGen("quiet")
	client := harness.NewClient(1)
	const n = 20
	for i := range int64(n) {
		if a := harness.Post(context.Background(), client, r.URL, gen.Body(i, 1), ""); a.Err != nil || a.Status != 200 {
			t.Fatalf("request %d: %d %v %s", i, a.Status, a.Err, a.Body)
		}
	}
	if err := cluster.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	stored := storedIDs(t, openDB(t, dbURL))
	for i := range int64(n) {
		if id := gen.AppointmentID(i); !stored[id] {
			t.Errorf("appointment %s was answered 200 before the crash but is not in the database", id)
		}
	}
}

// restartUnderLoad takes the database down with down under load, starts
// it again and checks what the senders were answered against what is
// stored. It returns the receiver, still running.
func restartUnderLoad(t *testing.T, cluster *pgtest.Cluster, dbURL string, down func() error) *harness.Receiver {
	r := startReceiver(t, dbURL)
	pid := r.Cmd.Process.Pid

	const (
		senders     = 6
		maxRequests = 20000 // bound on count; the context bounds time
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gen := harness.NewGen("outage")
	client := harness.NewClient(senders)
	var (
		next, entries atomic.Int64
		stop          atomic.Bool
		wg            sync.WaitGroup
		mu            sync.Mutex
		all           []sent
	)
	sizes := []int{1, 3, 10}
	for range senders {
		wg.Go(func() {
			for !stop.Load() && ctx.Err() == nil {
				n := next.Add(1)
				if n > maxRequests {
					return
				}
				size := sizes[int(n)%len(sizes)]
				first := entries.Add(int64(size)) - int64(size)
				s := sent{first: first, size: size, began: time.Now()}
				s.a = harness.Post(ctx, client, r.URL, gen.Body(first, size), "")
				s.answered = time.Now()
				mu.Lock()
				all = append(all, s)
				mu.Unlock()
				if s.a.Err != nil || s.a.Status != 200 {
					// A sender backs off after a failure (shorter than
					// Retry-After, to keep the test short).
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}

	// The load is on once a few requests were answered 200.
	waitFor(t, 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range all {
			if s.a.Status == 200 {
				n++
			}
		}
		return n >= 20
	})
	if err := down(); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	time.Sleep(2 * time.Second)
	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	startedAt := time.Now()
	// Keep the load on until the receiver has served 200 for a while again.
	var recovered time.Time
	for deadline := startedAt.Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		mu.Lock()
		for _, s := range all {
			if s.a.Status == 200 && s.began.After(startedAt) && (recovered.IsZero() || s.answered.Before(recovered)) {
				recovered = s.answered
			}
		}
		mu.Unlock()
		if !recovered.IsZero() && time.Since(recovered) > time.Second {
			break
		}
	}
	stop.Store(true)
	wg.Wait()

	if recovered.IsZero() {
		t.Fatal("no request sent after PostgreSQL came back was answered 200 within 20s")
	}
	if d := recovered.Sub(startedAt); d > 10*time.Second {
		t.Errorf("the receiver served 200 again only %s after PostgreSQL came back; want within 10s", d)
	} else {
		t.Logf("first 200 %s after PostgreSQL came back", d.Round(time.Millisecond))
	}
	if err := r.Alive(pid); err != nil {
		t.Fatalf("during the outage: %v", err)
	}

	stored := storedIDs(t, openDB(t, dbURL))
	var ok, unavailable, connErrs, during, okBefore int
	for _, s := range all {
		switch {
		case s.a.Err != nil:
			connErrs++
		case s.a.Status == 200:
			ok++
			if s.answered.Before(stoppedAt) {
				okBefore++
			}
			for i := range int64(s.size) {
				if id := gen.AppointmentID(s.first + i); !stored[id] {
					t.Errorf("appointment %s was answered 200 but is not in the database", id)
				}
			}
		case s.a.Status == 503:
			unavailable++
			if ra, err := strconv.Atoi(s.a.RetryAfter); err != nil || ra < 1 {
				t.Errorf("503 with Retry-After %q, want a positive number of seconds", s.a.RetryAfter)
			}
			if s.began.After(stoppedAt) && s.began.Before(startedAt) {
				during++
			}
		default:
			t.Errorf("answer %d (%s), want 200 or 503", s.a.Status, s.a.Body)
		}
	}
	t.Logf("%d requests: %d answered 200 (%d before the stop), %d 503, %d connection errors",
		len(all), ok, okBefore, unavailable, connErrs)
	if okBefore == 0 || during == 0 {
		t.Errorf("the load did not span the outage: %d answered 200 before the stop, %d 503 sent during it", okBefore, during)
	}
	return r
}
