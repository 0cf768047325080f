package store

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

func TestWriteSpecExampleStoresEveryColumn(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	e := specEntry()
	b := batch(e)
	res := mustWrite(t, s, b)
	if diff := cmp.Diff(Result{Written: 1}, res); diff != "" {
		t.Errorf("Result mismatch (-want +got):\n%s", diff)
	}

	wantAppt := appointmentRow{
		EHR: ehr, ExternalID: "apt-12345", PatientID: "pat-67890", PractitionerID: "prov-111",
		Status: "booked", StatusRaw: "booked",
		// 14:30 EDT (after the 8 March 2026 change) is 18:30 UTC.
		StartTime:   time.Date(2026, 3, 10, 18, 30, 0, 0, time.UTC),
		StartDate:   "2026-03-10",
		CreatedTime: time.Date(2026, 3, 1, 14, 0, 0, 0, time.UTC), // 09:00 EST
		Type:        "Follow-up", DurationMinutes: ptr(30), Reason: ptr("Post-surgery check"), Notes: nil,
		LocationName: ptr("Main Clinic"), EncounterID: ptr("enc-999"), EncounterReason: ptr("Post-surgery follow-up"),
		DepartmentID: ptr("dept-01"),
		ContentHash:  hashOf(t, e),
	}
	if diff := cmp.Diff(wantAppt, getAppointment(t, db, "apt-12345")); diff != "" {
		t.Errorf("appointment mismatch (-want +got):\n%s", diff)
	}
	wantPat := patientRow{EHR: ehr, ExternalID: "pat-67890", FirstName: "Jane", MiddleName: ptr("Marie"), LastName: "Doe",
		BirthDate: "1990-05-15", Gender: "Female", Phone: ptr("555-123-4567"), Email: ptr("jane.doe@example.com")}
	if diff := cmp.Diff(wantPat, getPatient(t, db, "pat-67890")); diff != "" {
		t.Errorf("patient mismatch (-want +got):\n%s", diff)
	}
	wantPra := practitionerRow{EHR: ehr, ExternalID: "prov-111", FirstName: "John", LastName: "Smith"}
	if diff := cmp.Diff(wantPra, getPractitioner(t, db, "prov-111")); diff != "" {
		t.Errorf("practitioner mismatch (-want +got):\n%s", diff)
	}
	wantHist := []historyRow{{Status: "booked", StartTime: wantAppt.StartTime, ContentHash: hashOf(t, e), RequestID: b.Delivery.RequestID}}
	if diff := cmp.Diff(wantHist, getHistory(t, db, "apt-12345")); diff != "" {
		t.Errorf("history mismatch (-want +got):\n%s", diff)
	}

	type deliveryRow struct {
		EHR        string    `db:"ehr"`
		RequestID  string    `db:"request_id"`
		ReceivedAt time.Time `db:"received_at"`
		BodySHA256 []byte    `db:"body_sha256"`
		ItemCount  int       `db:"item_count"`
		Outcome    string    `db:"outcome"`
		StatusCode int       `db:"status_code"`
	}
	var got deliveryRow
	if err := db.Get(&got, `SELECT ehr, request_id, received_at, body_sha256, item_count, outcome, status_code FROM webhook_deliveries`); err != nil {
		t.Fatal(err)
	}
	d := b.Delivery
	want := deliveryRow{EHR: d.EHR, RequestID: d.RequestID, ReceivedAt: d.ReceivedAt.UTC().Round(time.Microsecond),
		BodySHA256: d.BodySHA256[:], ItemCount: 1, Outcome: "stored", StatusCode: 200}
	got.ReceivedAt = got.ReceivedAt.UTC()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delivery mismatch (-want +got):\n%s", diff)
	}
}

func TestWriteOptionalFieldsAbsentAreNull(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	// A full row first, so the test also shows a snapshot clears fields.
	full := specEntry()
	full.Appointment.ID, full.Patient.ID = "apt-min", "pat-apt-min"
	mustWrite(t, s, batch(full))
	mustWrite(t, s, batch(minimalEntry("apt-min")))

	var nulls struct {
		Appt int `db:"appt"`
		Pat  int `db:"pat"`
	}
	if err := db.Get(&nulls, `SELECT
		(SELECT num_nulls(duration_minutes, reason, notes, location_name, encounter_id, encounter_reason, department_id)
		 FROM appointments WHERE external_id = 'apt-min') AS appt,
		(SELECT num_nulls(middle_name, phone, email) FROM patients WHERE external_id = 'pat-apt-min') AS pat`); err != nil {
		t.Fatal(err)
	}
	if nulls.Appt != 7 || nulls.Pat != 3 {
		t.Errorf("NULL optional columns: appointment %d of 7, patient %d of 3", nulls.Appt, nulls.Pat)
	}
}

// TestWriteChanges follows one appointment through the changes the spec
// lists, and checks idempotence and order-safety on the way.
func TestWriteChanges(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	booked := specEntry()
	rescheduled := specEntry()
	rescheduled.Appointment.StatusRaw = "Rescheduled"
	rescheduled.Appointment.Start = time.Date(2026, 3, 12, 9, 0, 0, 0, newYork)
	rescheduled.Appointment.StartDate = time.Date(2026, 3, 12, 0, 0, 0, 0, time.UTC)
	cancelled := rescheduled
	cancelled.Appointment.Status, cancelled.Appointment.StatusRaw = "cancelled", "Canceled"
	noshow := rescheduled
	noshow.Appointment.Status, noshow.Appointment.StatusRaw = "noshow", "No-Show"

	steps := []struct {
		name        string
		entry       payload.Entry
		want        Result
		wantStatus  string
		wantStart   time.Time
		wantHistory int
	}{
		{"booked", booked, Result{Written: 1}, "booked", time.Date(2026, 3, 10, 18, 30, 0, 0, time.UTC), 1},
		{"identical redelivery", booked, Result{Duplicates: 1}, "booked", time.Date(2026, 3, 10, 18, 30, 0, 0, time.UTC), 1},
		{"rescheduled", rescheduled, Result{Written: 1}, "booked", time.Date(2026, 3, 12, 13, 0, 0, 0, time.UTC), 2},
		{"replay of the older booking", booked, Result{Duplicates: 1}, "booked", time.Date(2026, 3, 12, 13, 0, 0, 0, time.UTC), 2},
		{"cancelled", cancelled, Result{Written: 1}, "cancelled", time.Date(2026, 3, 12, 13, 0, 0, 0, time.UTC), 3},
		{"replay of the reschedule", rescheduled, Result{Duplicates: 1}, "cancelled", time.Date(2026, 3, 12, 13, 0, 0, 0, time.UTC), 3},
		{"no-show", noshow, Result{Written: 1}, "noshow", time.Date(2026, 3, 12, 13, 0, 0, 0, time.UTC), 4},
		{"redelivery of the no-show", noshow, Result{Duplicates: 1}, "noshow", time.Date(2026, 3, 12, 13, 0, 0, 0, time.UTC), 4},
	}
	for _, st := range steps {
		res := mustWrite(t, s, batch(st.entry))
		if diff := cmp.Diff(st.want, res); diff != "" {
			t.Errorf("%s: Result mismatch (-want +got):\n%s", st.name, diff)
		}
		got := getAppointment(t, db, "apt-12345")
		if got.Status != st.wantStatus || !got.StartTime.Equal(st.wantStart) || string(got.ContentHash) != string(hashOf(t, lastApplied(steps, st.name))) {
			t.Errorf("%s: row has status %q start %v; want %q %v and the hash of the last applied entry",
				st.name, got.Status, got.StartTime, st.wantStatus, st.wantStart)
		}
		if n := len(getHistory(t, db, "apt-12345")); n != st.wantHistory {
			t.Errorf("%s: %d history rows, want %d", st.name, n, st.wantHistory)
		}
	}
	hist := getHistory(t, db, "apt-12345")
	var statuses []string
	for _, h := range hist {
		statuses = append(statuses, h.Status)
	}
	if diff := cmp.Diff([]string{"booked", "booked", "cancelled", "noshow"}, statuses); diff != "" {
		t.Errorf("history statuses mismatch (-want +got):\n%s", diff)
	}
}

// lastApplied is the entry of the last step up to name that wrote.
func lastApplied(steps []struct {
	name        string
	entry       payload.Entry
	want        Result
	wantStatus  string
	wantStart   time.Time
	wantHistory int
}, name string) payload.Entry {
	var e payload.Entry
	for _, st := range steps {
		if st.want.Written > 0 {
			e = st.entry
		}
		if st.name == name {
			break
		}
	}
	return e
}

func TestWriteSameAppointmentTwiceInBatchLastWins(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	first := specEntry()
	second := specEntry()
	second.Appointment.Status, second.Appointment.StatusRaw = "cancelled", "cancelled"
	second.Patient.Phone = ptr("555-000-0000")
	other := minimalEntry("apt-other")

	res := mustWrite(t, s, batch(first, other, second))
	if diff := cmp.Diff(Result{Written: 2, Duplicates: 1}, res); diff != "" {
		t.Errorf("Result mismatch (-want +got):\n%s", diff)
	}
	if got := getAppointment(t, db, "apt-12345"); got.Status != "cancelled" {
		t.Errorf("status %q, want the later entry's cancelled", got.Status)
	}
	if got := getPatient(t, db, "pat-67890"); got.Phone == nil || *got.Phone != "555-000-0000" {
		t.Error("patient row is not the later entry's")
	}
	if n := len(getHistory(t, db, "apt-12345")); n != 1 {
		t.Errorf("%d history rows, want 1 (the superseded entry is not applied)", n)
	}
}

// The patient and practitioner named by two appointments of one batch get
// the later entry's content, whichever appointment id sorts first.
func TestWriteSamePatientInTwoAppointmentsOfABatch(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	for _, ids := range [][2]string{{"apt-a", "apt-b"}, {"apt-z", "apt-y"}} {
		earlier, later := minimalEntry(ids[0]), minimalEntry(ids[1])
		earlier.Patient.ID, later.Patient.ID = "pat-"+ids[0], "pat-"+ids[0]
		earlier.Patient.Email, later.Patient.Email = ptr("earlier@example.com"), ptr("later@example.com")
		earlier.Practitioner.ID, later.Practitioner.ID = "prov-"+ids[0], "prov-"+ids[0]
		earlier.Practitioner.LastName, later.Practitioner.LastName = "Earlier", "Later"
		if res := mustWrite(t, s, batch(earlier, later)); res.Written != 2 {
			t.Fatalf("%v: Written %d, want 2", ids, res.Written)
		}
		if got := getPatient(t, db, "pat-"+ids[0]); got.Email == nil || *got.Email != "later@example.com" {
			t.Errorf("%v: patient row is not the later entry's", ids)
		}
		var last string
		if err := db.Get(&last, `SELECT last_name FROM practitioners WHERE external_id = $1`, "prov-"+ids[0]); err != nil || last != "Later" {
			t.Errorf("%v: practitioner %q (%v), want the later entry's", ids, last, err)
		}
	}
}

// The payload package reads MM/DD/YYYY HH:MM in the tenant's zone; across
// the 8 March 2026 change the UTC offset moves from -5 to -4 hours.
func TestWriteTimesAcrossDaylightSavingChange(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	tests := []struct {
		id        string
		local     time.Time
		startDate time.Time
		wantUTC   time.Time
	}{
		{"before", time.Date(2026, 3, 7, 23, 30, 0, 0, newYork), time.Date(2026, 3, 7, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 8, 4, 30, 0, 0, time.UTC)},
		{"just before", time.Date(2026, 3, 8, 1, 59, 0, 0, newYork), time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 8, 6, 59, 0, 0, time.UTC)},
		{"just after", time.Date(2026, 3, 8, 3, 0, 0, 0, newYork), time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC)},
		{"after", time.Date(2026, 3, 9, 0, 15, 0, 0, newYork), time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 9, 4, 15, 0, 0, time.UTC)},
	}
	var entries []payload.Entry
	for _, tc := range tests {
		e := minimalEntry(tc.id)
		e.Appointment.Start, e.Appointment.StartDate, e.Appointment.Created = tc.local, tc.startDate, tc.local
		entries = append(entries, e)
	}
	mustWrite(t, s, batch(entries...))
	for _, tc := range tests {
		got := getAppointment(t, db, tc.id)
		if !got.StartTime.Equal(tc.wantUTC) || !got.CreatedTime.Equal(tc.wantUTC) {
			t.Errorf("%s: start %v created %v, want %v", tc.id, got.StartTime, got.CreatedTime, tc.wantUTC)
		}
		if want := tc.startDate.Format(time.DateOnly); got.StartDate != want {
			t.Errorf("%s: start_date %s, want %s (the local calendar date)", tc.id, got.StartDate, want)
		}
	}
	// Read back in the tenant's zone, the wall clock is what was sent.
	var local string
	if err := db.Get(&local, `SELECT to_char(start_time AT TIME ZONE 'America/New_York', 'MM/DD/YYYY HH24:MI') FROM appointments WHERE external_id = 'just after'`); err != nil {
		t.Fatal(err)
	}
	if local != "03/08/2026 03:00" {
		t.Errorf("local wall clock %q, want 03/08/2026 03:00", local)
	}
}

func TestWriteStoresTextVerbatim(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	texts := []string{
		`O'Brien "the elder" \ backslash`,
		`'); DROP TABLE appointments; --`,
		`Robert'); DELETE FROM patients WHERE ('1'='1`,
		"Zoë Ñúñez 山田太郎 Σωκράτης 🙂",
		"line one\nline two\ttab",
		"{braces,commas} NULL \"quoted\"", // array-literal syntax inside values
		"NULL",
	}
	var entries []payload.Entry
	for i, text := range texts {
		e := minimalEntry(string(rune('a'+i)) + "-" + text) // in the key too
		e.Patient.ID = "pat-" + text
		e.Patient.LastName, e.Patient.MiddleName = text, ptr(text)
		e.Appointment.Notes, e.Appointment.Reason = ptr(text), ptr(text)
		e.LocationName = ptr(text)
		entries = append(entries, e)
	}
	mustWrite(t, s, batch(entries...))
	for i, text := range texts {
		id := string(rune('a'+i)) + "-" + text
		a := getAppointment(t, db, id)
		p := getPatient(t, db, "pat-"+text)
		got := []string{a.ExternalID, *a.Notes, *a.Reason, *a.LocationName, p.ExternalID, p.LastName, *p.MiddleName}
		want := []string{id, text, text, text, "pat-" + text, text, text}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("text %d mismatch (-want +got):\n%s", i, diff)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM appointments`); n != len(texts) {
		t.Errorf("%d appointments, want %d", n, len(texts))
	}
}

func TestWriteQuarantine(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	raw := []byte(`{"appointment": {"id": "apt-bad", "start_time": "13/45/2026 99:99"},  "patient": {"first_name": "Zoë"}}`)
	b := batch(minimalEntry("apt-good"))
	b.Delivery.Outcome, b.Delivery.ItemCount = "quarantined", 2
	b.Quarantined = []Quarantined{{
		Index: 1, Raw: raw,
		Errors: []payload.FieldError{{Index: 1, Field: "appointments[1].appointment.start_time", Message: "must be a date and time MM/DD/YYYY HH:MM"}},
	}}
	res := mustWrite(t, s, b)
	if diff := cmp.Diff(Result{Written: 1, Quarantined: 1}, res); diff != "" {
		t.Errorf("Result mismatch (-want +got):\n%s", diff)
	}
	var q struct {
		Index  int    `db:"entry_index"`
		Raw    []byte `db:"raw"`
		Errors string `db:"errors"`
		EHR    string `db:"ehr"`
	}
	if err := db.Get(&q, `SELECT entry_index, raw, errors::text, ehr FROM quarantined_entries`); err != nil {
		t.Fatal(err)
	}
	if q.Index != 1 || string(q.Raw) != string(raw) || q.EHR != ehr {
		t.Errorf("quarantined row: index %d ehr %q raw verbatim %v", q.Index, q.EHR, string(q.Raw) == string(raw))
	}
	if !strings.Contains(q.Errors, `"field": "appointments[1].appointment.start_time"`) {
		t.Errorf("errors column %s lacks the field error", q.Errors)
	}
}

func TestWriteOnlyQuarantinedEntries(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	b := batch()
	b.Delivery.Outcome, b.Delivery.ItemCount = "quarantined", 1
	b.Quarantined = []Quarantined{{Index: 0, Raw: []byte(`{}`), Errors: nil}}
	if res := mustWrite(t, s, b); res != (Result{Quarantined: 1}) {
		t.Errorf("Result %+v, want one quarantined", res)
	}
	if n := count(t, db, `SELECT count(*) FROM quarantined_entries WHERE errors = '[]'::jsonb`); n != 1 {
		t.Errorf("%d quarantined rows with empty errors, want 1", n)
	}
}

func TestWriteRefusesDeliveryWithoutEHR(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	b := batch(minimalEntry("x"))
	b.Delivery.EHR = ""
	if _, err := s.Write(context.Background(), b); err == nil {
		t.Fatal("Write accepted a delivery without an EHR")
	}
}

// The array arguments' text forms (TestWriteStoresTextVerbatim checks the
// same through PostgreSQL), also when a group's requests are joined.
func TestArrayLiterals(t *testing.T) {
	t.Parallel()
	str := func(s *string) string { return *s }
	opt := func(s **string) *string { return *s }
	for _, c := range []struct{ got, want string }{
		{arrayOf(text(str), `a"b`, `c\d`, "", "NULL", "{x,y}"), `{"a\"b","c\\d","","NULL","{x,y}"}`},
		{arrayOf(text(str)), `{}`},
		{arrayOf(optText(opt), ptr("x"), nil, ptr("")), `{"x",NULL,""}`},
		{arrayOf(optInteger(func(n **int) *int { return *n }), ptr(-5), nil, ptr(90)), `{-5,NULL,90}`},
		{arrayOf(integer(func(n *int64) int64 { return *n }), 7, -1), `{7,-1}`},
		{arrayOf(timestamptz(func(t *time.Time) time.Time { return *t }),
			time.Date(2026, 3, 10, 14, 30, 0, 5000, newYork), time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)),
			// In UTC: the column keeps the instant, not the zone.
			`{"2026-03-10T18:30:00.000005Z","2026-03-01T09:00:00Z"}`},
		{arrayOf(date(func(t *time.Time) time.Time { return *t }), time.Date(1990, 5, 15, 0, 0, 0, 0, time.UTC)), `{"1990-05-15"}`},
		{arrayOf(bytea(func(b *[]byte) []byte { return *b }), []byte{0, 0xff}, []byte{}), `{"\\x00ff","\\x"}`},
		// A group of one request passes its own literal.
		{arrayAlone(text(str), `a"b`, "", "NULL"), `{"a\"b","","NULL"}`},
		{arrayAlone(text(str)), `{}`},
		{arrayAlone(optInteger(func(n **int) *int { return *n }), ptr(-5), nil), `{-5,NULL}`},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
}

// arrayAlone is the argument of one array for rows, all one request's,
// alone in its group.
func arrayAlone[R any](enc encoder[R], rows ...R) string {
	a := arrays[R]{names: []string{"a"}, types: []string{enc.typ}, elems: []func([]byte, *R) []byte{enc.elem}}
	group := []*prepared{{entryRows: a.encode(rows, 16)}}
	return string(appendArrays(nil, group, 1, func(p *prepared) *elements { return &p.entryRows })[0].([]byte))
}

// arrayOf is the argument of one array for rows: the first two rows one
// request's, each other row a request of its own, and a request without
// rows after each.
func arrayOf[R any](enc encoder[R], rows ...R) string {
	a := arrays[R]{names: []string{"a"}, types: []string{enc.typ}, elems: []func([]byte, *R) []byte{enc.elem}}
	var group []*prepared
	for i := 0; i < len(rows); {
		n := 1
		if i == 0 && len(rows) > 1 {
			n = 2
		}
		group = append(group, &prepared{entryRows: a.encode(rows[i:i+n], 16)}, &prepared{entryRows: a.encode(nil, 16)})
		i += n
	}
	return string(appendArrays(nil, group, 1, func(p *prepared) *elements { return &p.entryRows })[0].([]byte))
}

// Times go to PostgreSQL in UTC (columns.go): the latest time validation
// accepts in a zone west of Greenwich is in year 10000 there, and the
// earliest east of it in year 999; both must be stored as the same
// instants.
func TestWriteKeepsInstantsAtTheYearBounds(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	tokyo := mustZone("Asia/Tokyo")
	late := minimalEntry("apt-late")
	late.Appointment.Start = time.Date(9999, 12, 31, 23, 30, 0, 0, newYork)
	late.Appointment.StartDate = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	early := minimalEntry("apt-early")
	early.Appointment.Start = time.Date(1000, 1, 1, 0, 30, 0, 0, tokyo)
	early.Appointment.StartDate = time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC)
	mustWrite(t, s, batch(late, early))
	for _, e := range []payload.Entry{late, early} {
		if got := getAppointment(t, db, e.Appointment.ID).StartTime; !got.Equal(e.Appointment.Start) {
			t.Errorf("%s: start_time %s, want %s", e.Appointment.ID, got, e.Appointment.Start)
		}
	}
}

// TestSimpleStatementWritesAsTheFullOne: groups that writeSimpleSQL may
// write (no quarantined, replayed or older versions) leave every table and
// every answer as writeSQL leaves them: new appointments, a change, a
// redelivery, the same appointment twice in a batch, a patient changed.
func TestSimpleStatementWritesAsTheFullOne(t *testing.T) {
	t.Parallel()
	changed := minimalEntry("a")
	changed.Appointment.Status, changed.Appointment.StatusRaw = "cancelled", "Cancelled"
	retyped := minimalEntry("c")
	retyped.Appointment.Type = "Follow-up"
	renamed := minimalEntry("b")
	renamed.Patient.LastName = "Li"
	// Two requests naming one patient differently, the later in the
	// group received first; and a request received before the versions
	// stored above (as if it had waited in the queue meanwhile).
	shared1, shared2 := minimalEntry("e"), minimalEntry("f")
	shared1.Patient.ID, shared2.Patient.ID = "pat-shared", "pat-shared"
	shared2.Patient.FirstName = "Bea"
	late, early := batch(shared1), batch(shared2)
	early.Delivery.ReceivedAt = late.Delivery.ReceivedAt.Add(-time.Millisecond)
	stale := changed
	stale.Appointment.Status, stale.Appointment.StatusRaw = "no-show", "No Show"
	old := batch(stale, renamed)
	old.Delivery.ReceivedAt = old.Delivery.ReceivedAt.Add(-time.Hour)
	groups := [][]Batch{
		{batch(specEntry()), batch(minimalEntry("a"), minimalEntry("b"))},
		{batch(changed), batch(specEntry())},
		{batch(minimalEntry("c"), retyped)},
		{batch(renamed), batch(minimalEntry("d")), batch(changed)},
		{late, early},
		{old},
	}
	dump := func(db *sqlx.DB) []string {
		var rows []string
		for _, q := range []string{
			`SELECT ` + appointmentCols + `, delivery_id FROM appointments ORDER BY external_id`,
			`SELECT ehr, external_id, first_name, middle_name, last_name, birth_date, gender, phone, email, version_received_at FROM patients ORDER BY external_id`,
			`SELECT ehr, external_id, first_name, last_name, version_received_at FROM practitioners ORDER BY external_id`,
			`SELECT ehr, appointment_external_id, status, start_time, content_hash, delivery_id, version_received_at, superseded FROM appointment_history ORDER BY id`,
			`SELECT ehr, request_id, received_at, item_count FROM webhook_deliveries ORDER BY id`,
		} {
			var got []string
			if err := db.Select(&got, `SELECT row_to_json(r)::text FROM (`+q+`) r`); err != nil {
				t.Fatal(err)
			}
			rows = append(rows, got...)
		}
		return rows
	}
	var dumps [2][]string
	for i, simple := range []bool{true, false} {
		s, db := newStore(t)
		for g, bs := range groups {
			group := make([]*request, len(bs))
			for k, b := range bs {
				group[k] = queued(t, b)
				if !group[k].p.simple {
					t.Fatalf("group %d, batch %d is not simple", g, k)
				}
				group[k].p.simple = simple
			}
			out := make([]outcome, len(group))
			if err := s.writeGroup(context.Background(), group, out); err != nil {
				t.Fatal(err)
			}
			dumps[i] = append(dumps[i], fmt.Sprintf("group %d: %+v", g, out))
		}
		dumps[i] = append(dumps[i], dump(db)...)
	}
	if diff := cmp.Diff(dumps[1], dumps[0]); diff != "" {
		t.Errorf("the simple statement wrote otherwise (-full +simple):\n%s", diff)
	}
}
