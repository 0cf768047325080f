package payload

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// FuzzDecodeValidate feeds arbitrary bodies through Decode and Validate:
// they must never panic, request errors must be 400/413/422, and every
// valid entry, written back in the spec's format, must validate to itself.
func FuzzDecodeValidate(f *testing.F) {
	for _, seed := range []string{
		specExample,
		`{"appointment":{"id":"a","status":"No-Show","start_time":"02/29/2028 23:59","start_date":"02/29/2028","created_time":"01/01/1800 00:00","type":"t","duration":1440},"patient":{"id":"p","first_name":"Zoë","last_name":"O'Brien","birth_date":"12/31/1999","gender":"Other"},"practitioner":{"id":"d","first_name":"a","last_name":"b"}}`,
		`{"appointments":[1,null,{},[]]}`,
		`{"appointments":[]}`,
		`{"appointments":[{"appointment":{"start_time":"03/08/2026 02:30"}}]} x`,
		`[`,
		``,
		"{\"appointments\":[{\"appointment\":{\"id\":\"a\xff\"},\"patient\":{\"first_name\":\"\\ud800\"}}]}",
		"{\"appointment\":{\"id\":\"a\",\"status\":\"booked\",\"start_time\":\"02/29/2028 23:59\",\"start_date\":\"02/29/2028\",\"created_time\":\"01/01/1800 00:00\",\"type\":\"t\",\"notes\":\"\\udc00\"},\"patient\":{\"id\":\"p\",\"first_name\":\"Zo\xff\",\"last_name\":\"O'Brien\",\"birth_date\":\"12/31/1999\",\"gender\":\"Other\"},\"practitioner\":{\"id\":\"d\",\"first_name\":\"a\",\"last_name\":\"b\"}}",
	} {
		f.Add([]byte(seed))
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		items, rerr := Decode(body, 50)
		if rerr != nil {
			if rerr.Status != 400 && rerr.Status != 413 && rerr.Status != 422 {
				t.Fatalf("status %d", rerr.Status)
			}
			return
		}
		if len(items) == 0 || len(items) > 50 {
			t.Fatalf("%d items", len(items))
		}
		valid, invalid := Validate(items, ny, now)
		if len(valid)+len(invalid) != len(items) {
			t.Fatalf("%d valid + %d invalid != %d items", len(valid), len(invalid), len(items))
		}
		for _, inv := range invalid {
			if len(inv.Errors) == 0 {
				t.Fatal("invalid entry without errors")
			}
			for _, fe := range inv.Errors {
				if fe.Index != inv.Item.Index || fe.Message == "" {
					t.Fatalf("bad field error %+v for item %d", fe, inv.Item.Index)
				}
			}
		}
		invalidAt := map[int]bool{}
		for _, inv := range invalid {
			invalidAt[inv.Item.Index] = true
		}
		k := 0
		for _, it := range items {
			if invalidAt[it.Index] {
				continue
			}
			// Nothing sent is replaced: U+FFFD in a valid entry was sent.
			stored, err := json.Marshal(valid[k])
			if err != nil {
				t.Fatal(err)
			}
			if bytes.ContainsRune(stored, utf8.RuneError) &&
				!bytes.Contains(it.Raw, []byte("\xef\xbf\xbd")) && !bytes.Contains(bytes.ToLower(it.Raw), []byte(`\ufffd`)) {
				t.Fatalf("entry %d holds U+FFFD that was not sent", it.Index)
			}
			k++
		}
		for _, e := range valid {
			checkInvariants(t, e)
			raw, err := json.Marshal(specForm(e, ny))
			if err != nil {
				t.Fatal(err)
			}
			again, errs := validateOne(Item{Raw: raw}, ny, now)
			if errs != nil {
				t.Fatalf("re-encoded entry invalid: %+v", errs)
			}
			// Status words are normalised on the way in; compare the codes.
			again.Appointment.StatusRaw = e.Appointment.StatusRaw
			if diff := cmp.Diff(e, again); diff != "" {
				t.Fatalf("round trip mismatch (-first +second):\n%s", diff)
			}
		}
	})
}

func checkInvariants(t *testing.T, e Entry) {
	t.Helper()
	for _, s := range []string{e.Appointment.ID, e.Appointment.Type, e.Patient.ID, e.Patient.FirstName,
		e.Patient.LastName, e.Patient.Gender, e.Practitioner.ID, e.Practitioner.FirstName, e.Practitioner.LastName} {
		if s == "" || !utf8.ValidString(s) || utf8.RuneCountInString(s) > MaxNameLen {
			t.Fatalf("bad required string of %d bytes", len(s))
		}
	}
	if _, ok := StatusCode(e.Appointment.StatusRaw); !ok {
		t.Fatal("unknown raw status accepted")
	}
	if !sameDate(e.Appointment.StartDate, e.Appointment.Start) {
		t.Fatal("start_date is not the date of start_time")
	}
	if d := e.Appointment.DurationMinutes; d != nil && (*d < 0 || *d > MaxDuration) {
		t.Fatalf("duration %d", *d)
	}
	if e.Patient.BirthDate.After(now) {
		t.Fatal("birth date in the future")
	}
}

// specForm writes e back as a single-object body in the spec's format.
func specForm(e Entry, loc *time.Location) map[string]any {
	opt := func(m map[string]any, k string, v *string) {
		if v != nil {
			m[k] = *v
		}
	}
	a := e.Appointment
	appt := map[string]any{
		"id": a.ID, "status": a.Status, "type": a.Type,
		"start_time":   a.Start.In(loc).Format("01/02/2006 15:04"),
		"start_date":   a.StartDate.Format("01/02/2006"),
		"created_time": a.Created.In(loc).Format("01/02/2006 15:04"),
	}
	if a.DurationMinutes != nil {
		appt["duration"] = strconv.Itoa(*a.DurationMinutes)
	}
	opt(appt, "reason", a.Reason)
	opt(appt, "notes", a.Notes)
	p := e.Patient
	pat := map[string]any{"id": p.ID, "first_name": p.FirstName, "last_name": p.LastName,
		"birth_date": p.BirthDate.Format("01/02/2006"), "gender": p.Gender}
	opt(pat, "middle_name", p.MiddleName)
	opt(pat, "phone", p.Phone)
	opt(pat, "email", p.Email)
	out := map[string]any{
		"appointment":  appt,
		"patient":      pat,
		"practitioner": map[string]any{"id": e.Practitioner.ID, "first_name": e.Practitioner.FirstName, "last_name": e.Practitioner.LastName},
	}
	if e.LocationName != nil {
		out["location"] = map[string]any{"name": *e.LocationName}
	}
	enc := map[string]any{}
	opt(enc, "id", e.EncounterID)
	opt(enc, "reason", e.EncounterReason)
	out["encounter"] = enc
	opt(out, "department_id", e.DepartmentID)
	return out
}
