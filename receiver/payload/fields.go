package payload

import "time"

// The entry's fields, written once for both readers: scanReader (O is an
// object the scanner recorded) and the tests' mapReader (O is a map decoded
// by encoding/json, the fuzz oracle) differ only in how they find and read
// one field. Which fields exist, what each must be and in what order errors
// come are written here alone.

// fieldReader reads the fields of objects of type O, collecting errors. p
// is the object's name in the entry ("" for the entry itself). The small
// readers (required, optional, date, dateTime) stay methods of each reader
// although they are alike: as generic helpers over str they slowed the hot
// path (docs/performance.md).
type fieldReader[O any] interface {
	// object reads parent[key] as an object; ok is false when there is
	// nothing to look into (absent or null, an error only when required).
	object(parent O, p, key string, required bool) (O, bool)
	required(obj O, p, key string, maxLen int) string
	optional(obj O, p, key string, maxLen int) *string
	date(obj O, p, key string) (time.Time, bool)
	dateTime(obj O, p, key string, loc *time.Location) (time.Time, bool)
	duration(obj O, p string) *int
	fail(p, key, msg string)
	path(p, key string) string
}

// readEntry reads every field of an entry whose root object is root.
func readEntry[O any, R fieldReader[O]](r R, root O, loc *time.Location, now time.Time) Entry {
	var e Entry
	if obj, ok := r.object(root, "", "appointment", true); ok {
		e.Appointment = readAppointment[O](r, obj, loc)
	}
	if obj, ok := r.object(root, "", "patient", true); ok {
		e.Patient = readPatient[O](r, obj, loc, now)
	}
	if obj, ok := r.object(root, "", "practitioner", true); ok {
		const p = "practitioner"
		e.Practitioner = Practitioner{
			ID:        visibleID(r, p, "id", r.required(obj, p, "id", MaxNameLen)),
			FirstName: r.required(obj, p, "first_name", MaxNameLen),
			LastName:  r.required(obj, p, "last_name", MaxNameLen),
		}
	}
	if obj, ok := r.object(root, "", "location", false); ok {
		e.LocationName = r.optional(obj, "location", "name", MaxNameLen)
	}
	if obj, ok := r.object(root, "", "encounter", false); ok {
		e.EncounterID = visibleOptionalID(r, "encounter", "id", r.optional(obj, "encounter", "id", MaxNameLen))
		e.EncounterReason = r.optional(obj, "encounter", "reason", MaxReasonLen)
	}
	e.DepartmentID = visibleOptionalID(r, "", "department_id", r.optional(root, "", "department_id", MaxNameLen))
	return e
}

func readAppointment[O any, R fieldReader[O]](r R, obj O, loc *time.Location) Appointment {
	const p = "appointment"
	a := Appointment{
		ID:   visibleID(r, p, "id", r.required(obj, p, "id", MaxNameLen)),
		Type: r.required(obj, p, "type", MaxNameLen),
	}
	if raw := r.required(obj, p, "status", MaxNameLen); raw != "" {
		if code, ok := StatusCode(raw); ok {
			a.Status, a.StatusRaw = code, raw
		} else {
			r.fail(p, "status", statusMessage)
		}
	}
	start, startOK := r.dateTime(obj, p, "start_time", loc)
	a.Start = start
	a.Created, _ = r.dateTime(obj, p, "created_time", loc)
	if d, ok := r.date(obj, p, "start_date"); ok {
		a.StartDate = d
		if startOK && !sameDate(d, start) {
			r.fail(p, "start_date", "must be the date of "+r.path(p, "start_time"))
		}
	}
	a.DurationMinutes = r.duration(obj, p)
	a.Reason = r.optional(obj, p, "reason", MaxReasonLen)
	a.Notes = r.optional(obj, p, "notes", MaxNotesLen)
	return a
}

func readPatient[O any, R fieldReader[O]](r R, obj O, loc *time.Location, now time.Time) Patient {
	const p = "patient"
	pt := Patient{
		ID:         visibleID(r, p, "id", r.required(obj, p, "id", MaxNameLen)),
		FirstName:  r.required(obj, p, "first_name", MaxNameLen),
		MiddleName: r.optional(obj, p, "middle_name", MaxNameLen),
		LastName:   r.required(obj, p, "last_name", MaxNameLen),
		Gender:     r.required(obj, p, "gender", MaxNameLen),
		Phone:      r.optional(obj, p, "phone", MaxNameLen),
		Email:      r.optional(obj, p, "email", MaxNameLen),
	}
	if d, ok := r.date(obj, p, "birth_date"); ok {
		if inFuture(d, loc, now) {
			r.fail(p, "birth_date", msgFuture)
		} else {
			pt.BirthDate = d
		}
	}
	return pt
}

// visibleID is id, read as obj[key], unless it holds a control or format
// character (hidden): then the field is an error. Two ids that look alike
// but differ in a zero-width space would name two appointments (patients,
// practitioners) where a reader sees one.
func visibleID(f interface{ fail(p, key, msg string) }, p, key, id string) string {
	if hidden(id) {
		f.fail(p, key, msgHidden)
		return ""
	}
	return id
}

func visibleOptionalID(f interface{ fail(p, key, msg string) }, p, key string, id *string) *string {
	if id != nil && hidden(*id) {
		f.fail(p, key, msgHidden)
		return nil
	}
	return id
}

// parsed is what the readers' date and dateTime share once str has read s
// (ok false: nothing to parse): parse's time, or its message as the
// field's error. A plain method, not generic: the scanner's path stays fast.
func (f *fieldErrors) parsed(p, key, s string, ok bool, parse func(string) (time.Time, string)) (time.Time, bool) {
	if !ok {
		return time.Time{}, false
	}
	t, msg := parse(s)
	if msg != "" {
		f.fail(p, key, msg)
		return time.Time{}, false
	}
	return t, true
}
