package payload

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Length bounds in characters (DESIGN §5).
const (
	MaxNameLen   = 255   // ids, names and every other short string
	MaxReasonLen = 1000  // appointment.reason, encounter.reason
	MaxNotesLen  = 10000 // appointment.notes
	MaxDuration  = 1440  // minutes in a day
	// MinYear and MaxYear bound every date: four digits, and nothing a
	// PostgreSQL date or timestamptz (no year 0) cannot hold.
	MinYear = 1800
	MaxYear = 9999
)

// Invalid is an entry that failed validation, with every error found in it.
type Invalid struct {
	Item   Item
	Errors []FieldError
}

// Validate checks every item (DESIGN §5). Times are read in loc; now
// decides what "in the future" means, as a date in loc. Valid entries come
// back in batch order; every invalid entry comes back with all its errors.
func Validate(items []Item, loc *time.Location, now time.Time) (valid []Entry, invalid []Invalid) {
	var scratch []member // reused across entries: nothing validated keeps it
	for _, it := range items {
		e, errs := validateItem(it, loc, now, &scratch)
		if len(errs) > 0 {
			invalid = append(invalid, Invalid{Item: it, Errors: errs})
			continue
		}
		if valid == nil {
			valid = make([]Entry, 0, len(items))
		}
		valid = append(valid, e)
	}
	return valid, invalid
}

// ValidateItem checks one entry and normalises it for storage. Strings are
// stored trimmed of surrounding white space; optional ones that are absent,
// null or blank become nil.
func ValidateItem(it Item, loc *time.Location, now time.Time) (Entry, []FieldError) {
	return validateItem(it, loc, now, new([]member))
}

func validateItem(it Item, loc *time.Location, now time.Time, scratch *[]member) (Entry, []FieldError) {
	if e, errs, ok := validateFast(it, loc, now, scratch); ok {
		return e, errs
	}
	return validateSlow(it, loc, now)
}

// validateSlow is the reference implementation on encoding/json, used for
// the entries the fast path leaves to it (an entry that is not an object,
// or not valid JSON when a caller builds the Item itself).
func validateSlow(it Item, loc *time.Location, now time.Time) (Entry, []FieldError) {
	w := walker{index: it.Index}
	var e Entry
	root, ok := w.object(it.Raw, it.Path, true)
	if !ok {
		return e, w.errs
	}
	if obj, ok := w.object(root["appointment"], join(it.Path, "appointment"), true); ok {
		e.Appointment = w.appointment(obj, join(it.Path, "appointment"), loc)
	}
	if obj, ok := w.object(root["patient"], join(it.Path, "patient"), true); ok {
		e.Patient = w.patient(obj, join(it.Path, "patient"), loc, now)
	}
	if obj, ok := w.object(root["practitioner"], join(it.Path, "practitioner"), true); ok {
		p := join(it.Path, "practitioner")
		e.Practitioner = Practitioner{
			ID:        w.required(obj, p, "id", MaxNameLen),
			FirstName: w.required(obj, p, "first_name", MaxNameLen),
			LastName:  w.required(obj, p, "last_name", MaxNameLen),
		}
	}
	if obj, ok := w.object(root["location"], join(it.Path, "location"), false); ok {
		e.LocationName = w.optional(obj, join(it.Path, "location"), "name", MaxNameLen)
	}
	if obj, ok := w.object(root["encounter"], join(it.Path, "encounter"), false); ok {
		p := join(it.Path, "encounter")
		e.EncounterID = w.optional(obj, p, "id", MaxNameLen)
		e.EncounterReason = w.optional(obj, p, "reason", MaxReasonLen)
	}
	e.DepartmentID = w.optional(root, it.Path, "department_id", MaxNameLen)
	if len(w.errs) > 0 {
		return Entry{}, w.errs
	}
	return e, nil
}

func (w *walker) appointment(obj map[string]json.RawMessage, p string, loc *time.Location) Appointment {
	a := Appointment{
		ID:   w.required(obj, p, "id", MaxNameLen),
		Type: w.required(obj, p, "type", MaxNameLen),
	}
	if raw := w.required(obj, p, "status", MaxNameLen); raw != "" {
		if code, ok := StatusCode(raw); ok {
			a.Status, a.StatusRaw = code, raw
		} else {
			w.fail(join(p, "status"), statusMessage)
		}
	}
	start, startOK := w.dateTime(obj, p, "start_time", loc)
	a.Start = start
	a.Created, _ = w.dateTime(obj, p, "created_time", loc)
	if d, ok := w.date(obj, p, "start_date"); ok {
		a.StartDate = d
		if startOK && !sameDate(d, start) {
			w.fail(join(p, "start_date"), "must be the date of "+join(p, "start_time"))
		}
	}
	a.DurationMinutes = w.duration(obj, p)
	a.Reason = w.optional(obj, p, "reason", MaxReasonLen)
	a.Notes = w.optional(obj, p, "notes", MaxNotesLen)
	return a
}

func (w *walker) patient(obj map[string]json.RawMessage, p string, loc *time.Location, now time.Time) Patient {
	pt := Patient{
		ID:         w.required(obj, p, "id", MaxNameLen),
		FirstName:  w.required(obj, p, "first_name", MaxNameLen),
		MiddleName: w.optional(obj, p, "middle_name", MaxNameLen),
		LastName:   w.required(obj, p, "last_name", MaxNameLen),
		Gender:     w.required(obj, p, "gender", MaxNameLen),
		Phone:      w.optional(obj, p, "phone", MaxNameLen),
		Email:      w.optional(obj, p, "email", MaxNameLen),
	}
	if d, ok := w.date(obj, p, "birth_date"); ok {
		if inFuture(d, loc, now) {
			w.fail(join(p, "birth_date"), msgFuture)
		} else {
			pt.BirthDate = d
		}
	}
	return pt
}

// walker collects the field errors of one entry.
type walker struct {
	index int
	errs  []FieldError
}

func (w *walker) fail(path, msg string) {
	w.errs = append(w.errs, FieldError{Index: w.index, Field: path, Message: msg})
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func isNull(raw json.RawMessage) bool {
	return raw == nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// object decodes raw as a JSON object. Absent or null is an error only when
// required; ok is false whenever there is nothing to look into.
func (w *walker) object(raw json.RawMessage, path string, required bool) (map[string]json.RawMessage, bool) {
	if isNull(raw) {
		if required {
			w.fail(path, "is required")
		}
		return nil, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		w.fail(path, "must be an object")
		return nil, false
	}
	return obj, true
}

// str reads obj[key] as a trimmed string; present is false when it is
// absent, null or blank (blank required strings are an error).
func (w *walker) str(obj map[string]json.RawMessage, p, key string, required bool, maxLen int) (s string, present bool) {
	path := join(p, key)
	raw := obj[key]
	if isNull(raw) {
		if required {
			w.fail(path, "is required")
		}
		return "", false
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		w.fail(path, "must be a string")
		return "", false
	}
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		if required {
			w.fail(path, "must not be empty")
		}
		return "", false
	case utf8.RuneCountInString(s) > maxLen:
		w.fail(path, fmt.Sprintf("must be at most %d characters", maxLen))
		return "", false
	case strings.ContainsRune(s, 0):
		// PostgreSQL text cannot hold NUL.
		w.fail(path, "must not contain NUL characters")
		return "", false
	}
	return s, true
}

func (w *walker) required(obj map[string]json.RawMessage, p, key string, maxLen int) string {
	s, _ := w.str(obj, p, key, true, maxLen)
	return s
}

func (w *walker) optional(obj map[string]json.RawMessage, p, key string, maxLen int) *string {
	if s, ok := w.str(obj, p, key, false, maxLen); ok {
		return &s
	}
	return nil
}

const (
	msgDate     = "must be a date MM/DD/YYYY"
	msgDateTime = "must be a date and time MM/DD/YYYY HH:MM (24-hour)"
	msgRealDate = "must be a real calendar date"
	msgYear     = "year must be from 1800 to 9999"
	msgDuration = "must be a whole number of minutes from 0 to 1440"
	msgFuture   = "must not be in the future"
)

// date reads a required MM/DD/YYYY as midnight UTC.
func (w *walker) date(obj map[string]json.RawMessage, p, key string) (time.Time, bool) {
	s, ok := w.str(obj, p, key, true, MaxNameLen)
	if !ok {
		return time.Time{}, false
	}
	d, msg := calendarDate(s)
	if msg != "" {
		w.fail(join(p, key), msg)
		return time.Time{}, false
	}
	return d, true
}

// dateTime reads a required MM/DD/YYYY HH:MM in loc.
func (w *walker) dateTime(obj map[string]json.RawMessage, p, key string, loc *time.Location) (time.Time, bool) {
	s, ok := w.str(obj, p, key, true, MaxNameLen)
	if !ok {
		return time.Time{}, false
	}
	t, msg := wallTime(s, loc)
	if msg != "" {
		w.fail(join(p, key), msg)
		return time.Time{}, false
	}
	return t, true
}

// calendarDate parses MM/DD/YYYY as midnight UTC; msg says what is wrong,
// "" when nothing is.
func calendarDate(s string) (time.Time, string) {
	y, m, d, msg := parseDate(s)
	if msg != "" {
		return time.Time{}, msg
	}
	return time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC), ""
}

// wallTime parses MM/DD/YYYY HH:MM as a wall time in loc. A wall time that
// does not exist in loc (the hour skipped when clocks go forward) is
// resolved as time.Date does; an ambiguous one (clocks going back) likewise.
func wallTime(s string, loc *time.Location) (time.Time, string) {
	if len(s) != 16 || s[10] != ' ' || s[13] != ':' {
		return time.Time{}, msgDateTime
	}
	y, m, d, msg := parseDate(s[:10])
	if msg == msgDate {
		msg = msgDateTime
	}
	hh, okH := digits(s[11:13])
	mm, okM := digits(s[14:16])
	if msg == "" && (!okH || !okM || hh > 23 || mm > 59) {
		msg = msgDateTime
	}
	if msg != "" {
		return time.Time{}, msg
	}
	return time.Date(y, time.Month(m), d, hh, mm, 0, 0, loc), ""
}

// inFuture reports whether the calendar date d (midnight UTC) is after
// today's date in loc.
func inFuture(d time.Time, loc *time.Location, now time.Time) bool {
	today := now.In(loc)
	return d.After(time.Date(today.Year(), today.Month(), today.Day(), 0, 0, 0, 0, time.UTC))
}

// minutes parses a duration given as decimal digits (from a string or a
// JSON number): a whole number of minutes from 0 to MaxDuration.
func minutes(s string) (int, bool) {
	n, ok := digits(s)
	return n, ok && len(s) <= 5 && n <= MaxDuration
}

// parseDate parses exactly MM/DD/YYYY (two-digit month and day) and checks
// the date exists; msg says what is wrong, "" when nothing is.
func parseDate(s string) (y, m, d int, msg string) {
	if len(s) != 10 || s[2] != '/' || s[5] != '/' {
		return 0, 0, 0, msgDate
	}
	m, okM := digits(s[0:2])
	d, okD := digits(s[3:5])
	y, okY := digits(s[6:10])
	switch {
	case !okM || !okD || !okY:
		return 0, 0, 0, msgDate
	case y < MinYear || y > MaxYear:
		return 0, 0, 0, msgYear
	case m < 1 || m > 12 || d < 1 || d > daysIn(time.Month(m), y):
		return 0, 0, 0, msgRealDate
	}
	return y, m, d, ""
}

func digits(s string) (int, bool) {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, len(s) > 0
}

func daysIn(m time.Month, y int) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// sameDate reports whether date (midnight UTC) is the wall-clock date of t.
func sameDate(date, t time.Time) bool {
	y, m, d := t.Date()
	return date.Year() == y && date.Month() == m && date.Day() == d
}

// duration reads the optional appointment.duration: a string of digits as
// the spec shows ("30"), or, leniently, a JSON integer.
func (w *walker) duration(obj map[string]json.RawMessage, p string) *int {
	path := join(p, "duration")
	raw := bytes.TrimSpace(obj["duration"])
	if isNull(raw) {
		return nil
	}
	var s string
	if raw[0] == '"' {
		var ok bool
		if s, ok = w.str(obj, p, "duration", false, MaxNameLen); !ok {
			return nil
		}
	} else {
		var n json.Number
		if json.Unmarshal(raw, &n) != nil {
			w.fail(path, msgDuration)
			return nil
		}
		s = n.String()
	}
	n, ok := minutes(s)
	if !ok {
		w.fail(path, msgDuration)
		return nil
	}
	return &n
}
