package receiver

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// TestDeliveryLogBatches: a run of rejected requests is a few statements,
// each many rows, and every record is written.
func TestDeliveryLogBatches(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	const n = 2000
	began := time.Now()
	for range n {
		if w, _ := ts.post(t, batchOf(entry("x")), badSignature()); w.Code != 401 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	elapsed := time.Since(began)
	ts.srv.deliveries.flush(context.Background())
	if got := ts.count(t, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'bad_signature'`); got != n {
		t.Errorf("%d rows, want %d", got, n)
	}
	written, batches := ts.metric(t, "ehr_receiver_delivery_log_written_total"), ts.metric(t, "ehr_receiver_delivery_log_batches_total")
	// A batch gathers for deliveryGather or until it is full; the flush
	// may cut one short.
	most := float64(elapsed/deliveryGather) + n/deliveryBatchMax + 2
	t.Logf("%d rejected requests in %s: %v rows written in %v statements", n, elapsed.Round(time.Millisecond), written, batches)
	if written != n || batches < n/deliveryBatchMax || batches > most {
		t.Errorf("%v written in %v statements, want %d in at most %v", written, batches, n, most)
	}
}

// metric is the value of series name, with its labels or with only the ehr
// label, on /metrics.
func (ts *testServer) metric(t *testing.T, name string) float64 {
	t.Helper()
	if !strings.Contains(name, "{") {
		name += `{ehr="nexus"}`
	}
	w := httptest.NewRecorder()
	ts.srv.MetricsHandler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for line := range strings.SplitSeq(w.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s on /metrics", name)
	return 0
}

// TestDeliveryLogFullDropsWithoutWaiting: while the database holds the
// writer (a lock on the table), requests are answered at once, records past
// the queue are dropped and counted, and the rest are written once the
// database lets go.
func TestDeliveryLogFullDropsWithoutWaiting(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	ts := newTestServer(t, dbURL, nil)
	tx, err := ts.db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`LOCK TABLE webhook_deliveries IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	const n = deliveryQueueSize + deliveryBatchMax + 1000
	var slowest time.Duration
	for range n {
		began := time.Now()
		if w, _ := ts.post(t, batchOf(entry("x")), badSignature()); w.Code != 401 {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
		slowest = max(slowest, time.Since(began))
	}
	// The writer's statement waits for the lock, past its timeout: that
	// batch is dropped for the database.
	time.Sleep(deliveryWriteTimeout + 500*time.Millisecond)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	ts.srv.deliveries.flush(context.Background())
	written := ts.metric(t, "ehr_receiver_delivery_log_written_total")
	full := ts.metric(t, `ehr_receiver_delivery_log_dropped_total{ehr="nexus",reason="full"}`)
	database := ts.metric(t, `ehr_receiver_delivery_log_dropped_total{ehr="nexus",reason="database"}`)
	rows := ts.count(t, `SELECT count(*) FROM webhook_deliveries`)
	t.Logf("%d rejected requests, slowest answer %s: %d rows written, dropped %v (queue full) and %v (database)",
		n, slowest.Round(time.Microsecond), rows, full, database)
	if float64(rows) != written || written+full+database != n {
		t.Errorf("%d rows, %v written + %v + %v dropped, want the %d records accounted for", rows, written, full, database, n)
	}
	if full < 1 || database < 1 || written < 1 {
		t.Errorf("dropped %v (queue full), %v (database), written %v: want some of each", full, database, written)
	}
	if slowest > time.Second {
		t.Errorf("an answer took %s while the delivery log waited on the database", slowest)
	}
	if !strings.Contains(ts.log.String(), `"msg":"Delivery log queue full; failed-request records dropped"`) {
		t.Error("the full queue is not logged")
	}
}

// TestDeliveryLogCloseWrites: closing writes what is queued, and nothing
// waits once it is closed.
func TestDeliveryLogCloseWrites(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	st, err := store.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	var buf bytes.Buffer
	dl := newDeliveryLog(st.RecordDeliveries, slog.New(slog.NewJSONHandler(&buf, nil)), "nexus", prometheus.NewRegistry())
	for i := range 10 {
		dl.add(store.Delivery{EHR: "nexus", RequestID: fmt.Sprintf("close-%d", i), ReceivedAt: time.Now(),
			Outcome: store.OutcomeBadSignature, StatusCode: 401})
	}
	dl.close(deliveryFlushTimeout)
	dl.close(deliveryFlushTimeout) // twice is harmless
	dl.flush(context.Background()) // returns at once: the writer is gone
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM webhook_deliveries WHERE request_id LIKE 'close-%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 10 {
		t.Errorf("%d rows after close, want 10; log:\n%s", n, &buf)
	}
}

// TestDeliveryLogMetrics: the delivery log's series are on /metrics.
func TestDeliveryLogMetrics(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	ts.post(t, batchOf(entry("m")), badSignature())
	ts.srv.deliveries.flush(context.Background())
	metrics := httptest.NewRecorder()
	ts.srv.MetricsHandler().ServeHTTP(metrics, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range []string{
		`ehr_receiver_delivery_log_written_total{ehr="nexus"} 1`,
		`ehr_receiver_delivery_log_batches_total{ehr="nexus"} 1`,
		`ehr_receiver_delivery_log_dropped_total{ehr="nexus",reason="full"} 0`,
		`ehr_receiver_delivery_log_dropped_total{ehr="nexus",reason="database"} 0`,
	} {
		if !strings.Contains(metrics.Body.String(), line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
}
