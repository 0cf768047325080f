package payload

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the zones below on a machine without /usr/share/zoneinfo

	"github.com/google/go-cmp/cmp"
)

// specExample is the spec's "Full request example", verbatim.
const specExample = `{ "appointments": [ { "appointment": { "id": "apt-12345", "status": "booked", "start_time": "03/10/2026 14:30", "start_date": "03/10/2026", "created_time": "03/01/2026 09:00", "duration": "30", "type": "Follow-up", "reason": "Post-surgery check", "notes": "" }, "patient": { "id": "pat-67890", "first_name": "Jane", "middle_name": "Marie", "last_name": "Doe", "birth_date": "05/15/1990", "gender": "Female", "phone": "555-123-4567", "email": "jane.doe@example.com" }, "practitioner": { "id": "prov-111", "first_name": "John", "last_name": "Smith" }, "location": { "name": "Main Clinic" }, "encounter": { "id": "enc-999", "reason": "Post-surgery follow-up" }, "department_id": "dept-01" } ] }`

var (
	newYork = mustZone("America/New_York")
	now     = time.Date(2026, 3, 5, 12, 0, 0, 0, time.UTC)
)

func mustZone(name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return loc
}

func ptr[T any](v T) *T { return &v }

// validateOne validates one item as Validate does.
func validateOne(it Item, loc *time.Location, now time.Time) (Entry, []FieldError) {
	return new(scanReader).validate(it, loc, now)
}

func TestDecodeSpecExample(t *testing.T) {
	items, rerr := Decode([]byte(specExample), 1000)
	if rerr != nil {
		t.Fatalf("Decode: %v", rerr)
	}
	valid, invalid := Validate(items, newYork, now)
	if len(invalid) != 0 {
		t.Fatalf("unexpected errors: %+v", invalid)
	}
	want := []Entry{{
		Appointment: Appointment{
			ID: "apt-12345", Status: "booked", StatusRaw: "booked",
			Start:           time.Date(2026, 3, 10, 14, 30, 0, 0, newYork),
			StartDate:       time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC),
			Created:         time.Date(2026, 3, 1, 9, 0, 0, 0, newYork),
			Type:            "Follow-up",
			DurationMinutes: ptr(30),
			Reason:          ptr("Post-surgery check"),
			Notes:           nil, // sent empty
		},
		Patient: Patient{
			ID: "pat-67890", FirstName: "Jane", MiddleName: ptr("Marie"), LastName: "Doe",
			BirthDate: time.Date(1990, 5, 15, 0, 0, 0, 0, time.UTC), Gender: "Female",
			Phone: ptr("555-123-4567"), Email: ptr("jane.doe@example.com"),
		},
		Practitioner:    Practitioner{ID: "prov-111", FirstName: "John", LastName: "Smith"},
		LocationName:    ptr("Main Clinic"),
		EncounterID:     ptr("enc-999"),
		EncounterReason: ptr("Post-surgery follow-up"),
		DepartmentID:    ptr("dept-01"),
	}}
	if diff := cmp.Diff(want, valid); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
	// 14:30 EDT is 18:30 UTC: daylight time started on 03/08/2026.
	if got := valid[0].Appointment.Start.UTC().Hour(); got != 18 {
		t.Errorf("start in UTC: hour %d, want 18", got)
	}
	if !json.Valid(items[0].Raw) || !strings.HasPrefix(string(items[0].Raw), `{ "appointment"`) {
		t.Errorf("raw entry not kept as sent: %s", items[0].Raw)
	}
}

func TestDecode(t *testing.T) {
	entry := `{"appointment":{}}`
	tests := []struct {
		name      string
		body      string
		max       int
		wantItems int
		wantPath  string
		status    int
		message   string
	}{
		{name: "array form", body: `{"appointments":[` + entry + `,` + entry + `]}`, max: 2, wantItems: 2, wantPath: "appointments[1]"},
		{name: "single form", body: `{"appointment":{"id":"x"},"patient":{}}`, max: 1, wantItems: 1, wantPath: ""},
		{name: "surrounding white space", body: " \n" + `{"appointments":[1]}` + "\r\n\t", max: 5, wantItems: 1, wantPath: "appointments[0]"},
		{name: "both forms", body: `{"appointment":{},"appointments":[1,2]}`, max: 5, status: 422, message: "body holds both an appointments array and an appointment object: send one of the two forms"},
		{name: "array beside a null appointment", body: `{"appointment":null,"appointments":[1,2]}`, max: 5, wantItems: 2, wantPath: "appointments[1]"},
		{name: "single form beside a null appointments", body: `{"appointments":null,"appointment":{"id":"x"}}`, max: 1, wantItems: 1, wantPath: ""},
		{name: "empty body", body: ``, max: 5, status: 400, message: "malformed JSON: the body is empty"},
		{name: "white space only", body: "  ", max: 5, status: 400, message: "malformed JSON: unexpected end of the body at byte offset 2"},
		{name: "syntax error offset", body: `{"appointments":[}`, max: 5, status: 400, message: "malformed JSON at byte offset 18"},
		{name: "byte order mark", body: "\uFEFF" + `{"appointments":[1]}`, max: 5, status: 400, message: "malformed JSON: the body starts with a UTF-8 byte order mark (EF BB BF); send the JSON without it"},
		{name: "truncated", body: `{"appointments":[`, max: 5, status: 400, message: "malformed JSON: unexpected end of the body at byte offset 17"},
		{name: "trailing document", body: `{"appointments":[1]} {"appointments":[1]}`, max: 5, status: 400, message: "malformed JSON: unexpected data after the JSON document at byte offset 21"},
		{name: "trailing garbage", body: `{"appointments":[1]}x`, max: 5, status: 400, message: "malformed JSON: unexpected data after the JSON document at byte offset 20"},
		{name: "zero entries", body: `{"appointments":[]}`, max: 5, status: 422, message: "appointments must contain at least one entry"},
		{name: "too many entries", body: `{"appointments":[1,2,3]}`, max: 2, status: 413, message: "appointments has 3 entries; at most 2 are accepted per request"},
		{name: "appointments not an array", body: `{"appointments":{}}`, max: 5, status: 422, message: "appointments must be an array"},
		{name: "appointments null", body: `{"appointments":null}`, max: 5, status: 422, message: "appointments must be an array"},
		{name: "neither key", body: `{"appointmentz":[]}`, max: 5, status: 422, message: "body must be a JSON object with an appointments array or an appointment object"},
		{name: "top-level array", body: `[` + entry + `]`, max: 5, status: 422, message: "body must be a JSON object with an appointments array or an appointment object"},
		{name: "top-level string", body: `"appointments"`, max: 5, status: 422, message: "body must be a JSON object with an appointments array or an appointment object"},
		{name: "top-level null", body: `null`, max: 5, status: 422, message: "body must be a JSON object with an appointments array or an appointment object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			items, rerr := Decode([]byte(tc.body), tc.max)
			if tc.status != 0 {
				if rerr == nil {
					t.Fatalf("Decode = %d items, want status %d", len(items), tc.status)
				}
				if rerr.Status != tc.status || rerr.Message != tc.message {
					t.Fatalf("Decode error = %d %q, want %d %q", rerr.Status, rerr.Message, tc.status, tc.message)
				}
				return
			}
			if rerr != nil {
				t.Fatalf("Decode: %v", rerr)
			}
			if len(items) != tc.wantItems || items[len(items)-1].Path != tc.wantPath {
				t.Fatalf("Decode = %+v, want %d items, last path %q", items, tc.wantItems, tc.wantPath)
			}
		})
	}
}

// entryMap returns the spec example's entry as a mutable map.
func entryMap(t *testing.T) map[string]any {
	t.Helper()
	var top struct{ Appointments []map[string]any }
	if err := json.Unmarshal([]byte(specExample), &top); err != nil {
		t.Fatal(err)
	}
	return top.Appointments[0]
}

func sub(m map[string]any, key string) map[string]any { return m[key].(map[string]any) }

func TestValidateFieldErrors(t *testing.T) {
	long := func(n int) string { return strings.Repeat("é", n) }
	tests := []struct {
		name   string
		mutate func(e map[string]any)
		want   []FieldError // Index is always 3 and Field is under appointments[3]
	}{
		{"missing appointment", func(e map[string]any) { delete(e, "appointment") },
			[]FieldError{{Field: "appointment", Message: "is required"}}},
		{"appointment not an object", func(e map[string]any) { e["appointment"] = []any{} },
			[]FieldError{{Field: "appointment", Message: "must be an object"}}},
		{"missing patient and practitioner", func(e map[string]any) { delete(e, "patient"); e["practitioner"] = nil },
			[]FieldError{{Field: "patient", Message: "is required"}, {Field: "practitioner", Message: "is required"}}},
		{"optional objects absent or null", func(e map[string]any) {
			delete(e, "location")
			e["encounter"] = nil
			delete(e, "department_id")
		}, nil},
		{"location not an object", func(e map[string]any) { e["location"] = "Main Clinic" },
			[]FieldError{{Field: "location", Message: "must be an object"}}},
		{"every required appointment field missing", func(e map[string]any) { e["appointment"] = map[string]any{} },
			[]FieldError{
				{Field: "appointment.id", Message: "is required"},
				{Field: "appointment.type", Message: "is required"},
				{Field: "appointment.status", Message: "is required"},
				{Field: "appointment.start_time", Message: "is required"},
				{Field: "appointment.created_time", Message: "is required"},
				{Field: "appointment.start_date", Message: "is required"},
			}},
		{"every required patient field missing", func(e map[string]any) { e["patient"] = map[string]any{"phone": "1"} },
			[]FieldError{
				{Field: "patient.id", Message: "is required"},
				{Field: "patient.first_name", Message: "is required"},
				{Field: "patient.last_name", Message: "is required"},
				{Field: "patient.gender", Message: "is required"},
				{Field: "patient.birth_date", Message: "is required"},
			}},
		{"every required practitioner field missing", func(e map[string]any) { e["practitioner"] = map[string]any{} },
			[]FieldError{
				{Field: "practitioner.id", Message: "is required"},
				{Field: "practitioner.first_name", Message: "is required"},
				{Field: "practitioner.last_name", Message: "is required"},
			}},
		{"blank required strings", func(e map[string]any) {
			sub(e, "appointment")["id"] = "   "
			sub(e, "patient")["last_name"] = ""
			sub(e, "practitioner")["first_name"] = "\t\n"
		}, []FieldError{
			{Field: "appointment.id", Message: "must not be empty"},
			{Field: "patient.last_name", Message: "must not be empty"},
			{Field: "practitioner.first_name", Message: "must not be empty"},
		}},
		{"invisible-only strings are blank", func(e map[string]any) {
			sub(e, "patient")["first_name"] = "\u200b"
			sub(e, "practitioner")["last_name"] = " \ufeff\u00ad "
			sub(e, "patient")["middle_name"] = "\u2060" // optional: stored as empty
		}, []FieldError{
			{Field: "patient.first_name", Message: "must not be empty"},
			{Field: "practitioner.last_name", Message: "must not be empty"},
		}},
		{"ids with control or invisible characters", func(e map[string]any) {
			sub(e, "appointment")["id"] = "apt-1\u200b"
			sub(e, "patient")["id"] = "\ufeffpat-1"
			sub(e, "practitioner")["id"] = "prov\u0001-1"
			sub(e, "encounter")["id"] = "enc-\u202e1"
			e["department_id"] = "dept\x7f"
		}, []FieldError{
			{Field: "appointment.id", Message: msgHidden},
			{Field: "patient.id", Message: msgHidden},
			{Field: "practitioner.id", Message: msgHidden},
			{Field: "encounter.id", Message: msgHidden},
			{Field: "department_id", Message: msgHidden},
		}},
		{"names may hold joiners; ids may hold spaces", func(e map[string]any) {
			sub(e, "patient")["first_name"] = "\u0915\u094d\u200d\u0937" // क्‍ष, a joiner inside
			sub(e, "appointment")["id"] = "apt 1\u00a02"
		}, nil},
		{"wrong JSON types", func(e map[string]any) {
			sub(e, "appointment")["id"] = 12345
			sub(e, "patient")["gender"] = true
			sub(e, "patient")["phone"] = []any{"1"}
			sub(e, "location")["name"] = map[string]any{}
			e["department_id"] = 1
		}, []FieldError{
			{Field: "appointment.id", Message: "must be a string"},
			{Field: "patient.gender", Message: "must be a string"},
			{Field: "patient.phone", Message: "must be a string"},
			{Field: "location.name", Message: "must be a string"},
			{Field: "department_id", Message: "must be a string"},
		}},
		{"single-digit month", func(e map[string]any) { sub(e, "patient")["birth_date"] = "5/15/1990" },
			[]FieldError{{Field: "patient.birth_date", Message: "must be a date MM/DD/YYYY"}}},
		{"ISO date", func(e map[string]any) { sub(e, "appointment")["start_date"] = "2026-03-10" },
			[]FieldError{{Field: "appointment.start_date", Message: "must be a date MM/DD/YYYY"}}},
		{"impossible date 02/30", func(e map[string]any) { sub(e, "patient")["birth_date"] = "02/30/1990" },
			[]FieldError{{Field: "patient.birth_date", Message: "must be a real calendar date"}}},
		{"month 13", func(e map[string]any) { sub(e, "patient")["birth_date"] = "13/01/1990" },
			[]FieldError{{Field: "patient.birth_date", Message: "must be a real calendar date"}}},
		{"02/29 outside a leap year", func(e map[string]any) { sub(e, "patient")["birth_date"] = "02/29/1990" },
			[]FieldError{{Field: "patient.birth_date", Message: "must be a real calendar date"}}},
		{"02/29 in a leap year", func(e map[string]any) { sub(e, "patient")["birth_date"] = "02/29/1992" }, nil},
		{"year out of range", func(e map[string]any) { sub(e, "patient")["birth_date"] = "01/01/0000" },
			[]FieldError{{Field: "patient.birth_date", Message: "year must be from 1800 to 9999"}}},
		{"birth date in the future", func(e map[string]any) { sub(e, "patient")["birth_date"] = "03/06/2026" },
			[]FieldError{{Field: "patient.birth_date", Message: "must not be in the future"}}},
		{"birth date today", func(e map[string]any) { sub(e, "patient")["birth_date"] = "03/05/2026" }, nil},
		{"12-hour time", func(e map[string]any) { sub(e, "appointment")["start_time"] = "03/10/2026 2:30 PM" },
			[]FieldError{{Field: "appointment.start_time", Message: "must be a date and time MM/DD/YYYY HH:MM (24-hour)"}}},
		{"hour 24", func(e map[string]any) { sub(e, "appointment")["created_time"] = "03/01/2026 24:00" },
			[]FieldError{{Field: "appointment.created_time", Message: "must be a date and time MM/DD/YYYY HH:MM (24-hour)"}}},
		{"minute 60", func(e map[string]any) { sub(e, "appointment")["created_time"] = "03/01/2026 09:60" },
			[]FieldError{{Field: "appointment.created_time", Message: "must be a date and time MM/DD/YYYY HH:MM (24-hour)"}}},
		{"date without time", func(e map[string]any) { sub(e, "appointment")["start_time"] = "03/10/2026" },
			[]FieldError{{Field: "appointment.start_time", Message: "must be a date and time MM/DD/YYYY HH:MM (24-hour)"}}},
		{"impossible start_time date", func(e map[string]any) { sub(e, "appointment")["start_time"] = "04/31/2026 10:00" },
			[]FieldError{{Field: "appointment.start_time", Message: "must be a real calendar date"}}},
		{"start_date is not the date of start_time", func(e map[string]any) { sub(e, "appointment")["start_date"] = "03/11/2026" },
			[]FieldError{{Field: "appointment.start_date", Message: "must be the date of appointments[3].appointment.start_time"}}},
		{"unknown status", func(e map[string]any) { sub(e, "appointment")["status"] = "postponed" },
			[]FieldError{{Field: "appointment.status", Message: "must be one of proposed, pending, booked, scheduled, confirmed, rescheduled, arrived, checked-in, checkedin, fulfilled, completed, complete, cancelled, canceled, noshow, no-show, entered-in-error, deleted, waitlist (case-insensitive; a space or _ may stand for -)"}}},
		{"duration as a JSON integer", func(e map[string]any) { sub(e, "appointment")["duration"] = 45 }, nil},
		{"duration 0 and blank ok", func(e map[string]any) { sub(e, "appointment")["duration"] = "0" }, nil},
		{"duration 1440", func(e map[string]any) { sub(e, "appointment")["duration"] = "1440" }, nil},
		{"duration 1441", func(e map[string]any) { sub(e, "appointment")["duration"] = "1441" },
			[]FieldError{{Field: "appointment.duration", Message: "must be a whole number of minutes from 0 to 1440"}}},
		{"duration negative", func(e map[string]any) { sub(e, "appointment")["duration"] = "-5" },
			[]FieldError{{Field: "appointment.duration", Message: "must be a whole number of minutes from 0 to 1440"}}},
		{"duration fraction", func(e map[string]any) { sub(e, "appointment")["duration"] = 30.5 },
			[]FieldError{{Field: "appointment.duration", Message: "must be a whole number of minutes from 0 to 1440"}}},
		{"duration words", func(e map[string]any) { sub(e, "appointment")["duration"] = "30 min" },
			[]FieldError{{Field: "appointment.duration", Message: "must be a whole number of minutes from 0 to 1440"}}},
		{"duration boolean", func(e map[string]any) { sub(e, "appointment")["duration"] = false },
			[]FieldError{{Field: "appointment.duration", Message: "must be a whole number of minutes from 0 to 1440"}}},
		{"lengths at the bound", func(e map[string]any) {
			sub(e, "patient")["first_name"] = long(255)
			sub(e, "appointment")["reason"] = long(1000)
			sub(e, "appointment")["notes"] = long(10000)
			sub(e, "encounter")["reason"] = long(1000)
		}, nil},
		{"lengths over the bound", func(e map[string]any) {
			sub(e, "patient")["first_name"] = long(256)
			sub(e, "practitioner")["id"] = long(256)
			sub(e, "appointment")["reason"] = long(1001)
			sub(e, "appointment")["notes"] = long(10001)
			sub(e, "encounter")["reason"] = long(1001)
		}, []FieldError{
			{Field: "appointment.reason", Message: "must be at most 1000 characters"},
			{Field: "appointment.notes", Message: "must be at most 10000 characters"},
			{Field: "patient.first_name", Message: "must be at most 255 characters"},
			{Field: "practitioner.id", Message: "must be at most 255 characters"},
			{Field: "encounter.reason", Message: "must be at most 1000 characters"},
		}},
		{"NUL character", func(e map[string]any) { sub(e, "appointment")["notes"] = "a\x00b" },
			[]FieldError{{Field: "appointment.notes", Message: "must not contain NUL characters"}}},
		{"unknown fields ignored", func(e map[string]any) {
			e["extra"] = map[string]any{"x": 1}
			sub(e, "patient")["ssn"] = 123
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := entryMap(t)
			tc.mutate(e)
			raw, err := json.Marshal(e)
			if err != nil {
				t.Fatal(err)
			}
			_, got := validateOne(Item{Index: 3, Path: "appointments[3]", Raw: raw}, newYork, now)
			var want []FieldError
			for _, fe := range tc.want {
				want = append(want, FieldError{Index: 3, Field: "appointments[3]." + fe.Field, Message: fe.Message})
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestValidateEntryNotAnObject(t *testing.T) {
	items, rerr := Decode([]byte(`{"appointments":[42,"x",null,[]]}`), 10)
	if rerr != nil {
		t.Fatal(rerr)
	}
	_, invalid := Validate(items, time.UTC, now)
	var got []FieldError
	for _, inv := range invalid {
		got = append(got, inv.Errors...)
	}
	want := []FieldError{
		{Index: 0, Field: "appointments[0]", Message: "must be an object"},
		{Index: 1, Field: "appointments[1]", Message: "must be an object"},
		{Index: 2, Field: "appointments[2]", Message: "is required"},
		{Index: 3, Field: "appointments[3]", Message: "must be an object"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

func TestValidateSingleFormPaths(t *testing.T) {
	e := entryMap(t)
	sub(e, "appointment")["start_time"] = "03/10/2026"
	raw, _ := json.Marshal(e)
	items, rerr := Decode(raw, 1)
	if rerr != nil {
		t.Fatal(rerr)
	}
	_, invalid := Validate(items, time.UTC, now)
	want := []Invalid{{Item: items[0], Errors: []FieldError{{Index: 0, Field: "appointment.start_time", Message: msgDateTime}}}}
	if diff := cmp.Diff(want, invalid); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

func TestValidateMixedBatch(t *testing.T) {
	good := entryMap(t)
	bad := entryMap(t)
	delete(sub(bad, "patient"), "gender")
	body, _ := json.Marshal(map[string]any{"appointments": []any{good, bad, good}})
	items, rerr := Decode(body, 10)
	if rerr != nil {
		t.Fatal(rerr)
	}
	valid, invalid := Validate(items, time.UTC, now)
	if len(valid) != 2 || len(invalid) != 1 || invalid[0].Item.Index != 1 ||
		invalid[0].Errors[0].Field != "appointments[1].patient.gender" {
		t.Fatalf("got %d valid, invalid %+v", len(valid), invalid)
	}
}

func TestStatusReference(t *testing.T) {
	want := map[string]string{
		"proposed": "proposed", "pending": "pending",
		"booked": "booked", "scheduled": "booked", "confirmed": "booked", "rescheduled": "booked",
		"arrived":    "arrived",
		"checked-in": "checked-in", "checkedin": "checked-in",
		"fulfilled": "fulfilled", "completed": "fulfilled", "complete": "fulfilled",
		"cancelled": "cancelled", "canceled": "cancelled",
		"noshow": "noshow", "no-show": "noshow",
		"entered-in-error": "entered-in-error", "deleted": "entered-in-error",
		"waitlist": "waitlist",
	}
	if len(want) != len(StatusWords) {
		t.Fatalf("StatusWords has %d words, the reference %d", len(StatusWords), len(want))
	}
	for _, w := range StatusWords {
		for _, sent := range []string{w, strings.ToUpper(w), " " + strings.ToUpper(w[:1]) + w[1:] + "\t"} {
			code, ok := StatusCode(sent)
			if !ok || code != want[w] {
				t.Errorf("StatusCode(%q) = %q, %v; want %q", sent, code, ok, want[w])
			}
		}
	}
	// Words may be joined by a space or _ as well as by -.
	for sent, code := range map[string]string{"No Show": "noshow", "no_show": "noshow", "Checked In": "checked-in",
		"checked_in": "checked-in", "Entered In Error": "entered-in-error", "entered_in-error": "entered-in-error"} {
		if got, ok := StatusCode(sent); !ok || got != code {
			t.Errorf("StatusCode(%q) = %q, %v; want %q", sent, got, ok, code)
		}
	}
	for _, sent := range []string{"", "book", "no  show", "no.show", "cancel", "done", "in-progress"} {
		if code, ok := StatusCode(sent); ok {
			t.Errorf("StatusCode(%q) = %q, want unknown", sent, code)
		}
	}
	// The sender's word is kept trimmed, as sent.
	e := entryMap(t)
	sub(e, "appointment")["status"] = " No-Show "
	raw, _ := json.Marshal(e)
	got, errs := validateOne(Item{Raw: raw}, time.UTC, now)
	if errs != nil || got.Appointment.Status != "noshow" || got.Appointment.StatusRaw != "No-Show" {
		t.Errorf("got %q/%q %v, want noshow/No-Show", got.Appointment.Status, got.Appointment.StatusRaw, errs)
	}
}

func TestValidateTimeZones(t *testing.T) {
	for _, tc := range []struct {
		start    string
		wantUTC  time.Time
		zoneName string
	}{
		{"03/07/2026 10:00", time.Date(2026, 3, 7, 15, 0, 0, 0, time.UTC), "America/New_York"},  // EST
		{"03/09/2026 10:00", time.Date(2026, 3, 9, 14, 0, 0, 0, time.UTC), "America/New_York"},  // EDT
		{"11/02/2026 10:00", time.Date(2026, 11, 2, 15, 0, 0, 0, time.UTC), "America/New_York"}, // EST again
		{"03/09/2026 10:00", time.Date(2026, 3, 9, 10, 0, 0, 0, time.UTC), "UTC"},
		// Skipped by clocks going forward: moved forward by the gap, west
		// and east of UTC alike, and where midnight is skipped the date
		// stays the one sent (start_date agrees).
		{"03/08/2026 02:30", time.Date(2026, 3, 8, 7, 30, 0, 0, time.UTC), "America/New_York"},      // 03:30 EDT
		{"03/08/2026 02:00", time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC), "America/New_York"},       // 03:00 EDT
		{"03/08/2026 01:59", time.Date(2026, 3, 8, 6, 59, 0, 0, time.UTC), "America/New_York"},      // EST, just before
		{"03/08/2026 03:00", time.Date(2026, 3, 8, 7, 0, 0, 0, time.UTC), "America/New_York"},       // EDT, just after
		{"03/29/2026 02:30", time.Date(2026, 3, 29, 1, 30, 0, 0, time.UTC), "Europe/Berlin"},        // 03:30 CEST
		{"09/06/2026 00:30", time.Date(2026, 9, 6, 4, 30, 0, 0, time.UTC), "America/Santiago"},      // 01:30 -03
		{"09/06/2026 00:00", time.Date(2026, 9, 6, 4, 0, 0, 0, time.UTC), "America/Santiago"},       // 01:00 -03
		{"10/04/2026 02:15", time.Date(2026, 10, 3, 15, 45, 0, 0, time.UTC), "Australia/Lord_Howe"}, // 02:45 +11, a 30-minute gap
	} {
		e := entryMap(t)
		sub(e, "appointment")["start_time"] = tc.start
		sub(e, "appointment")["start_date"] = tc.start[:10]
		raw, _ := json.Marshal(e)
		got, errs := validateOne(Item{Raw: raw}, mustZone(tc.zoneName), now)
		if errs != nil || !got.Appointment.Start.Equal(tc.wantUTC) {
			t.Errorf("%s in %s: got %v %v, want %v", tc.start, tc.zoneName, got.Appointment.Start.UTC(), errs, tc.wantUTC)
		}
	}
	// "Today" is the tenant's: at 01:00 UTC on 03/06 it is still 03/05 in New York.
	e := entryMap(t)
	sub(e, "patient")["birth_date"] = "03/06/2026"
	raw, _ := json.Marshal(e)
	if _, errs := validateOne(Item{Raw: raw}, newYork, time.Date(2026, 3, 6, 1, 0, 0, 0, time.UTC)); len(errs) != 1 {
		t.Errorf("birth date of tomorrow in New York accepted: %v", errs)
	}
	if _, errs := validateOne(Item{Raw: raw}, time.UTC, time.Date(2026, 3, 6, 1, 0, 0, 0, time.UTC)); errs != nil {
		t.Errorf("birth date of today in UTC refused: %v", errs)
	}
}

func TestMessagesNeverContainValues(t *testing.T) {
	secret := "Zebediah-4711"
	e := entryMap(t)
	for _, k := range []string{"appointment", "patient", "practitioner"} {
		for f := range sub(e, k) {
			sub(e, k)[f] = secret + " 99/99/9999"
		}
	}
	e["department_id"] = 7
	raw, _ := json.Marshal(map[string]any{"appointments": []any{e}})
	items, _ := Decode(raw, 1)
	_, invalid := Validate(items, time.UTC, now)
	if len(invalid) != 1 || len(invalid[0].Errors) != 7 {
		t.Fatalf("expected many errors, got %+v", invalid)
	}
	for _, fe := range invalid[0].Errors {
		if strings.Contains(fe.Message, "Zebediah") || strings.Contains(fe.Message, "99/99") {
			t.Errorf("message of %s contains the value: %q", fe.Field, fe.Message)
		}
	}
	for _, body := range []string{`{"Zebediah": x}`, `{"appointments":[1]}Zebediah`} {
		if _, rerr := Decode([]byte(body), 1); rerr == nil || strings.Contains(rerr.Message, "Zebediah") || strings.Contains(rerr.Message, "'x'") {
			t.Errorf("Decode(%q) = %v", body, rerr)
		}
	}
}

// The example's copies (contract tests, `make run`) are the spec's bytes.
func TestExampleCopiesMatchTheSpec(t *testing.T) {
	for _, p := range []string{"testdata/spec-example.json", "../../hack/devrun/example.json"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != specExample+"\n" {
			t.Errorf("%s differs from the spec's full example", p)
		}
	}
}

// Text that is not valid UTF-8, as bytes or as \u escapes, is refused in
// every field the receiver reads, naming the field: encoding/json would
// store it with U+FFFD in place of what was sent.
func TestValidateInvalidUTF8(t *testing.T) {
	const mark = "\x01MARK"
	fields := map[string][]string{
		"appointment":  {"id", "status", "start_time", "start_date", "created_time", "type", "duration", "reason", "notes"},
		"patient":      {"id", "first_name", "middle_name", "last_name", "birth_date", "gender", "phone", "email"},
		"practitioner": {"id", "first_name", "last_name"},
		"location":     {"name"},
		"encounter":    {"id", "reason"},
		"":             {"department_id"},
	}
	bad := []string{"\"Jo\xffe\"", "\"\xc3\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", `"a\ud800b"`, `"\udc00"`, `"\ud83dx"`, `"\ud83d\ud83d"`, `" \ud800"`}
	good := []string{`"\ufffd"`, "\"\xef\xbf\xbd\"", `"\ud83d\ude00"`, `"Zoë"`}
	raw := func(t *testing.T, obj, key, value string) []byte {
		e := entryMap(t)
		m := e
		if obj != "" {
			m = sub(e, obj)
		}
		m[key] = mark
		b, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Replace(b, []byte(`"\u0001MARK"`), []byte(value), 1)
	}
	for obj, keys := range fields {
		for _, key := range keys {
			field := join(obj, key)
			for _, v := range bad {
				_, errs := validateOne(Item{Index: 2, Path: "appointments[2]", Raw: raw(t, obj, key, v)}, newYork, now)
				want := []FieldError{{Index: 2, Field: "appointments[2]." + field, Message: msgUTF8}}
				if diff := cmp.Diff(want, errs); diff != "" {
					t.Errorf("%s = %q (-want +got):\n%s", field, v, diff)
				}
			}
			for _, v := range good {
				_, errs := validateOne(Item{Index: 2, Path: "appointments[2]", Raw: raw(t, obj, key, v)}, newYork, now)
				for _, fe := range errs {
					if fe.Message == msgUTF8 {
						t.Errorf("%s = %q: valid text refused: %+v", field, v, errs)
					}
				}
			}
		}
	}
	// Valid text that is not ASCII is stored as sent.
	e, errs := validateOne(Item{Raw: raw(t, "patient", "first_name", `"Zo\u00eb \ud83d\ude00 \ufffd"`)}, newYork, now)
	if errs != nil || e.Patient.FirstName != "Zoë 😀 \ufffd" {
		t.Errorf("first_name %q, errors %+v", e.Patient.FirstName, errs)
	}
}
