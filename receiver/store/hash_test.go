package store

import (
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

func TestContentHash(t *testing.T) {
	t.Parallel()
	base := specEntry()
	h := func(f func(e *entryT)) [32]byte {
		e := specEntry()
		f(&e)
		sum, err := ContentHash(e)
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	want, err := ContentHash(base)
	if err != nil {
		t.Fatal(err)
	}
	same := map[string]func(*entryT){
		"unchanged": func(*entryT) {},
		"same instants in UTC": func(e *entryT) {
			e.Appointment.Start = e.Appointment.Start.UTC()
			e.Appointment.Created = e.Appointment.Created.In(time.FixedZone("X", 3600))
		},
	}
	for name, f := range same {
		if h(f) != want {
			t.Errorf("%s: hash changed", name)
		}
	}
	differ := map[string]func(*entryT){
		"status":             func(e *entryT) { e.Appointment.Status = "cancelled" },
		"status word":        func(e *entryT) { e.Appointment.StatusRaw = "Booked" },
		"start":              func(e *entryT) { e.Appointment.Start = e.Appointment.Start.Add(time.Minute) },
		"notes absent→empty": func(e *entryT) { e.Appointment.Notes = ptr("") },
		"patient phone":      func(e *entryT) { e.Patient.Phone = nil },
		"practitioner":       func(e *entryT) { e.Practitioner.LastName = "Smyth" },
		"department":         func(e *entryT) { e.DepartmentID = ptr("dept-02") },
		"duration":           func(e *entryT) { e.Appointment.DurationMinutes = ptr(45) },
	}
	for name, f := range differ {
		if h(f) == want {
			t.Errorf("%s: hash unchanged", name)
		}
	}
}

type entryT = payload.Entry
