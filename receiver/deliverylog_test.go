package receiver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
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

// TestRefusedDeliveryKeepsFieldErrors: a batch refused under Reject with
// more errors than the log line holds keeps the same first ones in its
// row, with the count the answer listed, and nothing of the values sent.
func TestRefusedDeliveryKeepsFieldErrors(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), func(c *Config) { c.MaxBodyBytes, c.MaxBatchSize = 1<<20, 100 })
	var entries []string
	for i := range 12 {
		entries = append(entries, invalidEntry(fmt.Sprintf("many-%d", i)))
	}
	entries = append(entries, strings.Replace(entry("bad-date"), `"05/15/1990"`, `"02/30/1990"`, 1))
	body := batchOf(entries...)
	w, id := ts.post(t, body)
	if w.Code != http.StatusUnprocessableEntity {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	rows := ts.deliveries(t, id)
	if len(rows) != 1 {
		t.Fatalf("%d rows for the rejected request", len(rows))
	}
	listed := answered(t, w.Body.Bytes())
	if len(listed) != 13 {
		t.Fatalf("the answer listed %d errors, want 13", len(listed))
	}
	ts.expectFieldErrors(t, w.Code, listed, rows[0])
	var kept []payload.FieldError
	if err := json.Unmarshal(rows[0].errors, &kept); err != nil {
		t.Fatal(err)
	}
	var line []string
	for _, e := range ts.logLine(t, id)["field_errors"].([]any) {
		line = append(line, e.(string))
	}
	if got := loggedErrors(kept); !slices.Equal(got, line) {
		t.Errorf("the row keeps %q, the log line has %q: want the same first errors", got, line)
	}
	for _, v := range []string{"02/30/1990", "Jane", "Doe", "John", "Smith", "Follow-up", "03/10/2026", "many-"} {
		if bytes.Contains(rows[0].errors, []byte(v)) {
			t.Errorf("the row's field errors hold %q, a value sent: %s", v, rows[0].errors)
		}
	}
}

// TestDeliveryLogErrorsBudget: while the database holds the writer, the
// queue keeps the field errors of records up to deliveryErrorsBudget and
// queues the later ones without them (their count kept); the heap grows
// by no more than the budget, however many records are queued, and the
// budget is given back once they are written.
func TestDeliveryLogErrorsBudget(t *testing.T) {
	release := make(chan struct{})
	var (
		mu      sync.Mutex
		written []store.Delivery
	)
	// A database that does not answer until released, past the write's
	// deadline, as lib/pq's read of a silent server.
	write := func(_ context.Context, ds []store.Delivery) error {
		<-release
		mu.Lock()
		defer mu.Unlock()
		for _, d := range ds {
			written = append(written, store.Delivery{FieldErrorCount: d.FieldErrorCount, FieldErrors: slices.Clone(d.FieldErrors)})
		}
		return nil
	}
	dl := newDeliveryLog(write, slog.New(slog.DiscardHandler), "nexus", prometheus.NewRegistry())
	defer dl.close(time.Second)

	// Errors of their own (not constants), as long as a batch of 10,000
	// makes them: the most a record can hold of the heap.
	record := func(i int) store.Delivery {
		errs := make([]payload.FieldError, store.MaxFieldErrors)
		for k := range errs {
			path := fmt.Sprintf("appointments[%d].practitioner.first_name", 9000+k)
			errs[k] = payload.FieldError{Index: 9000 + k, Field: path, Message: "must be the date of " + path}
		}
		return store.Delivery{EHR: "nexus", ReceivedAt: time.Now(), Outcome: store.OutcomeRejected, StatusCode: 422,
			FieldErrorCount: 100 + i%7, FieldErrors: errs}
	}
	perRecord := errorsCost(record(0).FieldErrors)
	const n = deliveryQueueSize + deliveryBatchMax + 1000
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range n {
		dl.add(record(i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	held := dl.errorBytes.Load()
	t.Logf("%d records of %d errors (%d bytes each as errorsCost counts them) queued: the heap grew by %d bytes, %d counted (budget %d)",
		n, store.MaxFieldErrors, perRecord, grew, held, deliveryErrorsBudget)
	if held > deliveryErrorsBudget || held < deliveryErrorsBudget-perRecord {
		t.Errorf("%d bytes of errors counted in the queue, want the budget's %d filled", held, deliveryErrorsBudget)
	}
	if grew > deliveryErrorsBudget+256<<10 { // a little slack for the runtime's own
		t.Errorf("the heap grew by %d bytes with the queue full, want about the budget's %d at most", grew, deliveryErrorsBudget)
	}

	close(release)
	dl.flush(context.Background())
	if got := dl.errorBytes.Load(); got != 0 {
		t.Errorf("%d bytes of errors still counted once everything was written", got)
	}
	mu.Lock()
	defer mu.Unlock()
	withErrors, counted := 0, 0
	for i, d := range written {
		if d.FieldErrorCount < 100 {
			t.Fatalf("record %d written with count %d: the count is kept whatever happens to the errors", i, d.FieldErrorCount)
		}
		counted++
		if d.FieldErrors != nil {
			if withErrors != i {
				t.Fatalf("record %d has its errors after one without: the first records keep theirs", i)
			}
			withErrors++
		}
	}
	if want := deliveryErrorsBudget / perRecord; int64(withErrors) != want || counted == withErrors {
		t.Errorf("%d of %d records written kept their errors, want the first %d", withErrors, counted, want)
	}
	// Every record queued without its errors is counted, whether it was
	// written or dropped after.
	if got, want := testutil.ToFloat64(dl.errorsLeftOut), float64(n)-float64(withErrors); got != want {
		t.Errorf("delivery_log_errors_left_out_total %v, want %v (%d records, %d with their errors)", got, want, n, withErrors)
	}
}

// TestDeliveryLogOutageLogsLittle: with the database away every record is
// dropped, and the log says so in a line per deliveryDropLogEvery, not one
// per request (a flood during an outage wrote 220,000 lines a minute);
// the lines add up to every record dropped.
func TestDeliveryLogOutageLogsLittle(t *testing.T) {
	ts := newTestServer(t, refusedURL(t), nil)
	// Three rounds, each its own failed write.
	const n = 300
	for range 3 {
		for range n / 3 {
			if w, _ := ts.post(t, batchOf(entry("x")), badSignature()); w.Code != 401 {
				t.Fatalf("%d %s", w.Code, w.Body)
			}
		}
		ts.srv.deliveries.flush(context.Background())
	}
	if got := ts.metric(t, "ehr_receiver_delivery_log_batches_total"); got != 0 {
		t.Fatalf("%v batches written with the database away", got)
	}
	lines := droppedLines(t, ts.log.String(), "Could not record failed deliveries; records dropped")
	if len(lines) != 1 {
		t.Errorf("%d lines for the first %d dropped records, want 1 (the next ones wait %s)", len(lines), n, deliveryDropLogEvery)
	}
	ts.srv.deliveries.close(time.Second)
	lines = droppedLines(t, ts.log.String(), "Could not record failed deliveries; records dropped")
	var sum float64
	for _, l := range lines {
		sum += l["dropped"].(float64)
		if l["ehr"] != "nexus" || !strings.Contains(l["error"].(string), "connection refused") {
			t.Errorf("line %v, want the ehr and the cause", l)
		}
	}
	if len(lines) != 2 || sum != n {
		t.Errorf("%d lines counting %v dropped records, want 2 counting %d (the rest logged at close)", len(lines), sum, n)
	}
	if got := ts.metric(t, `ehr_receiver_delivery_log_dropped_total{ehr="nexus",reason="database"}`); got != n {
		t.Errorf("%v counted, want %d", got, n)
	}
}

// droppedLines are the log's lines with message msg.
func droppedLines(t *testing.T, log, msg string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for line := range strings.SplitSeq(log, "\n") {
		if !strings.Contains(line, `"msg":"`+msg+`"`) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// TestDropWarningSpacesLines: the first drop is logged at once, the ones
// within every after it in one line once every has passed, and a drop
// after a quiet every at once again.
func TestDropWarningSpacesLines(t *testing.T) {
	var (
		mu    sync.Mutex
		lines []string
	)
	w := newDropWarning(100*time.Millisecond, func(n int64, cause string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf("%d %s", n, cause))
	})
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(lines)
	}
	w.add(1, "a")
	for i := range 99 {
		w.add(1, "b"+strconv.Itoa(i))
	}
	if l := got(); !slices.Equal(l, []string{"1 a"}) {
		t.Errorf("lines %q at once, want only the first drop's", l)
	}
	eventually(t, 2*time.Second, "the second line", func() bool { return len(got()) == 2 })
	if l := got(); l[1] != "99 b98" {
		t.Errorf("second line %q, want the 99 drops after the first, with the last cause", l[1])
	}
	time.Sleep(150 * time.Millisecond)
	w.add(3, "c")
	if l := got(); len(l) != 3 || l[2] != "3 c" {
		t.Errorf("lines %q, want a drop after a quiet period logged at once", l)
	}
	w.flush()
	if l := got(); len(l) != 3 {
		t.Errorf("lines %q: a flush with nothing pending logged", l)
	}
}
