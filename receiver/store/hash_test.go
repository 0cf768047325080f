package store

import (
	"reflect"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

func TestContentHash(t *testing.T) {
	t.Parallel()
	want := ContentHash(specEntry())
	h := func(f func(e *payload.Entry)) [32]byte {
		e := specEntry()
		f(&e)
		return ContentHash(e)
	}
	same := map[string]func(*payload.Entry){
		"unchanged": func(*payload.Entry) {},
		"same instants in other zones": func(e *payload.Entry) {
			e.Appointment.Start = e.Appointment.Start.UTC()
			e.Appointment.Created = e.Appointment.Created.In(time.FixedZone("X", 3600))
		},
	}
	for name, f := range same {
		if h(f) != want {
			t.Errorf("%s: hash changed", name)
		}
	}
	differ := map[string]func(*payload.Entry){
		"notes absent→empty":   func(e *payload.Entry) { e.Appointment.Notes = ptr("") },
		"patient phone absent": func(e *payload.Entry) { e.Patient.Phone = nil },
		"text moved across fields": func(e *payload.Entry) {
			e.Practitioner.FirstName, e.Practitioner.LastName = e.Practitioner.FirstName+"S", e.Practitioner.LastName[1:]
		},
		"start a nanosecond later": func(e *payload.Entry) { e.Appointment.Start = e.Appointment.Start.Add(time.Nanosecond) },
		"birth date in year 1":     func(e *payload.Entry) { e.Patient.BirthDate = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC) },
	}
	for name, f := range differ {
		if h(f) == want {
			t.Errorf("%s: hash unchanged", name)
		}
	}
}

// Every field of payload.Entry is hashed: changing any one of them, or
// making an optional one absent, changes the hash. A field added to the
// entry and forgotten in ContentHash fails here.
func TestContentHashCoversEveryField(t *testing.T) {
	t.Parallel()
	base := specEntry()
	want := ContentHash(base)
	var walk func(path string, v reflect.Value)
	fields := 0
	walk = func(path string, v reflect.Value) {
		for i := range v.NumField() {
			f, name := v.Field(i), path+"."+v.Type().Field(i).Name
			if f.Kind() == reflect.Struct && f.Type() != reflect.TypeFor[time.Time]() {
				walk(name, f)
				continue
			}
			fields++
			var mutations []func()
			old := reflect.New(f.Type()).Elem()
			old.Set(f)
			switch x := f.Addr().Interface().(type) {
			case *string:
				mutations = append(mutations, func() { *x += "x" })
			case **string:
				if *x == nil {
					mutations = append(mutations, func() { v := ""; *x = &v })
				} else {
					s := **x
					mutations = append(mutations, func() { *x = nil }, func() { v := s + "x"; *x = &v })
				}
			case **int:
				if *x == nil {
					mutations = append(mutations, func() { v := 0; *x = &v })
				} else {
					n := **x
					mutations = append(mutations, func() { *x = nil }, func() { v := n + 1; *x = &v })
				}
			case *time.Time:
				mutations = append(mutations, func() { *x = x.Add(time.Second) })
			default:
				t.Fatalf("%s has type %s, which this test does not know how to change", name, f.Type())
			}
			for _, mutate := range mutations {
				mutate()
				if ContentHash(base) == want {
					t.Errorf("changing %s does not change the hash", name)
				}
				f.Set(old)
			}
		}
	}
	walk("Entry", reflect.ValueOf(&base).Elem())
	if fields < 20 {
		t.Fatalf("walked %d fields of payload.Entry; the walk is broken", fields)
	}
}
