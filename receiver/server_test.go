package receiver

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// TestShutdownWithFrozenDatabase: Run returns within seconds of its context
// ending while the database accepts and never answers (frozen with
// SIGSTOP, as behind a network dropping packets): a retention run and a
// delivery-log write stuck in lib/pq's reads are left, each with a line
// saying so, rather than hold the exit until the pod's SIGKILL.
func TestShutdownWithFrozenDatabase(t *testing.T) {
	t.Parallel() // a cluster of its own; mostly waiting
	cluster := pgtest.NewCluster(t)
	st, err := store.Open(context.Background(), cluster.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() }) // after the thaw: cleanups run last first
	cfg := validConfig()
	addrs, err := harness.FreeAddrs(2)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.MetricsListen = addrs[0], addrs[1]
	// A retention applied back to back, so that a run is under way.
	cfg.Retention = store.Retention{DeliveryLog: time.Hour}
	cfg.RetentionInterval = 100 * time.Millisecond
	log := &syncBuffer{}
	srv, err := New(cfg, st, slog.New(slog.NewJSONHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv.PruneInBackground(st)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(ctx) }()
	b := &bgServer{srv: srv, h: srv.Handler(), met: srv.MetricsHandler(), log: log}
	eventually(t, 10*time.Second, "a retention run", func() bool { return log.count("Retention applied") > 0 })

	cluster.Freeze(t)
	time.Sleep(500 * time.Millisecond) // the next retention run is stuck
	// An authenticated request that fails without the database: its
	// delivery record is written off the request path, and that write gets
	// stuck too.
	req := httptest.NewRequest(http.MethodPost, syncURL, strings.NewReader(string(batchOf(entry("frozen")))))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", cfg.APIKey)
	req.Header.Set("X-Webhook-Signature", "sha256="+strings.Repeat("0", 64))
	w := httptest.NewRecorder()
	b.h.ServeHTTP(w, req)
	if w.Code != 401 {
		t.Fatalf("a bad signature with the database frozen: %d %s", w.Code, w.Body)
	}
	time.Sleep(500 * time.Millisecond)

	start := time.Now()
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("Run did not return within 20s with the database frozen; its log:\n%s", log)
	}
	if took, limit := time.Since(start), deliveryFlushTimeout+3*time.Second; took > limit {
		t.Errorf("Run took %v to return, want at most %v", took, limit)
	}
	if log.count("The delivery log was not written in time; exiting without it (the database does not answer?)") != 1 {
		t.Errorf("no line for the delivery log left:\n%s", log)
	}
	if !strings.Contains(log.String(), `"msg":"Background database work did not stop in time; exiting without it (the database does not answer?)","ehr":"nexus","waited":"5s","running":["retention"]}`) {
		t.Errorf("no line naming the background work left:\n%s", log)
	}
}
