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
	var scratch fast // reused across entries: nothing validated keeps it
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
	return validateItem(it, loc, now, new(fast))
}

func validateItem(it Item, loc *time.Location, now time.Time, scratch *fast) (Entry, []FieldError) {
	if e, errs, ok := validateFast(it, loc, now, scratch); ok {
		return e, errs
	}
	return validateSlow(it, loc, now)
}

// validateSlow is the reference implementation on encoding/json, used for
// the entries the fast path leaves to it (an entry that is not an object,
// or not valid JSON when a caller builds the Item itself).
func validateSlow(it Item, loc *time.Location, now time.Time) (Entry, []FieldError) {
	w := walker{fieldErrors{index: it.Index, base: it.Path}}
	root, ok := w.decode(it.Raw, it.Path, true)
	if !ok {
		return Entry{}, w.errs
	}
	return w.entry(readEntry[map[string]json.RawMessage](&w, root, loc, now))
}

// walker reads an entry's fields from decoded maps.
type walker struct{ fieldErrors }

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func isNull(raw json.RawMessage) bool {
	return raw == nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// object decodes parent[key] as a JSON object (see fieldReader).
func (w *walker) object(parent map[string]json.RawMessage, p, key string, required bool) (map[string]json.RawMessage, bool) {
	return w.decode(parent[key], w.path(p, key), required)
}

// decode decodes raw as a JSON object. Absent or null is an error only when
// required; ok is false whenever there is nothing to look into.
func (w *walker) decode(raw json.RawMessage, path string, required bool) (map[string]json.RawMessage, bool) {
	if isNull(raw) {
		if required {
			w.failAt(path, "is required")
		}
		return nil, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		w.failAt(path, "must be an object")
		return nil, false
	}
	return obj, true
}

// str reads obj[key] as a trimmed string; present is false when it is
// absent, null or blank (blank required strings are an error).
func (w *walker) str(obj map[string]json.RawMessage, p, key string, required bool, maxLen int) (s string, present bool) {
	path := w.path(p, key)
	raw := obj[key]
	if isNull(raw) {
		if required {
			w.failAt(path, "is required")
		}
		return "", false
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		w.failAt(path, "must be a string")
		return "", false
	}
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		if required {
			w.failAt(path, "must not be empty")
		}
		return "", false
	case utf8.RuneCountInString(s) > maxLen:
		w.failAt(path, fmt.Sprintf("must be at most %d characters", maxLen))
		return "", false
	case strings.ContainsRune(s, 0):
		// PostgreSQL text cannot hold NUL.
		w.failAt(path, "must not contain NUL characters")
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
		w.fail(p, key, msg)
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
		w.fail(p, key, msg)
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
	path := w.path(p, "duration")
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
			w.failAt(path, msgDuration)
			return nil
		}
		s = n.String()
	}
	n, ok := minutes(s)
	if !ok {
		w.failAt(path, msgDuration)
		return nil
	}
	return &n
}
