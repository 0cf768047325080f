package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// retry is a batch of entries delivered at received, each a version the
// receiver first received at first (a retry when first is earlier).
func retry(received, first time.Time, entries ...payload.Entry) Batch {
	b := batch(entries...)
	b.Delivery.ReceivedAt = received
	b.Versions = make([]Version, len(entries))
	for i, e := range entries {
		b.Versions[i] = Version{Hash: ContentHash(e), FirstReceived: first}
	}
	return b
}

// at is a batch of entries delivered, and first received, at received.
func at(received time.Time, entries ...payload.Entry) Batch {
	return retry(received, received, entries...)
}

// stored is an appointment's order state: its status, the first receipt of
// its version, and its history (status, superseded), in apply order.
type stored struct {
	Status     string
	ReceivedAt *time.Time
	History    []string
}

func getStored(t *testing.T, db *sqlx.DB, id string) stored {
	t.Helper()
	var st stored
	if err := db.QueryRow(`SELECT status, version_received_at FROM appointments WHERE ehr = $1 AND external_id = $2`,
		ehr, id).Scan(&st.Status, &st.ReceivedAt); err != nil {
		t.Fatalf("reading appointment %s: %v", id, err)
	}
	if st.ReceivedAt != nil {
		*st.ReceivedAt = st.ReceivedAt.UTC()
	}
	if err := db.Select(&st.History, `SELECT status || CASE WHEN superseded THEN ' (superseded)' ELSE '' END
		FROM appointment_history WHERE ehr = $1 AND appointment_external_id = $2 ORDER BY id`, ehr, id); err != nil {
		t.Fatalf("reading history of %s: %v", id, err)
	}
	return st
}

func withStatus(e payload.Entry, status string) payload.Entry {
	e.Appointment.Status, e.Appointment.StatusRaw = status, status
	return e
}

// TestWriteOrderUnderRetries is the rule, step by step on one appointment:
// a retry of a version first received before the stored one is superseded
// (history row marked, nothing else changes, its redelivery a no-op); a
// retry first received at or after it, or onto a row without a received
// time, is applied; a version first received with its own request is
// applied whatever the stored time says.
func TestWriteOrderUnderRetries(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }
	booked := minimalEntry("apt-1")
	cancelled := withStatus(booked, "cancelled")
	cancelled.Patient.Phone = ptr("555-000-0001") // a superseded version must not touch the patient
	cancelled.Practitioner.LastName = "Ng-Smith"  // nor the practitioner
	arrived := withStatus(cancelled, "arrived")
	fulfilled := withStatus(cancelled, "fulfilled")
	noshow := withStatus(cancelled, "noshow")
	proposed := withStatus(cancelled, "proposed")
	pending := withStatus(cancelled, "pending")

	steps := []struct {
		name   string
		b      Batch
		want   Result
		status string
		at     time.Time // version_received_at after the step
		last   string    // the history row the step ends with
	}{
		{"B first (A got 503 at 1s)", at(sec(2), cancelled), Result{Written: 1}, "cancelled", sec(2), "cancelled"},
		{"retry of A, first received before B", retry(sec(3), sec(1), booked), Result{Superseded: 1}, "cancelled", sec(2), "booked (superseded)"},
		{"A again, as a retry", retry(sec(4), sec(1), booked), Result{Duplicates: 1}, "cancelled", sec(2), "booked (superseded)"},
		{"A again, as a first delivery", at(sec(5), booked), Result{Duplicates: 1}, "cancelled", sec(2), "booked (superseded)"},
		{"retry first received after B", retry(sec(7), sec(6), arrived), Result{Written: 1}, "arrived", sec(6), "arrived"},
		{"retry first received with the stored one", retry(sec(8), sec(6), fulfilled), Result{Written: 1}, "fulfilled", sec(6), "fulfilled"},
		// A receiver whose clock is behind: the stored time is later than
		// this request's, yet a first delivery applies.
		{"first delivery received before the stored time", at(sec(-60), noshow), Result{Written: 1}, "noshow", sec(-60), "noshow"},
	}
	for _, st := range steps {
		res := mustWrite(t, s, st.b)
		if diff := cmp.Diff(st.want, res); diff != "" {
			t.Errorf("%s: Result mismatch (-want +got):\n%s", st.name, diff)
		}
		if p := getPatient(t, db, "pat-apt-1"); p.Phone == nil || *p.Phone != "555-000-0001" {
			t.Errorf("%s: the patient row is not the applied versions'", st.name)
		}
		got := getStored(t, db, "apt-1")
		if got.Status != st.status || got.ReceivedAt == nil || !got.ReceivedAt.Equal(st.at) || got.History[len(got.History)-1] != st.last {
			t.Errorf("%s: status %q received %v, history ends %q; want %q %v %q",
				st.name, got.Status, got.ReceivedAt, got.History[len(got.History)-1], st.status, st.at, st.last)
		}
	}
	if r := getPractitioner(t, db, "prov-1"); r.LastName != "Ng-Smith" {
		t.Errorf("practitioner last name %q, want the applied versions' Ng-Smith", r.LastName)
	}

	// A row written before the received times existed: any version applies.
	if _, err := db.Exec(`UPDATE appointments SET version_received_at = NULL WHERE external_id = 'apt-1'`); err != nil {
		t.Fatal(err)
	}
	if res := mustWrite(t, s, retry(sec(20), sec(-3600), proposed)); res != (Result{Written: 1}) {
		t.Errorf("retry onto a row without a received time: %+v, want written", res)
	}
	// And it has one again, so an older retry is superseded.
	if res := mustWrite(t, s, retry(sec(21), sec(-7200), pending)); res != (Result{Superseded: 1}) {
		t.Errorf("older retry after that: %+v, want superseded", res)
	}

	want := []string{"cancelled", "booked (superseded)", "arrived", "fulfilled", "noshow", "proposed", "pending (superseded)"}
	if diff := cmp.Diff(want, getStored(t, db, "apt-1").History); diff != "" {
		t.Errorf("history mismatch (-want +got):\n%s", diff)
	}
	var superseded struct {
		ReceivedAt time.Time `db:"version_received_at"`
		RequestID  string    `db:"request_id"`
	}
	if err := db.Get(&superseded, `SELECT h.version_received_at, d.request_id FROM appointment_history h
		JOIN webhook_deliveries d ON d.id = h.delivery_id WHERE h.superseded AND h.status = 'booked'`); err != nil {
		t.Fatal(err)
	}
	if !superseded.ReceivedAt.Equal(sec(1)) || superseded.RequestID != steps[1].b.Delivery.RequestID {
		t.Errorf("superseded history row: received %v by %s, want %v by the retry %s",
			superseded.ReceivedAt, superseded.RequestID, sec(1), steps[1].b.Delivery.RequestID)
	}
}

// In one statement, each request gets its own counts, and a superseded
// entry leaves its neighbours in the same request and group alone.
func TestWriteGroupSupersededCounts(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	var newer, older []payload.Entry
	for i := range 3 {
		e := minimalEntry(fmt.Sprintf("apt-%d", i))
		older = append(older, e)
		newer = append(newer, withStatus(e, "cancelled"))
	}
	mustWrite(t, s, at(t0.Add(time.Minute), newer...))

	var group []*request
	for _, b := range []Batch{
		retry(t0.Add(2*time.Minute), t0, older[0], minimalEntry("apt-new")), // one superseded, one new
		retry(t0.Add(2*time.Minute), t0, older[1]),                          // superseded
		at(t0.Add(2*time.Minute), older[2]),                                 // a first delivery: applied
	} {
		group = append(group, queued(t, b))
	}
	s.commit(group, false)
	want := []Result{{Written: 1, Superseded: 1}, {Superseded: 1}, {Written: 1}}
	for i, r := range group {
		o := <-r.done
		if o.err != nil {
			t.Fatalf("request %d: %v", i, o.err)
		}
		if diff := cmp.Diff(want[i], o.res); diff != "" {
			t.Errorf("request %d: Result mismatch (-want +got):\n%s", i, diff)
		}
	}
	for id, status := range map[string]string{"apt-0": "cancelled", "apt-1": "cancelled", "apt-2": "booked", "apt-new": "booked"} {
		if got := getStored(t, db, id).Status; got != status {
			t.Errorf("%s is %s, want %s", id, got, status)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM appointment_history WHERE superseded`); n != 2 {
		t.Errorf("%d superseded history rows, want 2", n)
	}
}

func TestWriteRefusesVersionsNotMatchingEntries(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	b := at(time.Now(), minimalEntry("a"), minimalEntry("b"))
	b.Versions = b.Versions[:1]
	if _, err := s.Write(t.Context(), b); err == nil {
		t.Error("Write accepted 1 version for 2 entries")
	}
	b = at(time.Now(), minimalEntry("a"))
	b.Versions[0].FirstReceived = time.Time{}
	if _, err := s.Write(t.Context(), b); err == nil {
		t.Error("Write accepted a version without a received time")
	}
}

// TestRetryDoesNotUndoAVersionCommittedWhileItWaits: a retried (or
// replayed) version is checked against the stored one under the row's
// lock, not only in the statement's snapshot. Here the retry's statement
// takes its snapshot, then waits for a patient's row lock; meanwhile
// another receiver commits a newer version of the same appointment and
// patient, answered 200. The retry must then leave both as the newer
// version has them (it found them older in its snapshot).
func TestRetryDoesNotUndoAVersionCommittedWhileItWaits(t *testing.T) {
	t.Parallel()
	u := pgtest.NewDatabase(t)
	s, db := openStore(t, u)
	other, _ := openStore(t, u) // another replica
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	sec := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

	blocker := minimalEntry("apt-0") // its patient pat-0 sorts before pat-a
	blocker.Patient.ID = "pat-0"
	booked := minimalEntry("apt-a")
	booked.Patient.ID = "pat-a"
	mustWrite(t, s, at(sec(0), blocker, booked))

	oldVersion := withStatus(booked, "arrived") // first received at 10 s, its first attempt failed
	oldVersion.Patient.FirstName = "Old"
	newVersion := withStatus(booked, "cancelled") // first received at 20 s, stored
	newVersion.Patient.FirstName = "New"
	blockerAgain := withStatus(blocker, "arrived")

	lock, err := db.Beginx()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback() }()
	if _, err := lock.Exec(`SELECT 1 FROM patients WHERE ehr = $1 AND external_id = 'pat-0' FOR UPDATE`, ehr); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := s.Write(context.Background(), retry(sec(30), sec(10), blockerAgain, oldVersion))
		got <- err
	}()
	waitFor(t, 10*time.Second, "the retry's statement waiting for pat-0", func() bool {
		return count(t, db, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, storeSessions) == 1
	})
	mustWrite(t, other, at(sec(20), newVersion))
	if err := lock.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the retry: %v", err)
	}

	if st := getStored(t, db, "apt-a"); st.Status != "cancelled" || !st.ReceivedAt.Equal(sec(20)) {
		t.Errorf("apt-a is %s, first received %v; want the newer version, cancelled at %v, kept", st.Status, st.ReceivedAt, sec(20))
	}
	if p := getPatient(t, db, "pat-a"); p.FirstName != "New" {
		t.Errorf("pat-a's first name is %q, want the newer version's %q kept", p.FirstName, "New")
	}
	if st := getStored(t, db, "apt-0"); st.Status != "arrived" {
		t.Errorf("apt-0 is %s: the retry's other entry, newer than what is stored, was not applied", st.Status)
	}
}
