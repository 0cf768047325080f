package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// Sixteen writers send overlapping appointments, patients and
// practitioners in different orders at once: no deadlock, no error, and
// every appointment ends with the content of one of its entries.
func TestWriteConcurrentOverlapping(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	const writers, rounds, appointments = 16, 20, 24
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds)
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				var entries []payload.Entry
				// Each writer walks the appointments in its own order, with
				// a few entries per request, so requests overlap.
				for k := range 3 {
					i := (w*7 + r*5 + k*11) % appointments
					if w%2 == 1 {
						i = appointments - 1 - i
					}
					e := minimalEntry(fmt.Sprintf("apt-%02d", i))
					e.Patient.ID = fmt.Sprintf("pat-%d", (i+w)%5)
					e.Practitioner.ID = fmt.Sprintf("prov-%d", (i+r)%3)
					e.Appointment.Notes = ptr(fmt.Sprintf("writer %d round %d", w, r))
					entries = append(entries, e)
				}
				if _, err := s.Write(ctx, batch(entries...)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Write: %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries`); n != writers*rounds {
		t.Errorf("%d deliveries, want %d", n, writers*rounds)
	}
	// Each appointment's row is its latest history entry.
	if n := count(t, db, `SELECT count(*) FROM appointments a WHERE a.content_hash IS DISTINCT FROM (
		SELECT h.content_hash FROM appointment_history h
		WHERE h.ehr = a.ehr AND h.appointment_external_id = a.external_id ORDER BY h.id DESC LIMIT 1)`); n != 0 {
		t.Errorf("%d appointments differ from their latest history row", n)
	}
	t.Logf("%d requests in %d transactions", writers*rounds, transactions(t, db))
	if n := deadlocks(t, s, db); n != 0 {
		t.Errorf("%d deadlocks, want none (the lock order is fixed)", n)
	}
}

// Many single-entry requests at once share transactions.
func TestWriteRequestsShareTransactions(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	const requests = 200
	var wg sync.WaitGroup
	for i := range requests {
		wg.Go(func() {
			if _, err := s.Write(context.Background(), batch(minimalEntry(fmt.Sprintf("apt-%d", i)))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := count(t, db, `SELECT count(*) FROM appointments`); n != requests {
		t.Errorf("%d appointments, want %d", n, requests)
	}
	c := transactions(t, db)
	if c >= requests {
		t.Errorf("%d transactions for %d concurrent requests: the batcher did not group them", c, requests)
	}
	t.Logf("%d requests in %d transactions", requests, c)
}

// A request whose rows fail its group's statement fails alone: the group is
// written again one request at a time, its neighbours commit, and its error
// names no value.
func TestWriteFailingRequestDoesNotFailNeighbours(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	good1, good2 := batch(minimalEntry("apt-1")), batch(minimalEntry("apt-2"))
	bad := batch(minimalEntry("apt-bad"))
	bad.Entries[0].Patient.LastName = "Secretname"
	bad.Entries[0].Appointment.DurationMinutes = ptr(99999) // violates a CHECK constraint

	var group []*request
	for _, b := range []Batch{good1, bad, good2} {
		group = append(group, queued(t, b))
	}
	s.commit(group, false) // one transaction, as the batcher would run it
	var results []outcome
	for _, r := range group {
		results = append(results, <-r.done)
	}
	if results[0].err != nil || results[2].err != nil {
		t.Fatalf("neighbours failed: %v, %v", results[0].err, results[2].err)
	}
	if results[0].res.Written != 1 || results[2].res.Written != 1 {
		t.Errorf("neighbours' results %+v %+v, want one written each", results[0].res, results[2].res)
	}
	err := results[1].err
	if err == nil {
		t.Fatal("the failing request succeeded")
	}
	if IsUnavailable(err) {
		t.Errorf("a constraint violation counts as unavailable: %v", err)
	}
	for _, secret := range []string{"Secretname", "99999", "apt-bad"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q contains the field value %q", err, secret)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM appointments`); n != 2 {
		t.Errorf("%d appointments, want 2", n)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries WHERE request_id = $1`, bad.Delivery.RequestID); n != 0 {
		t.Errorf("the failed request left %d delivery rows", n)
	}
	if n := count(t, db, `SELECT count(*) FROM patients WHERE last_name = 'Secretname'`); n != 0 {
		t.Error("the failed request left its patient row")
	}
	if c := transactions(t, db); c != 2 {
		t.Errorf("%d transactions committed, want 2 (each neighbour alone, after the group failed)", c)
	}
}

func TestWriteAloneFailingRequest(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	bad := batch(minimalEntry("apt-bad"))
	bad.Entries[0].Appointment.DurationMinutes = ptr(-1)
	if _, err := s.Write(context.Background(), bad); err == nil || IsUnavailable(err) {
		t.Fatalf("Write of an invalid row: %v, want an error that is not unavailability", err)
	}
	// The store still works after the failed transaction.
	mustWrite(t, s, batch(minimalEntry("apt-good")))
}

func TestWriteAfterClose(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	mustWrite(t, s, batch(minimalEntry("apt-1")))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Write(context.Background(), batch(minimalEntry("apt-2")))
	if !IsUnavailable(err) {
		t.Errorf("Write after Close: %v, want an unavailable error", err)
	}
}

func TestCloseWaitsForQueuedWrites(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	const requests = 50
	var (
		wg        sync.WaitGroup
		succeeded atomic.Int64
	)
	started := make(chan struct{}, requests)
	for i := range requests {
		wg.Go(func() {
			started <- struct{}{}
			_, err := s.Write(context.Background(), batch(minimalEntry(fmt.Sprintf("apt-%d", i))))
			switch {
			case err == nil:
				succeeded.Add(1)
			case !IsUnavailable(err):
				t.Error(err)
			}
		})
	}
	for range requests {
		<-started
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// Every answered success is stored, and everything stored was
	// answered with success: Close lost no queued request's answer.
	if n := count(t, db, `SELECT count(*) FROM appointments`); int64(n) != succeeded.Load() {
		t.Errorf("%d appointments stored, %d writes succeeded", n, succeeded.Load())
	}
}

// Requests too large to share a statement (over maxGroupEntries together)
// run beside small ones that name the same patients: no error, no
// deadlock, everything stored.
func TestWriteLargeBatchesBesideSmallOnes(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	const large = maxGroupEntries/2 + 20
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 4 {
		wg.Go(func() {
			entries := make([]payload.Entry, large)
			for i := range entries {
				entries[i] = minimalEntry(fmt.Sprintf("big-%d-%04d", w, i))
				entries[i].Patient.ID = fmt.Sprintf("pat-%d-%d", w, i)
				if i < 50 {
					entries[i].Patient.ID = fmt.Sprintf("pat-%d", i) // shared with the small writers
				}
			}
			if _, err := s.Write(ctx, batch(entries...)); err != nil {
				errs <- err
			}
		})
	}
	for w := range 8 {
		wg.Go(func() {
			for r := range 10 {
				e := minimalEntry(fmt.Sprintf("small-%d-%d", w, r))
				e.Patient.ID = fmt.Sprintf("pat-%d", (w+r)%50)
				if _, err := s.Write(ctx, batch(e)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Write: %v", err)
	}
	if n, want := count(t, db, `SELECT count(*) FROM appointments`), 4*large+8*10; n != want {
		t.Errorf("%d appointments stored, want %d", n, want)
	}
	if n := deadlocks(t, s, db); n != 0 {
		t.Errorf("%d deadlocks, want none (the lock order is fixed)", n)
	}
}

// A group holds one EHR's requests with distinct appointments, within its
// bounds; an empty group takes anything.
func TestGroupAdd(t *testing.T) {
	t.Parallel()
	req := func(ehr string, ids ...string) *request {
		var entries []payload.Entry
		for _, id := range ids {
			entries = append(entries, minimalEntry(id))
		}
		b := batch(entries...)
		b.Delivery.EHR = ehr
		return queued(t, b)
	}
	var g group
	for _, step := range []struct {
		r    *request
		want bool
	}{
		{req("nexus", "apt-1", "apt-2"), true},
		{req("nexus", "apt-3"), true},
		{req("nexus", "apt-4", "apt-2"), false}, // apt-2 is already in the group
		{req("medicat", "apt-9"), false},        // another EHR
		{req("nexus"), true},                    // quarantined entries only
	} {
		if got := g.add(step.r); got != step.want {
			t.Errorf("add(%v): %v, want %v", step.r.p.ids, got, step.want)
		}
	}
	if len(g.reqs) != 3 || g.entries != 3 {
		t.Errorf("group of %d requests, %d entries; want 3 and 3", len(g.reqs), g.entries)
	}

	big := make([]string, maxGroupEntries+1)
	for i := range big {
		big[i] = fmt.Sprintf("big-%d", i)
	}
	var alone group
	if !alone.add(req("nexus", big...)) {
		t.Error("an empty group refused a request larger than maxGroupEntries")
	}
	if alone.add(req("nexus", "apt-1")) {
		t.Error("a group over maxGroupEntries took another request")
	}

	var full group
	for i := range maxGroup {
		full.add(req("nexus", fmt.Sprintf("apt-%d", i)))
	}
	if full.add(req("nexus", "apt-x")) {
		t.Errorf("a group of %d requests took another", maxGroup)
	}
}

// A queued request naming an appointment already in the group waits for
// the next group, so requests for the same appointment commit in the order
// they were queued, each as its own change.
func TestWorkCarriesOverlappingRequestToNextGroup(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	v1, v2 := minimalEntry("apt-1"), minimalEntry("apt-1")
	v2.Appointment.Status, v2.Appointment.StatusRaw = "cancelled", "Cancelled"
	w := &Store{db: s.db, queue: make(chan *request, 3), txTimeout: txTimeout, lookAfter: lookAfter} // a worker of our own, run to the end
	var reqs []*request
	for _, b := range []Batch{batch(v1), batch(v2), batch(minimalEntry("apt-2"))} {
		r := queued(t, b)
		reqs = append(reqs, r)
		w.queue <- r
	}
	close(w.queue)
	w.wg.Add(1)
	w.work()
	for i, r := range reqs {
		if o := <-r.done; o.err != nil || o.res.Written != 1 {
			t.Errorf("request %d: %+v, %v; want one written", i, o.res, o.err)
		}
	}
	if c := transactions(t, db); c != 2 {
		t.Errorf("%d statements, want 2 (v1 alone, then v2 with apt-2)", c)
	}
	if got := getAppointment(t, db, "apt-1").Status; got != "cancelled" {
		t.Errorf("apt-1 is %q, want the later request's cancelled", got)
	}
	if h := getHistory(t, db, "apt-1"); len(h) != 2 {
		t.Errorf("apt-1 has %d history rows, want 2", len(h))
	}
}

// One statement writes several requests: each request's delivery row, and
// only its own, is what its appointments, history and quarantined entries
// refer to, and each request gets its own counts.
func TestWriteGroupDeliveryIDs(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	var group []*request
	for i := range 6 {
		var entries []payload.Entry
		for k := range i + 1 { // request i writes i+1 appointments
			entries = append(entries, minimalEntry(fmt.Sprintf("apt-%d-%d", i, k)))
		}
		b := batch(entries...)
		for k := range i % 3 { // and quarantines i%3 entries, each its own (identical ones are kept once)
			b.Quarantined = append(b.Quarantined, Quarantined{Index: 10 + k, Raw: fmt.Appendf(nil, `{"r":%d,"k":%d}`, i, k)})
		}
		group = append(group, queued(t, b))
	}
	s.commit(group, false)
	if c := transactions(t, db); c != 1 {
		t.Fatalf("%d statements, want 1 for the group", c)
	}
	for i, r := range group {
		o := <-r.done
		if o.err != nil || o.res.Written != i+1 || o.res.Quarantined != i%3 {
			t.Errorf("request %d: %+v, %v; want %d written, %d quarantined", i, o.res, o.err, i+1, i%3)
		}
		req := r.p.delivery.RequestID
		for _, q := range []struct{ what, sql string }{
			{"appointments", `SELECT count(*) FROM appointments a JOIN webhook_deliveries d ON d.id = a.delivery_id
				WHERE d.request_id = $1 AND a.external_id LIKE $2`},
			{"history rows", `SELECT count(*) FROM appointment_history h JOIN webhook_deliveries d ON d.id = h.delivery_id
				WHERE d.request_id = $1 AND h.appointment_external_id LIKE $2`},
		} {
			if n := count(t, db, q.sql, req, fmt.Sprintf("apt-%d-%%", i)); n != i+1 {
				t.Errorf("request %d: %d %s refer to its delivery, want %d", i, n, q.what, i+1)
			}
		}
		if n := count(t, db, `SELECT count(*) FROM quarantined_entries q JOIN webhook_deliveries d ON d.id = q.delivery_id
			WHERE d.request_id = $1`, req); n != i%3 {
			t.Errorf("request %d: %d quarantined entries refer to its delivery, want %d", i, n, i%3)
		}
	}
}

// A role that may only read and write the tables (no sequence privileges,
// no DDL) can start and write: what docs/operations.md suggests for
// receivers when migrations run separately.
func TestWriteAsReadWriteRole(t *testing.T) {
	t.Parallel()
	adminURL := pgtest.NewDatabase(t)
	u := pgtest.NewRole(t, adminURL, `SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public`)
	s, db := openStore(t, u)
	// A receiver started with --migrate=true (as the operator runs it)
	// finds nothing to apply and becomes ready.
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate of a migrated database as a read-write role: %v", err)
	}
	if err := s.Ready(context.Background()); err != nil {
		t.Fatalf("Ready as a read-write role: %v", err)
	}
	var res []outcome
	var group []*request
	for i := range 3 {
		group = append(group, queued(t, batch(minimalEntry(fmt.Sprintf("apt-%d", i)))))
	}
	s.commit(group, false)
	for _, r := range group {
		res = append(res, <-r.done)
	}
	for i, o := range res {
		if o.err != nil {
			t.Errorf("request %d as a read-write role: %v", i, o.err)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM appointments`); n != 3 {
		t.Errorf("%d appointments, want 3", n)
	}
	// The retention needs DELETE besides (docs/operations.md, "Retention").
	all := Retention{DeliveryLog: time.Hour, Quarantine: time.Hour, QuarantineContent: time.Hour, History: time.Hour}
	later := time.Now().Add(2 * time.Hour)
	if _, _, err := s.Prune(context.Background(), ehr, all, later); err == nil {
		t.Error("Prune without DELETE succeeded")
	}
	admin, err := sqlx.Open("postgres", adminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(`GRANT DELETE ON ALL TABLES IN SCHEMA public TO ` + pu.User.Username()); err != nil {
		t.Fatal(err)
	}
	if p, _, err := s.Prune(context.Background(), ehr, all, later); err != nil || p.History != 3 || p.DeliveryLog != 0 {
		t.Errorf("Prune with DELETE: %+v, %v; want the 3 history rows (the deliveries stay with their appointments)", p, err)
	}
}

// Small groups take turns: while one is in flight (here: the turn is held),
// a large request does not wait, and the small requests queued meanwhile
// all join one group, the gatherer's, instead of being split among the
// waiting workers.
func TestSmallGroupsTakeTurns(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	s.smallTurn <- struct{}{} // a small group in flight
	entries := make([]payload.Entry, smallGroupEntries)
	for i := range entries {
		entries[i] = minimalEntry(fmt.Sprintf("large-%d", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Write(ctx, batch(entries...)); err != nil {
		t.Fatalf("a large request while a small group is in flight: %v", err)
	}
	const small = 12
	reqs := make([]*request, small)
	for i := range reqs {
		reqs[i] = queued(t, batch(minimalEntry(fmt.Sprintf("small-%d", i))))
		s.queue <- reqs[i]
	}
	for len(s.queue) > 0 { // taken by the gatherer, which waits for its turn
		if ctx.Err() != nil {
			t.Fatalf("%d requests still queued", len(s.queue))
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := count(t, db, `SELECT count(*) FROM appointments WHERE external_id LIKE 'small-%'`); n != 0 {
		t.Fatalf("%d small requests written while the turn was held", n)
	}
	<-s.smallTurn // the group in flight commits
	for i, r := range reqs {
		if o := <-r.done; o.err != nil || o.res.Written != 1 {
			t.Errorf("small request %d: %+v, %v; want one written", i, o.res, o.err)
		}
	}
	if c := count(t, db, `SELECT count(DISTINCT xmin::text) FROM webhook_deliveries WHERE item_count = 1`); c != 1 {
		t.Errorf("the %d small requests took %d statements, want 1: the waiting requests were split", small, c)
	}
}

// Two versions of one appointment wait for its row, which another
// replica's statement holds (a session named as the store's: a row found
// held elsewhere, a DBA's, would cancel the second version's wait when
// the first's times out, cancelTouching): the first version's wait times
// out, the row is freed before the second's does. The first is
// answered unavailable and the second stored: the appointment ends at the
// newer version. Run again at once, the first would have queued behind
// the second and committed after it (the vendor's retry of it is ordered
// by its first receipt instead: "Order under retries").
func TestLockTimeoutDoesNotUndoANewerVersion(t *testing.T) {
	t.Parallel()
	u := pgtest.NewDatabase(t)
	pgtest.AlterDatabase(t, u, "lock_timeout = '1s'") // a DBA's, kept: known timing
	s, db := openStore(t, u)
	mustWrite(t, s, batch(minimalEntry("held")))
	replica, err := sql.Open("postgres", withApplicationName(t, u, storeSessions))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Close() })
	tx := pgtest.HoldRows(t, replica, `SELECT 1 FROM appointments WHERE external_id = 'held' FOR UPDATE`)
	older, newer := minimalEntry("held"), minimalEntry("held")
	older.Appointment.Status, older.Appointment.StatusRaw = "cancelled", "Cancelled"
	newer.Appointment.Status, newer.Appointment.StatusRaw = "noshow", "No-show"
	write := func(e payload.Entry) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := s.Write(context.Background(), batch(e))
			done <- err
		}()
		return done
	}
	start := time.Now()
	olderDone := write(older)
	time.Sleep(300 * time.Millisecond) // past turnHold: the newer goes while the older waits
	newerDone := write(newer)
	time.Sleep(time.Until(start.Add(1150 * time.Millisecond))) // the older's wait has timed out, the newer's not
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-olderDone; !IsUnavailable(err) {
		t.Errorf("the older version, whose wait timed out: %v; want unavailable (503)", err)
	}
	if err := <-newerDone; err != nil {
		t.Fatalf("the newer version: %v", err)
	}
	var status string
	if err := db.Get(&status, `SELECT status FROM appointments WHERE external_id = 'held'`); err != nil || status != "noshow" {
		t.Errorf("the appointment's status: %q %v; want the newer version's, noshow", status, err)
	}
}

// A worker carrying a request over does not wait for the gathering worker,
// which may be waiting for a request that never comes: with nothing more
// queued, the carried request is still written.
func TestCarriedRequestDoesNotWaitForTheGatherer(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	v1, v2 := minimalEntry("apt-1"), minimalEntry("apt-1")
	v2.Appointment.Status, v2.Appointment.StatusRaw = "cancelled", "Cancelled"
	w := &Store{db: s.db, queue: make(chan *request, 2), smallTurn: make(chan struct{}, 1), txTimeout: txTimeout, turnHold: turnHold, lookAfter: lookAfter}
	reqs := []*request{queued(t, batch(v1)), queued(t, batch(v2))}
	for _, r := range reqs {
		w.queue <- r
	}
	for range 2 { // one carries v2 over while the other waits on the empty queue
		w.wg.Add(1)
		go w.work()
	}
	defer func() { close(w.queue); w.wg.Wait() }()
	timeout := time.After(20 * time.Second)
	for i, r := range reqs {
		select {
		case o := <-r.done:
			if o.err != nil || o.res.Written != 1 {
				t.Errorf("request %d: %+v, %v; want one written", i, o.res, o.err)
			}
		case <-timeout:
			t.Fatalf("request %d was not written: the carried request waits for the gatherer", i)
		}
	}
}

// The write statement's generic plan, made just after an ANALYZE of tables
// of a few rows (a new integration after its first autoanalyze), probes
// every table through an index: a plan reading them by sequential scan for
// every entry would be kept, per connection, while the tables grow.
func TestGenericPlanAfterEarlyAnalyzeUsesIndexes(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	ctx := context.Background()
	for k := range 50 {
		if _, err := s.Write(ctx, batch(minimalEntry(fmt.Sprintf("seed-%d", k)))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`ANALYZE`); err != nil {
		t.Fatal(err)
	}
	conn, err := s.db.Connx(ctx) // the store's session settings
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, simple := range []bool{false, true} {
		query, name := writeSQL, "w"
		if simple {
			query, name = writeSimpleSQL, "ws"
		}
		if _, err := conn.ExecContext(ctx, "PREPARE "+name+" AS "+query); err != nil {
			t.Fatal(err)
		}
		// EXPLAIN EXECUTE takes literals, not bind parameters.
		lits := make([]string, 0, 48)
		for _, a := range writeArgs([]*prepared{queued(t, batch(minimalEntry("probe"))).p}, simple) {
			var v string
			switch x := a.(type) {
			case []byte:
				v = string(x)
			case string:
				v = x
			default:
				v = fmt.Sprint(x)
			}
			lits = append(lits, "'"+strings.ReplaceAll(v, "'", "''")+"'")
		}
		var plan []string
		if err := conn.SelectContext(ctx, &plan, "EXPLAIN EXECUTE "+name+"("+strings.Join(lits, ",")+")"); err != nil {
			t.Fatal(err)
		}
		for _, l := range plan {
			for _, table := range []string{"appointment_history", "appointments", "patients", "practitioners", "quarantined_entries", "webhook_deliveries"} {
				if strings.Contains(l, "Seq Scan on "+table+" ") {
					t.Errorf("the generic plan of %s reads %s sequentially:\n%s", name, table, strings.Join(plan, "\n"))
				}
			}
		}
	}
}

// A caller whose deadline passes while its statement is under way waits
// for the statement: its answer says what happened to the data, and a
// commit is never reported as a failure (a 503 "not stored").
func TestCallerWaitsForItsStatementUnderWay(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	lock, err := db.Beginx()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback() }()
	// The write statement's delivery insert waits for this lock.
	if _, err := lock.Exec(`LOCK TABLE webhook_deliveries IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	var released atomic.Int32
	b := batch(minimalEntry("under-way"))
	b.Release = func() { released.Add(1) }
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	type result struct {
		res Result
		err error
	}
	got := make(chan result, 1)
	go func() { res, err := s.Write(ctx, b); got <- result{res, err} }()
	waitFor(t, 10*time.Second, "the statement waiting for the lock", func() bool {
		return count(t, db, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, storeSessions) == 1
	})
	<-ctx.Done()
	select {
	case r := <-got:
		t.Fatalf("Write returned at its caller's deadline, its statement under way: %+v, %v", r.res, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || r.res.Written != 1 {
		t.Fatalf("after the lock: %+v, %v; want the commit reported", r.res, r.err)
	}
	if n := count(t, db, `SELECT count(*) FROM appointments WHERE external_id = 'under-way'`); n != 1 {
		t.Errorf("%d rows", n)
	}
	if n := released.Load(); n != 1 {
		t.Errorf("Release called %d times, want once", n)
	}
}

// A caller whose deadline passes while its request waits in the store
// gets an error at once and nothing is stored; the store keeps holding
// the request's data until a worker drops it, and only then calls Release
// (the receiver's in-flight budget counts it until then).
func TestCallerGivesUpOnQueuedRequest(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	s.smallTurn <- struct{}{} // a small group in flight: the request waits
	var released atomic.Int32
	b := batch(minimalEntry("given-up"))
	b.Release = func() { released.Add(1) }
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Write(ctx, b)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("Write: %v, want the deadline while queued", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Write returned %s after it was given up", d)
	}
	time.Sleep(100 * time.Millisecond)
	if n := released.Load(); n != 0 {
		t.Errorf("Release called %d times while the store still holds the request", n)
	}
	<-s.smallTurn // the group in flight commits; the gatherer's group goes
	waitFor(t, 10*time.Second, "Release once the worker dropped the request", func() bool { return released.Load() == 1 })
	if n := count(t, db, `SELECT count(*) FROM appointments WHERE external_id = 'given-up'`) +
		count(t, db, `SELECT count(*) FROM webhook_deliveries WHERE request_id = $1`, b.Delivery.RequestID); n != 0 {
		t.Errorf("%d rows of a request given up while queued", n)
	}
	time.Sleep(100 * time.Millisecond)
	if n := released.Load(); n != 1 {
		t.Errorf("Release called %d times, want once", n)
	}
}

// waitFor polls cond until it holds, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// When the database stops answering in the middle of a statement (a
// frozen server: it takes the bytes and never answers), the caller past
// its deadline gets ErrOutcomeUnknown once the transaction's time and the
// grace are over, not a claim that nothing was stored; and Close returns,
// with an error, though a statement and its connection never come back.
func TestWriteOutcomeUnknownWhenTheDatabaseStopsAnswering(t *testing.T) {
	t.Parallel()
	cluster := pgtest.NewCluster(t)
	s, _ := openStore(t, cluster.NewDatabase(t))
	s.txTimeout, s.outcomeGrace = time.Second, 500*time.Millisecond
	mustWrite(t, s, batch(minimalEntry("before"))) // connected, statement prepared
	cluster.Freeze(t)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Write(ctx, batch(minimalEntry("frozen")))
	if !errors.Is(err, ErrOutcomeUnknown) || !IsUnavailable(err) {
		t.Fatalf("Write to a database that stopped answering: %v, want ErrOutcomeUnknown (unavailable)", err)
	}
	if d := time.Since(start); d < 1500*time.Millisecond || d > 10*time.Second {
		t.Errorf("Write returned after %s, want the deadline, the transaction's 1s and the 0.5s grace", d)
	}
	start = time.Now()
	if err := s.Close(); err == nil {
		t.Error("Close reported success with a statement that never returned")
	}
	if d, most := time.Since(start), closeWait+poolCloseWait+5*time.Second; d > most {
		t.Errorf("Close took %s, want at most %s", d, most)
	}
}

// One connection whose server stopped answering (here its backend alone is
// frozen; a failover's old primary is the same until the kernel gives up on
// the connection) holds a small group's statement past its deadline:
// lib/pq's cancel goes over another connection and changes nothing. The
// small groups' turn passes on at turnHold, so the next single-appointment
// write is stored on another connection at once instead of every small
// write waiting for that one.
func TestOneFrozenConnectionDoesNotStopSmallWrites(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	s.txTimeout, s.outcomeGrace = time.Second, 500*time.Millisecond
	mustWrite(t, s, batch(minimalEntry("before"))) // one connection, statement prepared
	var pids []int
	if err := db.Select(&pids, `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`, storeSessions); err != nil || len(pids) != 1 {
		t.Fatalf("the store's sessions: %v (%v), want one", pids, err)
	}
	if err := syscall.Kill(pids[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pids[0], syscall.SIGCONT) })

	stuck := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := s.Write(ctx, batch(minimalEntry("on-the-frozen-connection")))
		stuck <- err
	}()
	time.Sleep(100 * time.Millisecond) // its statement is under way
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := s.Write(ctx, batch(minimalEntry("after"))); err != nil {
		t.Fatalf("a small write while another connection is frozen: %v after %s", err, time.Since(start))
	}
	if d, most := time.Since(start), s.turnHold+time.Second; d > most {
		t.Errorf("the small write waited %s, want at most %s", d, most)
	}
	if n := count(t, db, `SELECT count(*) FROM appointments WHERE external_id = 'after'`); n != 1 {
		t.Errorf("the small write stored %d rows", n)
	}
	if err := <-stuck; !errors.Is(err, ErrOutcomeUnknown) {
		t.Errorf("the write on the frozen connection: %v, want ErrOutcomeUnknown", err)
	}
}
