package payload

import "time"

// The entry's fields, read once for both validators: the fast scanner (O is
// a scanned object) and the encoding/json reference (O is a decoded map)
// differ only in how they find and read one field, so which fields exist,
// what each must be and in what order errors come are written here alone.

// fieldReader reads the fields of objects of type O, collecting errors. p
// is the object's name in the entry ("" for the entry itself). The small
// readers (required, optional, date, dateTime) stay methods of each reader
// although they are alike: written once as generic helpers over str they
// made validation 15–20 % slower (BenchmarkDecodeValidate/100entries).
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
			ID:        r.required(obj, p, "id", MaxNameLen),
			FirstName: r.required(obj, p, "first_name", MaxNameLen),
			LastName:  r.required(obj, p, "last_name", MaxNameLen),
		}
	}
	if obj, ok := r.object(root, "", "location", false); ok {
		e.LocationName = r.optional(obj, "location", "name", MaxNameLen)
	}
	if obj, ok := r.object(root, "", "encounter", false); ok {
		e.EncounterID = r.optional(obj, "encounter", "id", MaxNameLen)
		e.EncounterReason = r.optional(obj, "encounter", "reason", MaxReasonLen)
	}
	e.DepartmentID = r.optional(root, "", "department_id", MaxNameLen)
	return e
}

func readAppointment[O any, R fieldReader[O]](r R, obj O, loc *time.Location) Appointment {
	const p = "appointment"
	a := Appointment{
		ID:   r.required(obj, p, "id", MaxNameLen),
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
		ID:         r.required(obj, p, "id", MaxNameLen),
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

// fieldErrors is the error list both readers keep: field paths are built
// from the entry's path (base) only for an error.
type fieldErrors struct {
	index int
	base  string
	errs  []FieldError
}

func (f *fieldErrors) path(obj, key string) string {
	p := f.base
	if obj != "" {
		p = join(p, obj)
	}
	return join(p, key)
}

func (f *fieldErrors) fail(obj, key, msg string) { f.failAt(f.path(obj, key), msg) }

func (f *fieldErrors) failAt(path, msg string) {
	f.errs = append(f.errs, FieldError{Index: f.index, Field: path, Message: msg})
}

// entry is what a reader found: the entry, or its errors.
func (f *fieldErrors) entry(e Entry) (Entry, []FieldError) {
	if len(f.errs) > 0 {
		return Entry{}, f.errs
	}
	return e, nil
}
