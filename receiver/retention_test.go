package receiver

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// A receiver with a retention applies it on its schedule: old delivery
// log rows go, counted on /metrics, with one log line per run.
func TestRetentionRunsOnSchedule(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	st, err := store.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	old := make([]store.Delivery, 7)
	for i := range old {
		old[i] = store.Delivery{EHR: "nexus", RequestID: "old", ReceivedAt: time.Now().Add(-48 * time.Hour),
			Outcome: store.OutcomeRejected, StatusCode: 422}
	}
	recent := old[0]
	recent.ReceivedAt = time.Now()
	if err := st.RecordDeliveries(context.Background(), append(old, recent)); err != nil {
		t.Fatal(err)
	}

	srv, log := retainingServer(t, st)
	srv.PruneInBackground(st)
	t.Cleanup(srv.startBackground(context.Background()))

	scrape := func() string { return scrapeMetrics(srv) }
	const removed = `ehr_receiver_retention_removed_rows_total{ehr="nexus",kind="delivery_log"} 7`
	eventually(t, 10*time.Second, "the old deliveries removed and counted", func() bool {
		return strings.Contains(scrape(), removed+"\n")
	})
	m := scrape()
	for _, want := range []string{
		`ehr_receiver_retention_removed_rows_total{ehr="nexus",kind="history"} 0`,
		`ehr_receiver_retention_last_run_timestamp_seconds{ehr="nexus"}`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	eventually(t, 10*time.Second, "a second run", func() bool { return log.count("Retention applied") >= 2 })
	if !strings.Contains(scrape(), removed+"\n") {
		t.Error("a later run removed more rows than the 7 old ones")
	}
	var left []store.DeliveryRecord
	err = st.EachDelivery(context.Background(), store.DeliveryFilter{EHR: "nexus"}, func(d store.DeliveryRecord) error {
		left = append(left, d)
		return nil
	})
	if err != nil || len(left) != 1 || left[0].ReceivedAt.Sub(recent.ReceivedAt).Abs() > time.Microsecond {
		t.Errorf("deliveries left: %+v (%v), want only the recent one", left, err)
	}
}

// A retention the database refuses (a role without DELETE, as operations.md
// warns) is counted on /metrics, which EHRReceiverRetentionFailing alerts
// on: the gauge of the last complete run never appears, so nothing else
// would show it.
func TestRetentionFailureIsCounted(t *testing.T) {
	u := pgtest.NewRole(t, pgtest.NewDatabase(t), `SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public`)
	st, err := store.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.RecordDeliveries(context.Background(), []store.Delivery{{EHR: "nexus", RequestID: "old",
		ReceivedAt: time.Now().Add(-48 * time.Hour), Outcome: store.OutcomeRejected, StatusCode: 422}}); err != nil {
		t.Fatal(err)
	}

	srv, log := retainingServer(t, st)
	scrape := func() string { return scrapeMetrics(srv) }
	const none = `ehr_receiver_retention_failures_total{ehr="nexus"} 0` + "\n"
	if m := scrape(); !strings.Contains(m, none) {
		t.Errorf("before any run, metrics lack %q", none)
	}
	srv.PruneInBackground(st)
	t.Cleanup(srv.startBackground(context.Background()))
	eventually(t, 10*time.Second, "two failed runs counted", func() bool {
		return log.count("Retention failed; retrying at the next run") >= 2 && !strings.Contains(scrape(), none)
	})
	m := scrape()
	if strings.Contains(m, "ehr_receiver_retention_last_run_timestamp_seconds") {
		t.Error("a retention that never completed has a last-run time")
	}
	if !strings.Contains(m, `ehr_receiver_retention_failures_total{ehr="nexus"} `) {
		t.Error("metrics lack the failure count")
	}
}

// scrapeMetrics is srv's /metrics, as Prometheus reads it.
func scrapeMetrics(srv *Server) string {
	w := httptest.NewRecorder()
	srv.MetricsHandler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return w.Body.String()
}

// retainingServer is a receiver on st whose retention keeps the delivery
// log 24 h and runs every 50 ms, and its log.
func retainingServer(t *testing.T, st *store.Store) (*Server, *syncBuffer) {
	t.Helper()
	cfg := validConfig()
	cfg.Retention = store.Retention{DeliveryLog: 24 * time.Hour}
	cfg.RetentionInterval = 50 * time.Millisecond
	log := &syncBuffer{}
	srv, err := New(cfg, st, slog.New(slog.NewJSONHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return srv, log
}
