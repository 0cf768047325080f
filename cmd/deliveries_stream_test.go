package cmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// The audit's scenario (issue: `deliveries show` at 356 MB RSS): 10
// quarantined deliveries of 1000 entries of 4 KB. As hex on the wire it is
// twice the loopback's socket buffers (tcp_rmem's and tcp_wmem's maxima,
// 32 and 4 MiB here), so the server is still sending when the first
// record is printed.
const (
	largeDeliveries = 10
	largeEntries    = 1000
	largeEntryBytes = 4000
)

// seedLarge writes the audit's scenario into u and returns the bytes of
// quarantined content it holds.
func seedLarge(t *testing.T, u string) int {
	t.Helper()
	st, err := store.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	total := 0
	at := time.Now().Add(-time.Hour)
	for d := range largeDeliveries {
		qs := make([]store.Quarantined, largeEntries)
		for i := range qs {
			entry := quarantinedEntry(fmt.Sprintf("apt-%d-%d", d, i), "05/15/2990")
			pad := strings.Repeat("x", largeEntryBytes-len(entry)-len(`{"notes":"",`)+1)
			raw := json.RawMessage(`{"notes":"` + pad + `",` + string(entry[1:]))
			qs[i] = store.Quarantined{Index: i, Raw: raw, Errors: []payload.FieldError{
				{Index: i, Field: fmt.Sprintf("appointments[%d].patient.birth_date", i), Message: "must not be in the future"}}}
			total += len(raw)
		}
		req := fmt.Sprintf("req-large-%d", d)
		_, err := st.Write(context.Background(), store.Batch{
			Delivery: store.Delivery{EHR: "nexus", RequestID: req, ReceivedAt: at.Add(time.Duration(d) * time.Second),
				BodySHA256: sha256.Sum256([]byte(req)), ItemCount: largeEntries, Outcome: store.OutcomeQuarantined, StatusCode: 200},
			Quarantined: qs,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return total
}

// runTo runs the command line with standard output to out.
func runTo(t *testing.T, out io.Writer, args ...string) (stderr string, err error) {
	t.Helper()
	root := NewRootCommand()
	var e bytes.Buffer
	root.SetOut(out)
	root.SetErr(&e)
	root.SetArgs(args)
	err = root.ExecuteContext(t.Context())
	return e.String(), err
}

// firstWriteHook calls hook before its first write: when the command has
// printed nothing yet but has read a record. It keeps what it is written
// (keep) or only its size and tail, and samples the heap at every write.
type firstWriteHook struct {
	hook func()
	keep bool

	mu       sync.Mutex
	once     sync.Once
	buf      bytes.Buffer
	n        int
	tail     []byte
	peakHeap uint64
}

func (w *firstWriteHook) Write(p []byte) (int, error) {
	w.once.Do(w.hook)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.peakHeap = max(w.peakHeap, heapInUse())
	w.n += len(p)
	if w.keep {
		w.buf.Write(p)
	}
	w.tail = append(w.tail, p...)
	w.tail = w.tail[max(0, len(w.tail)-16):]
	return len(p), nil
}

func (w *firstWriteHook) output() (all []byte, n int, tail string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.buf.Bytes()), w.n, string(w.tail)
}

// heapInUse is the bytes of heap objects, live or not yet swept: what the
// process holds of the heap at this moment.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// showQueries counts the client sessions of db's database, db's own aside,
// running a query of quarantined_entries (show's) at this moment; not
// autovacuum's, which the seeding may start.
func showQueries(t *testing.T, db *sqlx.DB) int {
	t.Helper()
	var n int
	if err := db.Get(&n, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state = 'active'
		AND query LIKE '%quarantined_entries%'`); err != nil {
		t.Errorf("pg_stat_activity: %v", err)
	}
	return n
}

func openDB(t *testing.T, u string) *sqlx.DB {
	t.Helper()
	db, err := sqlx.Open("postgres", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// show prints each record as it reads it, in memory bounded by a record,
// not by the output; a database that fails part way leaves output that
// does not read as complete, and an error.
func TestDeliveriesShowStreams(t *testing.T) {
	u := pgtest.NewDatabase(t)
	total := seedLarge(t, u)
	db := openDB(t, u)
	show := []string{"deliveries", "show", "--database-url", u, "--since", "24h", "--limit", "0", "-o", "json", "--include-patient-data"}

	t.Run("as it reads, in bounded memory", func(t *testing.T) {
		active := -1
		w := &firstWriteHook{hook: func() { active = showQueries(t, db) }}
		runtime.GC()
		base := heapInUse()
		if stderr, err := runTo(t, w, show...); err != nil {
			t.Fatalf("%v\n%s", err, stderr)
		}
		_, n, tail := w.output()
		grew := w.peakHeap - min(base, w.peakHeap)
		t.Logf("%d bytes of content printed as %d bytes of JSON; heap %.1f MiB before, at most %.1f MiB more while printing",
			total, n, float64(base)/(1<<20), float64(grew)/(1<<20))
		if active != 1 {
			t.Errorf("%d queries running at the first output, want 1: the output waited for the query's end", active)
		}
		if n < total || !strings.HasSuffix(tail, "\n  }\n]\n") {
			t.Errorf("printed %d bytes ending %q, want all %d bytes of content and the array's end", n, tail, total)
		}
		// The heap holds garbage the collector has not freed yet, more of
		// it when other packages' tests take the cores (CI measured 9.7
		// MiB once, 3.6–5.6 MiB on a quiet machine). Printing the slice at
		// once, as before, held more than all the content.
		if grew > uint64(total)/2 {
			t.Errorf("the heap grew by %d bytes while printing %d bytes of content: not bounded by a record", grew, total)
		}
	})

	t.Run("a failure part way", func(t *testing.T) {
		for _, format := range []string{"json", "table"} {
			// The session of show's query is ended once it has printed a
			// record, as by a restart of the database.
			w := &firstWriteHook{keep: true, hook: func() {
				if _, err := db.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()
					AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND query LIKE '%quarantined_entries%'`); err != nil {
					t.Errorf("pg_terminate_backend: %v", err)
				}
			}}
			args := append(append([]string{}, show[:len(show)-3]...), "-o", format, "--include-patient-data")
			stderr, err := runTo(t, w, args...)
			out, n, tail := w.output()
			t.Logf("-o %s: %d bytes printed, then %v", format, n, err)
			if err == nil || !strings.Contains(err.Error(), "the output is incomplete") {
				t.Errorf("-o %s: %v (stderr %q), want an error saying the output is incomplete", format, err, stderr)
			}
			if err != nil && strings.Contains(err.Error(), secretName) {
				t.Errorf("-o %s: the error quotes patient data: %v", format, err)
			}
			if n == 0 || n >= total {
				t.Errorf("-o %s: %d bytes printed, want some of the %d bytes of content, not all", format, n, total)
			}
			if format == "json" && (json.Valid(out) || strings.HasSuffix(tail, "]\n")) {
				t.Errorf("-o json cut short is valid JSON or ends as an array (%q)", tail)
			}
		}
	})
}

// A database that freezes while show prints does not hold it past --timeout
// and abandonAfter, and what it printed does not end as complete JSON.
func TestDeliveriesShowGivesUpOnADatabaseFrozenPartWay(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	u := cluster.NewDatabase(t)
	seedLarge(t, u)
	old := abandonAfter
	abandonAfter = time.Second
	t.Cleanup(func() { abandonAfter = old })

	// The first write waits until the database is frozen.
	printing, frozen := make(chan struct{}), make(chan struct{})
	w := &firstWriteHook{hook: func() {
		close(printing)
		<-frozen
	}}
	type result struct {
		stderr string
		err    error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		stderr, err := runTo(t, w, "deliveries", "show", "--database-url", u, "--since", "24h",
			"-o", "json", "--include-patient-data", "--timeout", "2s")
		done <- result{stderr, err}
	}()
	var r result
	select {
	case <-printing:
		cluster.Freeze(t)
		close(frozen)
		r = <-done
	case r = <-done:
		t.Fatalf("show ended before it printed: %v (stderr %q)", r.err, r.stderr)
	}
	elapsed := time.Since(start)
	_, n, tail := w.output()
	t.Logf("%d bytes printed, then after %s: %v", n, elapsed.Round(time.Millisecond), r.err)
	if r.err == nil || !strings.Contains(r.err.Error(), "has not answered for 1s since: exiting without waiting for it") {
		t.Errorf("show against a database frozen part way: %v (stderr %q)", r.err, r.stderr)
	}
	if elapsed > 6*time.Second {
		t.Errorf("show returned %s after it started, want about --timeout and abandonAfter (3 s)", elapsed.Round(time.Millisecond))
	}
	if strings.HasSuffix(tail, "]\n") {
		t.Errorf("the output cut short ends as complete JSON (%q)", tail)
	}
}

// shownAtOnce is what show encoded as a whole before it streamed: a
// delivery and its entries.
type shownAtOnce struct {
	store.DeliveryRecord
	QuarantinedEntries []store.QuarantineRecord `json:"quarantinedEntries"`
}

// The streamed JSON is, byte for byte, json.Encoder's of the whole slice:
// a delivery with entries, one without, and no delivery at all.
func TestDeliveriesJSONAsAtOnce(t *testing.T) {
	u := seedDeliveries(t)
	st, err := store.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	filter := store.DeliveryFilter{EHR: "nexus"}
	var (
		listed []store.DeliveryRecord
		shown  []shownAtOnce
	)
	err = st.EachDelivery(ctx, filter, func(d store.DeliveryRecord) error {
		listed = append(listed, d)
		shown = append(shown, shownAtOnce{DeliveryRecord: d, QuarantinedEntries: []store.QuarantineRecord{}})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range shown {
		err := st.EachQuarantined(ctx, store.QuarantineFilter{Delivery: store.DeliveryFilter{IDs: []int64{shown[i].ID}}, WithContent: true},
			func(q store.QuarantineRecord) error {
				shown[i].QuarantinedEntries = append(shown[i].QuarantinedEntries, q)
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(shown) != 2 || len(shown[0].QuarantinedEntries)+len(shown[1].QuarantinedEntries) != 2 {
		t.Fatalf("seeded %+v, want 2 deliveries, one with 2 entries", shown)
	}
	atOnce := func(v any) string {
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	db := []string{"--database-url", u, "--ehr", "nexus", "-o", "json"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"list"}, atOnce(listed)},
		{[]string{"show", "--since", "2h", "--include-patient-data"}, atOnce(shown)},
		{[]string{"list", "--outcome", "rejected"}, atOnce([]store.DeliveryRecord{})},
		{[]string{"show", "--since", "2h", "--outcome", "rejected"}, atOnce([]shownAtOnce{})},
	} {
		var out bytes.Buffer
		if stderr, err := runTo(t, &out, append(append([]string{"deliveries"}, c.args...), db...)...); err != nil {
			t.Fatalf("%v: %v\n%s", c.args, err, stderr)
		}
		if out.String() != c.want {
			t.Errorf("deliveries %v printed\n%s\nwant, as encoded at once,\n%s", c.args, out.String(), c.want)
		}
	}
}

// list's table prints its rows a block at a time, not all at its end:
// `--limit 0` lists every delivery. Up to listBlock rows print as one
// tabwriter block; a later block's columns never narrow.
func TestDeliveriesListTableStreams(t *testing.T) {
	record := func(i int) store.DeliveryRecord {
		return store.DeliveryRecord{ID: int64(i + 1), EHR: "nexus", RequestID: fmt.Sprintf("req-%d", i),
			ReceivedAt: time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC), Outcome: store.OutcomeStored, StatusCode: 200, ItemCount: i % 7}
	}
	tabwriterLines := func(n int) string {
		var b strings.Builder
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tEHR\tREQUEST ID\tRECEIVED\tOUTCOME\tSTATUS\tITEMS\tQUARANTINED\tPENDING")
		for i := range n {
			d := record(i)
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n", d.ID, d.EHR, d.RequestID, stamp(d.ReceivedAt),
				d.Outcome, d.StatusCode, d.ItemCount, d.Quarantined, d.Pending)
		}
		_ = tw.Flush()
		return b.String()
	}
	f := deliveriesFlags{output: "table"}

	for _, n := range []int{0, 1, 999, listBlock} {
		var out bytes.Buffer
		p := f.listPrinter(&out)
		for i := range n {
			if err := p.delivery(record(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.end(true); err != nil {
			t.Fatal(err)
		}
		if want := tabwriterLines(n); out.String() != want {
			t.Errorf("%d rows printed\n%s\nwant, as one tabwriter block,\n%s", n, out.String(), want)
		}
	}

	const rows = 5 * listBlock
	var out bytes.Buffer
	p := f.listPrinter(&out)
	for i := range rows {
		if err := p.delivery(record(i)); err != nil {
			t.Fatal(err)
		}
	}
	if printed := strings.Count(out.String(), "\n"); printed < rows-listBlock {
		t.Fatalf("%d of %d rows printed before the end: the table holds them all", printed, rows)
	}
	if err := p.end(true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != rows+1 {
		t.Fatalf("%d lines printed, want %d rows and the header", len(lines), rows)
	}
	// Every column starts where the header's does, or further right.
	header := strings.Index(lines[0], "RECEIVED")
	for i, l := range lines[1:] {
		if at := strings.Index(l, "2026-"); at < header {
			t.Fatalf("row %d's RECEIVED column starts at %d, left of the header's %d:\n%s\n%s", i, at, header, lines[0], l)
		}
	}
}

// blockedWriter blocks its first write until release is closed (a pipe
// or pager that stopped reading), then takes everything.
type blockedWriter struct {
	release chan struct{}
	once    sync.Once
	blocked chan struct{}
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.blocked) })
	<-w.release
	return len(p), nil
}

// An output nobody reads holds show in a write: past --timeout and
// abandonAfter it exits saying so, not that the database stopped
// answering; and an output read again after --timeout ends it saying which
// --timeout passed.
func TestDeliveriesShowGivesUpOnAnOutputNotRead(t *testing.T) {
	u := seedDeliveries(t)
	old := abandonAfter
	t.Cleanup(func() { abandonAfter = old })
	show := []string{"deliveries", "show", "--database-url", u, "--request-id", "req-q", "-o", "json", "--timeout", "1s"}

	abandonAfter = time.Second
	w := &blockedWriter{release: make(chan struct{}), blocked: make(chan struct{})}
	release := w.release
	t.Cleanup(func() { close(release) })
	start := time.Now()
	stderr, err := runTo(t, w, show...)
	elapsed := time.Since(start)
	t.Logf("after %s: %v", elapsed.Round(time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "stopped (--timeout 1s passed), and the output has not been read for") ||
		!strings.Contains(err.Error(), "the output is incomplete") {
		t.Errorf("show to an output not read: %v (stderr %q), want an error saying the output was not read", err, stderr)
	}
	if elapsed > 6*time.Second {
		t.Errorf("show returned %s after it started, want about --timeout and abandonAfter (2 s)", elapsed.Round(time.Millisecond))
	}

	abandonAfter = time.Minute
	w = &blockedWriter{release: make(chan struct{}), blocked: make(chan struct{})}
	go func() {
		<-w.blocked
		time.Sleep(2 * time.Second) // past --timeout
		close(w.release)
	}()
	stderr, err = runTo(t, w, show...)
	if err == nil || !strings.Contains(err.Error(), "stopped part way, the output is incomplete") ||
		!strings.Contains(err.Error(), "(--timeout 1s passed)") {
		t.Errorf("show to an output read after --timeout: %v (stderr %q), want the output incomplete and --timeout named", err, stderr)
	}
}
