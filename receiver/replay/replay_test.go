package replay_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/replay"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const ehr = "nexus"

var (
	chicago = mustZone("America/Chicago")
	// t0 is when the entries were quarantined; replayAt is "today".
	t0       = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	replayAt = time.Date(2026, 2, 1, 12, 0, 0, 0, time.UTC)
)

func mustZone(name string) *time.Location {
	l, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return l
}

// entry is one entry of a request body, as a sender writes it.
func entry(id, birthDate, reason string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"appointment":{"id":%q,"status":"booked","start_time":"03/10/2026 14:30",
"start_date":"03/10/2026","created_time":"12/01/2025 09:00","type":"Follow-up","reason":%q},
"patient":{"id":"pat-%s","first_name":"Jane","last_name":"Doe","birth_date":%q,"gender":"Female"},
"practitioner":{"id":"prov-1","first_name":"John","last_name":"Smith"}}`, id, reason, id, birthDate))
}

func open(t *testing.T) (*store.Store, *sqlx.DB) {
	t.Helper()
	u := pgtest.NewDatabase(t)
	st, err := store.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	db, err := sqlx.Open("postgres", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return st, db
}

func count(t *testing.T, db *sqlx.DB, q string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Get(&n, q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// quarantine writes a delivery whose entries all went to quarantine, as
// a receiver under onInvalid: Quarantine does.
func quarantine(t *testing.T, st *store.Store, requestID string, at time.Time, raws ...json.RawMessage) {
	t.Helper()
	qs := make([]store.Quarantined, len(raws))
	for i, r := range raws {
		qs[i] = store.Quarantined{Index: i, Raw: r, Errors: []payload.FieldError{
			{Index: i, Field: fmt.Sprintf("appointments[%d].patient.birth_date", i), Message: "must not be in the future"}}}
	}
	_, err := st.Write(context.Background(), store.Batch{
		Delivery: store.Delivery{EHR: ehr, RequestID: requestID, ReceivedAt: at,
			BodySHA256: sha256.Sum256([]byte(requestID)), ItemCount: len(raws),
			Outcome: store.OutcomeQuarantined, StatusCode: 200},
		Quarantined: qs,
	})
	if err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, st *store.Store, dry bool) replay.Report {
	t.Helper()
	rep, err := replay.Run(context.Background(), st, replay.Options{
		Filter:   store.DeliveryFilter{EHR: ehr},
		Location: chicago,
		Now:      func() time.Time { return replayAt },
		DryRun:   dry,
	})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// Entries quarantined on 1 January are replayed on 1 February: those valid
// by then are stored as a delivery would store them (the EHR's zone today,
// history rows, a newer version not undone), marked replayed, and a second
// replay, even one that lost the marks, changes nothing.
func TestReplay(t *testing.T) {
	st, db := open(t)
	quarantine(t, st, "req-q", t0,
		entry("apt-1", "05/15/1990", "check"),     // valid by today's rules
		entry("apt-2", "05/15/1990", "")[:40],     // not even an object: invalid for good
		entry("apt-3", "01/15/2026", "old"),       // born after t0, before replayAt
		entry("apt-4", "12/24/2026", "too early"), // still in the future on replayAt
	)
	// A newer version of apt-3 arrived after the quarantined one.
	newer := store.Batch{
		Delivery: store.Delivery{EHR: ehr, RequestID: "req-newer", ReceivedAt: t0.Add(time.Hour),
			BodySHA256: sha256.Sum256([]byte("newer")), ItemCount: 1, Outcome: store.OutcomeStored, StatusCode: 200},
	}
	e, errs := replay.Validate(store.QuarantineRecord{Raw: entry("apt-3", "01/15/2025", "new")}, chicago, replayAt)
	if errs != nil {
		t.Fatalf("the newer version is invalid: %v", errs)
	}
	newer.Entries = []payload.Entry{e}
	if _, err := st.Write(context.Background(), newer); err != nil {
		t.Fatal(err)
	}

	if rep := run(t, st, true); rep.Valid != 2 || rep.Deliveries != 0 {
		t.Fatalf("dry run: %+v, want 2 valid and nothing written", rep)
	}
	if n := count(t, db, `SELECT count(*) FROM appointments WHERE external_id = 'apt-1'`); n != 0 {
		t.Fatal("the dry run stored an appointment")
	}

	rep := run(t, st, false)
	if rep.Examined != 4 || rep.Valid != 2 || rep.Deliveries != 1 || rep.Written != 1 || rep.Superseded != 1 ||
		len(rep.StillInvalid) != 2 {
		t.Fatalf("report %+v, want 4 examined, 2 valid in 1 delivery: 1 written, 1 superseded, 2 still invalid", rep)
	}
	for i, want := range []int{1, 3} {
		if got := rep.StillInvalid[i].EntryIndex; got != want {
			t.Errorf("still invalid #%d is entry %d, want %d", i, got, want)
		}
	}

	// Stored with the EHR's zone: 14:30 in Chicago (CDT since 8 March).
	var start time.Time
	if err := db.Get(&start, `SELECT start_time FROM appointments WHERE ehr = $1 AND external_id = 'apt-1'`, ehr); err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 3, 10, 14, 30, 0, 0, chicago); !start.Equal(want) {
		t.Errorf("start_time %v, want %v", start, want)
	}
	// The replay is a delivery of its own, under the original request id,
	// and the history rows point at it.
	var replayID int64
	if err := db.Get(&replayID, `SELECT id FROM webhook_deliveries WHERE outcome = 'replayed' AND request_id = 'req-q'`); err != nil {
		t.Fatalf("the replay delivery: %v", err)
	}
	if n := count(t, db, `SELECT count(*) FROM appointment_history WHERE delivery_id = $1 AND NOT superseded`, replayID); n != 1 {
		t.Errorf("%d applied history rows of the replay, want 1", n)
	}
	if n := count(t, db, `SELECT count(*) FROM appointment_history WHERE delivery_id = $1 AND superseded`, replayID); n != 1 {
		t.Errorf("%d superseded history rows of the replay, want 1", n)
	}
	var reason string
	if err := db.Get(&reason, `SELECT reason FROM appointments WHERE external_id = 'apt-3'`); err != nil || reason != "new" {
		t.Errorf("apt-3's reason is %q (%v), want the newer version's", reason, err)
	}
	marked := `SELECT count(*) FROM quarantined_entries WHERE replayed_at IS NOT NULL`
	if n := count(t, db, marked); n != 2 {
		t.Errorf("%d entries marked replayed, want 2", n)
	}

	history := `SELECT count(*) FROM appointment_history`
	before := count(t, db, history)
	if rep := run(t, st, false); rep.Examined != 2 || rep.Valid != 0 || rep.Deliveries != 0 {
		t.Errorf("second replay: %+v, want only the 2 still invalid examined", rep)
	}
	// Marks lost (as if a replay's write committed but nobody saw it):
	// the content hashes make the writes no-ops.
	if _, err := db.Exec(`UPDATE quarantined_entries SET replayed_at = NULL`); err != nil {
		t.Fatal(err)
	}
	rep = run(t, st, false)
	if rep.Valid != 2 || rep.Written != 0 || rep.Duplicates != 2 {
		t.Errorf("replay without marks: %+v, want 2 valid, both duplicates", rep)
	}
	if after := count(t, db, history); after != before {
		t.Errorf("history rows %d after replaying again, want %d", after, before)
	}
	if n := count(t, db, marked); n != 2 {
		t.Errorf("%d entries marked after replaying again, want 2", n)
	}
}

func TestReplayNeedsEHRAndZone(t *testing.T) {
	for _, o := range []replay.Options{{Location: chicago}, {Filter: store.DeliveryFilter{EHR: ehr}}} {
		if _, err := replay.Run(context.Background(), nil, o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// Pages that cut a delivery: every pending entry is still replayed once.
func TestReplayPages(t *testing.T) {
	defer replay.SetPageSize(2)()
	st, db := open(t)
	for d := range 3 {
		quarantine(t, st, fmt.Sprintf("req-%d", d), t0,
			entry(fmt.Sprintf("apt-%d-0", d), "05/15/1990", ""),
			entry(fmt.Sprintf("apt-%d-1", d), "05/15/1990", ""),
			entry(fmt.Sprintf("apt-%d-2", d), "05/15/1990", ""))
	}
	rep := run(t, st, false)
	// Pages of 2 over 3 deliveries of 3 (aa|ab|bb|cc|c): 6 pieces.
	if rep.Examined != 9 || rep.Written != 9 || rep.Deliveries != 6 {
		t.Errorf("report %+v, want 9 examined and written in 6 replay deliveries", rep)
	}
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries WHERE replayed_at IS NULL`); n != 0 {
		t.Errorf("%d entries left pending", n)
	}
}

// Pages bounded by their content: a page of one entry each, every entry
// replayed once, each page's part of a delivery a replay delivery.
func TestReplayPagesByContent(t *testing.T) {
	a, b := entry("apt-a", "05/15/1990", ""), entry("apt-b", "05/15/1990", "")
	defer replay.SetPageBytes(len(a) + len(b) - 1)()
	st, db := open(t)
	quarantine(t, st, "req-0", t0, a, b)
	quarantine(t, st, "req-1", t0, entry("apt-c", "05/15/1990", ""), entry("apt-d", "05/15/1990", ""))
	rep := run(t, st, false)
	if rep.Examined != 4 || rep.Written != 4 || rep.Deliveries != 4 {
		t.Errorf("report %+v, want 4 examined and written in 4 replay deliveries", rep)
	}
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries WHERE replayed_at IS NULL`); n != 0 {
		t.Errorf("%d entries left pending", n)
	}
}

// A batch named apt-5 twice: its first entry (booked) was quarantined, its
// second (cancelled) stored, the batch's last word. Replaying the first
// must not book the cancelled appointment again.
func TestReplayKeepsWhatItsOwnDeliveryStored(t *testing.T) {
	st, db := open(t)
	booked := entry("apt-5", "01/15/2026", "first")
	cancelled := json.RawMessage(strings.Replace(string(entry("apt-5", "05/15/1990", "second")), `"booked"`, `"cancelled"`, 1))
	e, errs := replay.Validate(store.QuarantineRecord{Raw: cancelled}, chicago, t0)
	if errs != nil {
		t.Fatalf("the stored entry is invalid: %v", errs)
	}
	_, err := st.Write(context.Background(), store.Batch{
		Delivery: store.Delivery{EHR: ehr, RequestID: "req-twice", ReceivedAt: t0,
			BodySHA256: sha256.Sum256([]byte("twice")), ItemCount: 2, Outcome: store.OutcomeQuarantined, StatusCode: 200},
		Entries: []payload.Entry{e},
		Quarantined: []store.Quarantined{{Index: 0, Raw: booked, Errors: []payload.FieldError{
			{Index: 0, Field: "appointments[0].patient.birth_date", Message: "must not be in the future"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rep := run(t, st, false)
	if rep.Valid != 1 || rep.Written != 0 || rep.Superseded != 1 {
		t.Errorf("report %+v, want the replayed entry superseded", rep)
	}
	var status string
	if err := db.Get(&status, `SELECT status FROM appointments WHERE ehr = $1 AND external_id = 'apt-5'`, ehr); err != nil || status != "cancelled" {
		t.Errorf("apt-5 is %q (%v), want the batch's last word, cancelled", status, err)
	}
}

// Two replays of one EHR at once: the second is refused, rather than
// writing a second replay delivery for the same entries; a dry run, which
// writes nothing, and another EHR's replay go on.
func TestReplayOneAtATime(t *testing.T) {
	st, _ := open(t)
	quarantine(t, st, "req-q", t0, entry("apt-1", "05/15/1990", "check"))
	unlock, err := st.LockReplay(context.Background(), ehr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = replay.Run(context.Background(), st, replay.Options{
		Filter: store.DeliveryFilter{EHR: ehr}, Location: chicago, Now: func() time.Time { return replayAt }})
	if !errors.Is(err, store.ErrReplayRunning) {
		t.Errorf("a replay beside another: %v, want ErrReplayRunning", err)
	}
	if rep := run(t, st, true); rep.Valid != 1 {
		t.Errorf("a dry run beside a replay: %+v, want 1 valid", rep)
	}
	other, err := st.LockReplay(context.Background(), "medicat")
	if err != nil {
		t.Errorf("another EHR's replay lock: %v", err)
	} else {
		other()
	}
	unlock()
	if rep := run(t, st, false); rep.Written != 1 {
		t.Errorf("after the other replay: %+v, want 1 written", rep)
	}
}

// Entries whose content retention removed before anyone replayed them are
// counted in the report: appointments no replay can bring back, which an
// SRE must hear of rather than read "nothing to replay".
func TestReplayCountsContentDropped(t *testing.T) {
	st, _ := open(t)
	quarantine(t, st, "req-old", t0, entry("apt-1", "05/15/1990", "check"), entry("apt-2", "05/15/1990", "check"))
	// created_at is the database's now(): prune as of two days later.
	if _, ran, err := st.Prune(context.Background(), ehr, store.Retention{QuarantineContent: time.Hour},
		time.Now().Add(48*time.Hour)); err != nil || !ran {
		t.Fatalf("Prune: ran %v, %v", ran, err)
	}
	rep := run(t, st, false)
	if rep.Examined != 0 || rep.ContentDropped != 2 {
		t.Errorf("report %+v, want nothing examined and 2 entries whose content was dropped", rep)
	}
}

// A replay applies an old entry's appointment, but not its patient over a
// newer delivery's: pat-5 was changed since by a delivery naming another
// appointment, which the replayed entry must not roll back. A patient the
// replay is the first to name is made from it.
func TestReplayDoesNotRollPatientsBack(t *testing.T) {
	st, db := open(t)
	patient := func(raw json.RawMessage, id, name string) json.RawMessage {
		s := strings.Replace(string(raw), `"id":"pat-`, `"id":"`+id+`","x":"`, 1)
		return json.RawMessage(strings.Replace(s, `"Jane"`, `"`+name+`"`, 1))
	}
	quarantine(t, st, "req-old", t0,
		patient(entry("apt-5", "01/15/2026", "old"), "pat-5", "Old"),
		patient(entry("apt-7", "01/15/2026", "old"), "pat-7", "Only"))
	e, errs := replay.Validate(store.QuarantineRecord{Raw: patient(entry("apt-6", "05/15/1990", "new"), "pat-5", "New")}, chicago, t0)
	if errs != nil {
		t.Fatalf("the newer entry is invalid: %v", errs)
	}
	if _, err := st.Write(context.Background(), store.Batch{
		Delivery: store.Delivery{EHR: ehr, RequestID: "req-new", ReceivedAt: t0.Add(time.Hour),
			BodySHA256: sha256.Sum256([]byte("new")), ItemCount: 1, Outcome: store.OutcomeStored, StatusCode: 200},
		Entries: []payload.Entry{e},
	}); err != nil {
		t.Fatal(err)
	}
	if rep := run(t, st, false); rep.Written != 2 {
		t.Fatalf("report %+v, want both appointments written", rep)
	}
	for id, want := range map[string]string{"pat-5": "New", "pat-7": "Only"} {
		var name string
		if err := db.Get(&name, `SELECT first_name FROM patients WHERE ehr = $1 AND external_id = $2`, ehr, id); err != nil || name != want {
			t.Errorf("%s is %q (%v), want %q", id, name, err, want)
		}
	}
}

// A delivery sent again after its 200 was lost keeps its quarantined
// entries once: the replay examines and stores each once. The same entry
// arriving after the replay stored it is kept anew (the first copy is no
// longer pending), and replaying that one is a no-op by content hash.
func TestReplayAfterARetriedDelivery(t *testing.T) {
	st, db := open(t)
	valid, invalid := entry("apt-1", "01/15/2026", "check"), entry("apt-2", "12/24/2026", "too early")
	quarantine(t, st, "req-q", t0, valid, invalid)
	quarantine(t, st, "req-q", t0.Add(time.Minute), valid, invalid) // the retry
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries`); n != 2 {
		t.Fatalf("%d quarantined entries after the retry, want 2", n)
	}
	rep := run(t, st, false)
	if rep.Examined != 2 || rep.Valid != 1 || rep.Deliveries != 1 || rep.Written != 1 || rep.Duplicates != 0 || len(rep.StillInvalid) != 1 {
		t.Fatalf("replay: %+v, want 2 examined, 1 written, 1 still invalid", rep)
	}
	if n := count(t, db, `SELECT count(*) FROM appointment_history WHERE appointment_external_id = 'apt-1'`); n != 1 {
		t.Errorf("%d history rows of apt-1, want 1", n)
	}

	quarantine(t, st, "req-later", t0.Add(time.Hour), valid, invalid)
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries WHERE replayed_at IS NULL`); n != 2 {
		t.Errorf("%d pending entries after the same entries came again, want 2: the replayed one anew, the invalid one still once", n)
	}
	rep = run(t, st, false)
	if rep.Examined != 2 || rep.Valid != 1 || rep.Written != 0 || rep.Duplicates != 1 || len(rep.StillInvalid) != 1 {
		t.Errorf("second replay: %+v, want the entry stored before a duplicate, the invalid one still invalid", rep)
	}
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries WHERE replayed_at IS NULL`); n != 1 {
		t.Errorf("%d pending entries after the second replay, want the still-invalid one", n)
	}
}
