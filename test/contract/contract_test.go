package contract

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/auth"
)

const successBody = `{"message":"Appointments synced successfully","success":true,"code":200}`

func TestSpecExampleAndSingleObjectForm(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t), "--time-zone", "America/New_York")
	d := db(t, r.dbURL)

	a := r.post(specExample(t))
	expect(t, a, 200)
	if string(a.raw) != successBody {
		t.Fatalf("success body %s, want exactly %s", a.raw, successBody)
	}
	var (
		status, statusRaw, typ, patient, practitioner, location, encID, encReason, dept, reason string
		notes                                                                                   *string
		start, created                                                                          time.Time
		startDate                                                                               string
		duration                                                                                int
	)
	err := d.QueryRow(`SELECT status, status_raw, type, patient_external_id, practitioner_external_id, location_name,
		encounter_id, encounter_reason, department_id, reason, notes, start_time, created_time, start_date::text, duration_minutes
		FROM appointments WHERE ehr = $1 AND external_id = 'apt-12345'`, ehr).Scan(
		&status, &statusRaw, &typ, &patient, &practitioner, &location, &encID, &encReason, &dept, &reason, &notes,
		&start, &created, &startDate, &duration)
	if err != nil {
		t.Fatal(err)
	}
	got := []any{status, statusRaw, typ, patient, practitioner, location, encID, encReason, dept, reason, notes,
		start.UTC().Format(time.RFC3339), created.UTC().Format(time.RFC3339), startDate, duration}
	want := []any{"booked", "booked", "Follow-up", "pat-67890", "prov-111", "Main Clinic", "enc-999", "Post-surgery follow-up",
		"dept-01", "Post-surgery check", (*string)(nil), "2026-03-10T18:30:00Z", "2026-03-01T14:00:00Z", "2026-03-10", 30}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("appointment row mismatch (-want +got):\n%s", diff)
	}
	var first, middle, last, birth, gender, phone, email string
	if err := d.QueryRow(`SELECT first_name, middle_name, last_name, birth_date::text, gender, phone, email
		FROM patients WHERE ehr = $1 AND external_id = 'pat-67890'`, ehr).Scan(&first, &middle, &last, &birth, &gender, &phone, &email); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"Jane", "Marie", "Doe", "1990-05-15", "Female", "555-123-4567", "jane.doe@example.com"},
		[]string{first, middle, last, birth, gender, phone, email}); diff != "" {
		t.Errorf("patient row mismatch (-want +got):\n%s", diff)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM practitioners WHERE ehr = $1 AND external_id = 'prov-111' AND last_name = 'Smith'`, ehr); n != 1 {
		t.Errorf("practitioner rows: %d", n)
	}

	// The single-object form is a batch of one.
	single := entry(t, "apt-single", func(e map[string]any) { delete(e, "location"); delete(e, "encounter") })
	expect(t, r.post(mustJSON(t, single)), 200)
	if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id = 'apt-single' AND location_name IS NULL AND encounter_id IS NULL`); n != 1 {
		t.Errorf("single-object entry not stored with NULL optionals: %d rows", n)
	}
	// So is it with "appointments": null beside it, as serializers that
	// write every field of a class send it.
	single = entry(t, "apt-single-null", func(e map[string]any) { e["appointments"] = nil })
	expect(t, r.post(mustJSON(t, single)), 200)
	if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id = 'apt-single-null'`); n != 1 {
		t.Errorf("single-object entry beside a null appointments: %d rows", n)
	}
	// Its errors have paths without the array prefix.
	single = entry(t, "apt-single-bad", func(e map[string]any) { sub(e, "appointment")["start_time"] = "03/10/2026" })
	a = r.post(mustJSON(t, single))
	expect(t, a, 422)
	if diff := cmp.Diff([]string{"0 appointment.start_time: must be a date and time MM/DD/YYYY HH:MM (24-hour)"}, fieldsOf(a)); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'stored' AND status_code = 200 AND item_count = 1`); n != 3 {
		t.Errorf("stored deliveries: %d, want 3", n)
	}
}

// TestCheckOrder walks the check table of architecture.md, "The request's path": each request fails the check
// under test and every later one, and must get that check's answer.
func TestCheckOrder(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	r := startReceiver(t, dbURL, "--max-body-bytes", "3000", "--max-batch-size", "2")
	good := specExample(t)
	huge := bytes.Repeat([]byte(" "), 4000)
	badSig := withHeader("X-Webhook-Signature", "sha256="+strings.Repeat("0", 64))
	tests := []struct {
		name   string
		body   []byte
		opts   []reqOpt
		status int
		msg    string
	}{
		{"ehr not served", huge, []reqOpt{withPath("/v2/webhooks/medicat/sync-appointments"), withMethod("GET"),
			withHeader("Content-Type", "text/plain"), withoutHeader("X-API-Key")}, 404, "not found"},
		{"unknown path", good, []reqOpt{withPath("/v2/webhooks/nexus/other")}, 404, "not found"},
		{"trailing slash", good, []reqOpt{withPath("/v2/webhooks/nexus/sync-appointments/")}, 404, "not found"},
		{"root", good, []reqOpt{withPath("/")}, 404, "not found"},
		{"method GET", huge, []reqOpt{withMethod("GET"), withHeader("Content-Type", "text/plain"), withoutHeader("X-API-Key")}, 405, "method not allowed"},
		{"method PUT", good, []reqOpt{withMethod("PUT")}, 405, "method not allowed"},
		{"content type text/plain", huge, []reqOpt{withHeader("Content-Type", "text/plain"), withoutHeader("X-API-Key")}, 415, "Content-Type"},
		{"content type missing", good, []reqOpt{withoutHeader("Content-Type")}, 415, "Content-Type"},
		{"content type json-ish", good, []reqOpt{withHeader("Content-Type", "application/jsonp")}, 415, "Content-Type"},
		{"api key missing", huge, []reqOpt{withoutHeader("X-API-Key"), badSig}, 401, "X-API-Key"},
		{"api key wrong", huge, []reqOpt{withHeader("X-API-Key", apiKey+"x"), badSig}, 401, "X-API-Key"},
		// (429 has its own test: it needs a receiver with a low limit.)
		{"body too large", append(huge, good...), []reqOpt{badSig}, 413, "larger than 3000 bytes"},
		{"signature wrong", []byte("{"), []reqOpt{badSig}, 401, "does not match"},
		{"signature missing", []byte("{"), []reqOpt{withoutHeader("X-Webhook-Signature")}, 401, "sha256=<64 hex digits>"},
		{"signature with another secret", good, []reqOpt{withHeader("X-Webhook-Signature", auth.Sign([]byte("other"), good))}, 401, "does not match"},
		{"signature malformed", good, []reqOpt{withHeader("X-Webhook-Signature", "sha1=abc")}, 401, "sha256=<64 hex digits>"},
		{"malformed JSON", []byte(`{"appointments":[}`), nil, 400, "malformed JSON at byte offset 18"},
		{"trailing data", append(append([]byte{}, good...), []byte(" {}")...), nil, 400, "unexpected data after the JSON document"},
		{"empty body", []byte{}, nil, 400, "the body is empty"},
		{"byte order mark", append([]byte("\uFEFF"), good...), nil, 400, "byte order mark"},
		{"too many entries", batch(t, entry(t, "a", nil), entry(t, "b", nil), entry(t, "c", nil)), nil, 413, "at most 2"},
		{"neither form", []byte(`{"items":[]}`), nil, 422, "appointments array or an appointment object"},
		{"zero entries", []byte(`{"appointments":[]}`), nil, 422, "at least one entry"},
		{"invalid entry", batch(t, entry(t, "a", func(e map[string]any) { delete(e, "patient") })), nil, 422, "1 of 1 appointments are invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := tc.body
			a := r.post(body, tc.opts...)
			expect(t, a, tc.status)
			containsAll(t, a.body.Message, tc.msg)
			if tc.status == 405 && a.header.Get("Allow") != "POST" {
				t.Errorf("Allow = %q", a.header.Get("Allow"))
			}
		})
	}
	d := db(t, dbURL)
	if n := queryInt(t, d, `SELECT count(*) FROM appointments`); n != 0 {
		t.Errorf("%d appointments written by failing requests", n)
	}
	// Authenticated failures are in the delivery log; the others are not.
	got := failedDeliveries(t, d, 13, `SELECT count(*) FROM webhook_deliveries WHERE status_code <> 200`)
	if got != 13 { // 413 + 4×401 signature + 4×400 + 413 + 3×422
		t.Errorf("%d failed deliveries recorded, want 13", got)
	}
	if n := failedDeliveries(t, d, 4, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'bad_signature' AND status_code = 401`); n != 4 {
		t.Errorf("%d bad_signature deliveries, want 4", n)
	}

	t.Run("accepted variants", func(t *testing.T) {
		for i, opts := range [][]reqOpt{
			{withHeader("Content-Type", "application/json; charset=utf-8")},
			{withHeader("Content-Type", "Application/JSON")},
			{withHeader("X-Webhook-Signature", auth.Sign([]byte(prevSecret), good))},
			{withHeader("X-API-Key", prevAPIKey)}, // api-key-previous, during a key rotation
			{withHeader("X-Webhook-Signature", "sha256="+strings.ToUpper(auth.Sign([]byte(secret), good)[7:]))},
		} {
			if a := r.post(good, opts...); a.status != 200 {
				t.Errorf("variant %d: %d %s", i, a.status, a.raw)
			}
		}
	})
	t.Run("request id", func(t *testing.T) {
		a := r.post(good, withHeader("X-Request-ID", "ehr-req-42"))
		if got := a.header.Get("X-Request-ID"); got != "ehr-req-42" {
			t.Errorf("X-Request-ID = %q, want the caller's", got)
		}
		a1, a2 := r.post([]byte("{")), r.post(good, withPath("/nowhere"))
		if a1.header.Get("X-Request-ID") == a2.header.Get("X-Request-ID") {
			t.Error("generated request ids repeat")
		}
		if n := queryInt(t, d, `SELECT count(*) FROM webhook_deliveries WHERE request_id = 'ehr-req-42'`); n != 1 {
			t.Errorf("delivery with the caller's request id: %d rows", n)
		}
	})
}

// TestEveryMethodButPOST: webhook-api.md, check 2: any method but POST is a
// 405 with Allow: POST, not only the nine gin's Any registers; the {ehr}
// check still comes first.
func TestEveryMethodButPOST(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	good := specExample(t)
	want := r.post(good, withMethod("GET")) // a method the router knows: the reference answer
	expect(t, want, 405)
	if want.body.Message != "method not allowed; use POST" || want.header.Get("Allow") != "POST" {
		t.Fatalf("GET: %s, Allow %q", want.raw, want.header.Get("Allow"))
	}
	for _, m := range []string{"PROPFIND", "MKCOL", "BREW", "LIST"} {
		t.Run(m, func(t *testing.T) {
			a := r.post(good, withMethod(m))
			expect(t, a, 405)
			if string(a.raw) != string(want.raw) {
				t.Errorf("body %s, want %s", a.raw, want.raw)
			}
			if got := a.header.Get("Allow"); got != "POST" {
				t.Errorf("Allow = %q, want POST", got)
			}
			if ct := a.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
			if a.header.Get("X-Request-ID") == "" {
				t.Error("no X-Request-ID")
			}
			// Another EHR's path, or another path: 404, as with any method.
			for _, p := range []string{"/v2/webhooks/medicat/sync-appointments", "/v2/webhooks/nexus/sync-appointments/",
				"/v2/webhooks//sync-appointments", "/v2/webhooks/a/b/sync-appointments", "/v2/webhooks/nexus/other"} {
				a := r.post(good, withMethod(m), withPath(p))
				expect(t, a, 404)
				if a.body.Message != "not found" || a.header.Get("Allow") != "" {
					t.Errorf("%s %s: %s, Allow %q", m, p, a.raw, a.header.Get("Allow"))
				}
			}
		})
	}
	// None of them reached the store: 405 and 404 come before the API key.
	if n := queryInt(t, db(t, r.dbURL), `SELECT count(*) FROM webhook_deliveries`); n != 0 {
		t.Errorf("%d deliveries recorded", n)
	}
	logs := r.Log()
	if n := strings.Count(logs, `"outcome":"method_not_allowed"`); n != 5 {
		t.Errorf("%d log lines with outcome method_not_allowed, want 5:\n%s", n, logs)
	}
}

func TestRateLimit(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t), "--requests-per-second", "0.2", "--burst", "2", "--max-body-bytes", "100")
	good := mustJSON(t, entry(t, "rl", nil))
	huge := bytes.Repeat([]byte("x"), 200)
	for range 2 {
		if a := r.post(good, withHeader("Content-Type", "application/json"), withHeader("X-Webhook-Signature", "x")); a.status != 413 && a.status != 401 {
			t.Fatalf("within the burst: %d %s", a.status, a.raw)
		}
	}
	// Over the limit, with a body too large and a bad signature: 429 first.
	a := r.post(huge, withHeader("X-Webhook-Signature", "x"))
	expect(t, a, 429)
	if ra := a.header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After = %q", ra)
	}
	// Unauthenticated requests are refused before they spend the budget.
	expect(t, r.post(good, withoutHeader("X-API-Key")), 401)
}

func TestRequiredFields(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	required := map[string][]string{
		"appointment":  {"id", "status", "start_time", "start_date", "created_time", "type"},
		"patient":      {"id", "first_name", "last_name", "birth_date", "gender"},
		"practitioner": {"id", "first_name", "last_name"},
	}
	for obj, fields := range required {
		for _, f := range fields {
			for _, blank := range []any{nil, "   ", "\u200b\ufeff"} {
				e := entry(t, "req", func(e map[string]any) {
					if blank == nil {
						delete(sub(e, obj), f)
					} else {
						sub(e, obj)[f] = blank
					}
				})
				a := r.post(batch(t, entry(t, "ok", nil), e))
				expect(t, a, 422)
				msg := "is required"
				if blank != nil {
					msg = "must not be empty"
				}
				want := []string{"1 appointments[1]." + obj + "." + f + ": " + msg}
				if diff := cmp.Diff(want, fieldsOf(a)); diff != "" {
					t.Errorf("%s.%s %v: mismatch (-want +got):\n%s", obj, f, blank, diff)
				}
			}
		}
		e := entry(t, "req", func(e map[string]any) { delete(e, obj) })
		if a := r.post(batch(t, e)); a.status != 422 || fieldsOf(a)[0] != "0 appointments[0]."+obj+": is required" {
			t.Errorf("missing %s: %d %v", obj, a.status, fieldsOf(a))
		}
	}
	// An id that differs from another only in an invisible character is refused.
	for obj, id := range map[string]string{"appointment": "req-1\u200b", "patient": "\ufeffpat-1", "practitioner": "prov-\u00ad1"} {
		a := r.post(batch(t, entry(t, "ok", nil), entry(t, "req", func(e map[string]any) { sub(e, obj)["id"] = id })))
		expect(t, a, 422)
		want := []string{"1 appointments[1]." + obj + ".id: must not contain control or invisible characters (such as U+200B ZERO WIDTH SPACE)"}
		if diff := cmp.Diff(want, fieldsOf(a)); diff != "" {
			t.Errorf("%s.id: mismatch (-want +got):\n%s", obj, diff)
		}
	}
	// Optional parts may be absent.
	e := entry(t, "opt", func(e map[string]any) {
		delete(e, "location")
		delete(e, "encounter")
		delete(e, "department_id")
		for _, f := range []string{"duration", "reason", "notes"} {
			delete(sub(e, "appointment"), f)
		}
		for _, f := range []string{"middle_name", "phone", "email"} {
			delete(sub(e, "patient"), f)
		}
	})
	expect(t, r.post(batch(t, e)), 200)
}

func TestDatesAndTimes(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	tomorrow := time.Now().UTC().Add(48 * time.Hour).Format("01/02/2006")
	tests := []struct {
		field, value, message string
	}{
		{"patient.birth_date", "02/30/1990", "must be a real calendar date"},
		{"patient.birth_date", "1990-05-15", "must be a date MM/DD/YYYY"},
		{"patient.birth_date", "5/15/1990", "must be a date MM/DD/YYYY"},
		{"patient.birth_date", tomorrow, "must not be in the future"},
		{"appointment.start_date", "02/29/2026", "must be a real calendar date"},
		{"appointment.start_date", "03/11/2026", "must be the date of appointments[0].appointment.start_time"},
		{"appointment.start_time", "03/10/2026 2:30 PM", "must be a date and time MM/DD/YYYY HH:MM (24-hour)"},
		{"appointment.start_time", "03/10/2026 25:00", "must be a date and time MM/DD/YYYY HH:MM (24-hour)"},
		{"appointment.start_time", "03/10/2026", "must be a date and time MM/DD/YYYY HH:MM (24-hour)"},
		{"appointment.created_time", "04/31/2026 09:00", "must be a real calendar date"},
		{"appointment.duration", "1441", "must be a whole number of minutes from 0 to 1440"},
		{"appointment.duration", "thirty", "must be a whole number of minutes from 0 to 1440"},
		{"appointment.status", "postponed", "must be one of proposed, pending, booked, scheduled"},
	}
	for _, tc := range tests {
		obj, f, _ := strings.Cut(tc.field, ".")
		a := r.post(batch(t, entry(t, "d", func(e map[string]any) { sub(e, obj)[f] = tc.value })))
		expect(t, a, 422)
		if len(a.body.Errors) != 1 || a.body.Errors[0].Field != "appointments[0]."+tc.field ||
			!strings.HasPrefix(a.body.Errors[0].Message, tc.message) {
			t.Errorf("%s: got %v, want %q", tc.field, fieldsOf(a), tc.message)
		}
		if strings.Contains(string(a.raw), tc.value) {
			t.Errorf("%s: the answer echoes the value: %s", tc.field, a.raw)
		}
	}
}

func TestStatusAliases(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	d := db(t, r.dbURL)
	aliases := map[string]string{
		"proposed": "proposed", "pending": "pending",
		"booked": "booked", "Scheduled": "booked", "CONFIRMED": "booked", "rescheduled": "booked",
		"arrived": "arrived", "checked-in": "checked-in", "CheckedIn": "checked-in", "checked_in": "checked-in",
		"fulfilled": "fulfilled", "completed": "fulfilled", "Complete": "fulfilled",
		"cancelled": "cancelled", "canceled": "cancelled",
		"noshow": "noshow", "No-Show": "noshow", "no_show": "noshow", "No Show": "noshow",
		"entered-in-error": "entered-in-error", "deleted": "entered-in-error", " waitlist ": "waitlist",
	}
	var entries []map[string]any
	i := 0
	ids := map[string]string{}
	for word := range aliases {
		id := "st-" + string(rune('a'+i))
		i++
		ids[id] = word
		entries = append(entries, entry(t, id, func(e map[string]any) { sub(e, "appointment")["status"] = word }))
	}
	expect(t, r.post(batch(t, entries...)), 200)
	for id, word := range ids {
		var status, raw string
		if err := d.QueryRow(`SELECT status, status_raw FROM appointments WHERE external_id = $1`, id).Scan(&status, &raw); err != nil {
			t.Fatal(err)
		}
		if status != aliases[word] || raw != strings.TrimSpace(word) {
			t.Errorf("%q stored as %q/%q, want %q/%q", word, status, raw, aliases[word], strings.TrimSpace(word))
		}
	}
}

func TestAppointmentLifecycle(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	d := db(t, r.dbURL)
	version := func(status, start string) []byte {
		return batch(t, entry(t, "life", func(e map[string]any) {
			sub(e, "appointment")["status"] = status
			sub(e, "appointment")["start_time"] = start
			sub(e, "appointment")["start_date"] = start[:10]
		}))
	}
	state := func() string {
		var status string
		var start time.Time
		if err := d.QueryRow(`SELECT status, start_time FROM appointments WHERE external_id = 'life'`).Scan(&status, &start); err != nil {
			t.Fatal(err)
		}
		return status + " " + start.UTC().Format("2006-01-02T15:04")
	}
	history := func() int {
		return queryInt(t, d, `SELECT count(*) FROM appointment_history WHERE appointment_external_id = 'life'`)
	}

	booked := version("booked", "03/10/2026 14:30")
	expect(t, r.post(booked), 200)
	rescheduled := version("rescheduled", "03/12/2026 09:15")
	expect(t, r.post(rescheduled), 200)
	if got := state(); got != "booked 2026-03-12T09:15" {
		t.Errorf("after reschedule: %s", got)
	}
	expect(t, r.post(version("cancelled", "03/12/2026 09:15")), 200)
	if got := state(); got != "cancelled 2026-03-12T09:15" {
		t.Errorf("after cancel: %s", got)
	}
	noShow := version("no-show", "03/12/2026 09:15")
	expect(t, r.post(noShow), 200)
	if got := state(); got != "noshow 2026-03-12T09:15" {
		t.Errorf("after no-show: %s", got)
	}
	if h := history(); h != 4 {
		t.Errorf("history rows: %d, want 4", h)
	}
	// Redelivery of the latest and replay of an older version: 200, no change.
	expect(t, r.post(noShow), 200)
	expect(t, r.post(booked), 200)
	if got := state(); got != "noshow 2026-03-12T09:15" {
		t.Errorf("a replayed old version changed the appointment: %s", got)
	}
	if h := history(); h != 4 {
		t.Errorf("history rows after redeliveries: %d, want 4", h)
	}
}

func TestInvalidEntriesRejectAndQuarantine(t *testing.T) {
	mixed := func(t *testing.T) []byte {
		return batch(t,
			entry(t, "mix-0", nil),
			entry(t, "mix-1", func(e map[string]any) { sub(e, "patient")["birth_date"] = "02/30/1990" }),
			entry(t, "mix-2", nil),
			entry(t, "mix-3", func(e map[string]any) { delete(sub(e, "practitioner"), "id"); sub(e, "appointment")["status"] = "x" }),
		)
	}
	t.Run("Reject", func(t *testing.T) {
		r := startReceiver(t, pgtest.NewDatabase(t), "--on-invalid", "Reject")
		d := db(t, r.dbURL)
		a := r.post(mixed(t))
		expect(t, a, 422)
		if len(a.body.Errors) != 3 {
			t.Fatalf("errors: %v", fieldsOf(a))
		}
		want := []string{
			"1 appointments[1].patient.birth_date: must be a real calendar date",
			"3 appointments[3].appointment.status: " + a.body.Errors[1].Message,
			"3 appointments[3].practitioner.id: is required",
		}
		if diff := cmp.Diff(want, fieldsOf(a)); diff != "" {
			t.Errorf("mismatch (-want +got):\n%s", diff)
		}
		containsAll(t, a.body.Message, "2 of 4")
		if n := queryInt(t, d, `SELECT count(*) FROM appointments`) + queryInt(t, d, `SELECT count(*) FROM quarantined_entries`); n != 0 {
			t.Errorf("%d rows written by a rejected batch", n)
		}
		if n := failedDeliveries(t, d, 1, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'rejected' AND status_code = 422 AND item_count = 4`); n != 1 {
			t.Errorf("rejected delivery rows: %d", n)
		}
	})
	t.Run("Quarantine", func(t *testing.T) {
		r := startReceiver(t, pgtest.NewDatabase(t), "--on-invalid", "Quarantine")
		d := db(t, r.dbURL)
		body := mixed(t)
		a := r.post(body)
		expect(t, a, 200)
		if string(a.raw) != successBody {
			t.Errorf("body %s", a.raw)
		}
		if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id IN ('mix-0', 'mix-2')`); n != 2 {
			t.Errorf("valid entries written: %d, want 2", n)
		}
		if n := queryInt(t, d, `SELECT count(*) FROM appointments`); n != 2 {
			t.Errorf("appointments: %d, want 2", n)
		}
		rows, err := d.Query(`SELECT entry_index, raw, errors::text FROM quarantined_entries ORDER BY entry_index`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var idx []int
		for rows.Next() {
			var i int
			var raw []byte
			var errs string
			if err := rows.Scan(&i, &raw, &errs); err != nil {
				t.Fatal(err)
			}
			idx = append(idx, i)
			if !bytes.Contains(body, raw) || !bytes.Contains(raw, []byte(`"mix-`)) {
				t.Errorf("quarantined raw entry %d is not the entry as sent: %s", i, raw)
			}
			if !strings.Contains(errs, "appointments[") {
				t.Errorf("quarantined errors of %d: %s", i, errs)
			}
		}
		if diff := cmp.Diff([]int{1, 3}, idx); diff != "" {
			t.Errorf("quarantined indexes mismatch (-want +got):\n%s", diff)
		}
		if n := queryInt(t, d, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'quarantined' AND status_code = 200`); n != 1 {
			t.Errorf("quarantined delivery rows: %d", n)
		}

		// The same body again, as a sender does when the 200 was lost:
		// 200 again, its appointments no-ops and its invalid entries not
		// kept twice; the retry's log line counts all four items as
		// duplicates (docs/webhook-api.md, docs/operations.md "Logs").
		retry := r.post(body, withHeader("X-Request-ID", "quarantine-retry"))
		expect(t, retry, 200)
		if string(retry.raw) != successBody {
			t.Errorf("the retry's body %s", retry.raw)
		}
		if n := queryInt(t, d, `SELECT count(*) FROM quarantined_entries`); n != 2 {
			t.Errorf("%d quarantined entries after the same body again, want 2", n)
		}
		if n := queryInt(t, d, `SELECT count(*) FROM quarantined_entries q JOIN webhook_deliveries d ON d.id = q.delivery_id
			WHERE d.request_id = 'quarantine-retry'`); n != 0 {
			t.Errorf("%d quarantined entries refer to the retry, want 0: the first delivery's are kept", n)
		}
		if n := queryInt(t, d, `SELECT count(*) FROM webhook_deliveries WHERE outcome = 'quarantined' AND status_code = 200`); n != 2 {
			t.Errorf("quarantined delivery rows after the retry: %d, want 2", n)
		}
		// A new invalid entry beside one already held: only it is kept.
		other := batch(t,
			entry(t, "mix-3", func(e map[string]any) { delete(sub(e, "practitioner"), "id"); sub(e, "appointment")["status"] = "x" }),
			entry(t, "mix-4", func(e map[string]any) { sub(e, "patient")["birth_date"] = "02/30/1990" }),
		)
		expect(t, r.post(other, withHeader("X-Request-ID", "quarantine-other")), 200)
		if n := queryInt(t, d, `SELECT count(*) FROM quarantined_entries q JOIN webhook_deliveries d ON d.id = q.delivery_id
			WHERE d.request_id = 'quarantine-other' AND q.entry_index = 1`); n != 1 || queryInt(t, d, `SELECT count(*) FROM quarantined_entries`) != 3 {
			t.Errorf("the new invalid entry: %d rows of its own; %d in all, want 1 and 3", n, queryInt(t, d, `SELECT count(*) FROM quarantined_entries`))
		}

		_ = r.Stop()
		for id, want := range map[string]string{
			"quarantine-retry": `"written":0,"duplicates":4,"superseded":0,"quarantined":0`,
			"quarantine-other": `"written":0,"duplicates":1,"superseded":0,"quarantined":1`,
		} {
			var line string
			for _, l := range strings.Split(r.Log(), "\n") {
				if strings.Contains(l, `"request_id":"`+id+`"`) && strings.Contains(l, `"msg":"Request handled"`) {
					line = l
				}
			}
			if !strings.Contains(line, want) {
				t.Errorf("the log line of %s %q lacks %s", id, line, want)
			}
		}
	})
}

func TestSameAppointmentTwiceInABatch(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	d := db(t, r.dbURL)
	first := entry(t, "twice", func(e map[string]any) { sub(e, "appointment")["status"] = "booked" })
	last := entry(t, "twice", func(e map[string]any) { sub(e, "appointment")["status"] = "cancelled" })
	expect(t, r.post(batch(t, first, last)), 200)
	var status string
	if err := d.QueryRow(`SELECT status FROM appointments WHERE external_id = 'twice'`).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != "cancelled" {
		t.Errorf("status %q, want the last entry's", status)
	}
}

func TestTimeZoneAcrossDST(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t), "--time-zone", "America/New_York")
	d := db(t, r.dbURL)
	at := func(id, start string) map[string]any {
		return entry(t, id, func(e map[string]any) {
			sub(e, "appointment")["start_time"] = start
			sub(e, "appointment")["start_date"] = start[:10]
			sub(e, "appointment")["created_time"] = start
		})
	}
	expect(t, r.post(batch(t, at("est", "03/07/2026 10:00"), at("edt", "03/09/2026 10:00"), at("est2", "11/02/2026 10:00"))), 200)
	for id, want := range map[string]string{"est": "2026-03-07T15:00Z", "edt": "2026-03-09T14:00Z", "est2": "2026-11-02T15:00Z"} {
		var start, created time.Time
		if err := d.QueryRow(`SELECT start_time, created_time FROM appointments WHERE external_id = $1`, id).Scan(&start, &created); err != nil {
			t.Fatal(err)
		}
		if got := start.UTC().Format("2006-01-02T15:04Z"); got != want || !created.Equal(start) {
			t.Errorf("%s stored as %s (created %s), want %s", id, got, created.UTC(), want)
		}
	}
}

func TestValuesStoredVerbatim(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	d := db(t, r.dbURL)
	values := map[string]string{
		"first_name":  `O'Brien "Bob"`,
		"last_name":   `Robert'); DROP TABLE patients;--`,
		"middle_name": "Zoë 李 🙂 Ñandú",
		"email":       `a\b%_@example.com`,
	}
	e := entry(t, "verbatim", func(e map[string]any) {
		for k, v := range values {
			sub(e, "patient")[k] = v
		}
		sub(e, "appointment")["notes"] = "line1\nline2\t<b>&amp;</b> \\u0000 literal"
	})
	expect(t, r.post(batch(t, e)), 200)
	for k, want := range values {
		var got string
		if err := d.QueryRow(`SELECT ` + k + ` FROM patients WHERE external_id = 'pat-67890'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s stored as %q, want %q", k, got, want)
		}
	}
	var notes string
	if err := d.QueryRow(`SELECT notes FROM appointments WHERE external_id = 'verbatim'`).Scan(&notes); err != nil {
		t.Fatal(err)
	}
	if notes != "line1\nline2\t<b>&amp;</b> \\u0000 literal" {
		t.Errorf("notes stored as %q", notes)
	}
	if n := queryInt(t, d, `SELECT count(*) FROM patients`); n != 1 {
		t.Errorf("patients table: %d rows", n)
	}
}

// TestInvalidUTF8Refused: text that is not valid UTF-8, as raw bytes or as
// an unpaired \u surrogate, is answered 422 naming the field, and nothing
// of the batch is stored (encoding/json would have stored U+FFFD instead).
func TestInvalidUTF8Refused(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	d := db(t, r.dbURL)
	const mark = "\x01MARK"
	for _, tc := range []struct{ obj, key, value string }{
		{"patient", "first_name", "\"Ja\xffne\""},
		{"patient", "last_name", "\"\xc3\""},
		{"appointment", "notes", `"note \ud800"`},
		{"practitioner", "last_name", `"\udc00\ud83d"`},
		{"encounter", "reason", "\"\xed\xa0\x80\""},
	} {
		e := entry(t, "utf8", func(e map[string]any) { sub(e, tc.obj)[tc.key] = mark })
		body := bytes.Replace(batch(t, entry(t, "utf8-ok", nil), e), []byte(`"\u0001MARK"`), []byte(tc.value), 1)
		a := r.post(body)
		expect(t, a, 422)
		want := []string{"1 appointments[1]." + tc.obj + "." + tc.key + ": must be valid UTF-8 (no invalid bytes, no unpaired \\u surrogate escapes)"}
		if diff := cmp.Diff(want, fieldsOf(a)); diff != "" {
			t.Errorf("%s.%s = %q: mismatch (-want +got):\n%s", tc.obj, tc.key, tc.value, diff)
		}
	}
	if n := queryInt(t, d, `SELECT count(*) FROM appointments`); n != 0 {
		t.Errorf("%d appointments stored from refused batches, want 0", n)
	}
	// Valid text that is not ASCII, and U+FFFD sent as such, is stored as sent.
	e := entry(t, "utf8-ok", func(e map[string]any) { sub(e, "patient")["first_name"] = mark })
	body := bytes.Replace(batch(t, e), []byte(`"\u0001MARK"`), []byte(`"Zo\u00eb \ud83d\ude00 \ufffd"`), 1)
	expect(t, r.post(body), 200)
	var got string
	if err := d.QueryRow(`SELECT first_name FROM patients`).Scan(&got); err != nil || got != "Zoë 😀 \ufffd" {
		t.Errorf("first_name stored as %q (%v)", got, err)
	}
}
