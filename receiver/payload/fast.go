package payload

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The fast paths of Decode and ValidateItem: one strict scan of the body
// and one of each entry, no maps and no re-decoding, field paths built only
// for an error. They give the same answers as decodeSlow and validateSlow
// (the encoding/json reference, which FuzzFastMatchesSlow compares them
// with) and hand every input they do not handle themselves back to them.

// decodeFast is Decode for a well-formed body; ok is false for anything
// else (malformed JSON, escaped top-level keys, very deep nesting).
func decodeFast(body []byte, maxBatchSize int) (items []Item, rerr *RequestError, ok bool) {
	i := skipSpace(body, 0)
	if i == len(body) {
		return nil, nil, false
	}
	if body[i] != '{' {
		end, ok := scanValue(body, i, 0)
		if !ok || skipSpace(body, end) != len(body) {
			return nil, nil, false
		}
		return nil, errNeither(), true
	}
	var (
		top   []member
		elems [][2]int
	)
	end, ok := scanObject(body, i, 1, &top, -1, 1)
	if !ok || skipSpace(body, end) != len(body) {
		return nil, nil, false
	}
	// A later duplicate key wins, as it does in a map.
	arr, one := -1, false
	for k, m := range top {
		if m.keyEscaped {
			return nil, nil, false
		}
		switch string(body[m.key+1 : m.keyEnd-1]) {
		case "appointments":
			arr = k
		case "appointment":
			one = true
		}
	}
	switch {
	case arr >= 0:
		m := top[arr]
		if body[m.start] != '[' {
			return nil, &RequestError{Status: http.StatusUnprocessableEntity, Field: "appointments",
				Message: "appointments must be an array"}, true
		}
		if _, ok := scanArray(body[:m.end], m.start, 1, &elems); !ok {
			return nil, nil, false
		}
	case one:
		doc := append(json.RawMessage(nil), body[i:end]...)
		return []Item{{Index: 0, Path: "", Raw: doc}}, nil, true
	default:
		return nil, errNeither(), true
	}
	if len(elems) == 0 {
		return nil, &RequestError{Status: http.StatusUnprocessableEntity, Field: "appointments",
			Message: "appointments must contain at least one entry"}, true
	}
	if len(elems) > maxBatchSize {
		return nil, &RequestError{Status: http.StatusRequestEntityTooLarge, Field: "appointments",
			Message: fmt.Sprintf("appointments has %d entries; at most %d are accepted per request", len(elems), maxBatchSize)}, true
	}
	// One copy of the array and one string of all the paths, sliced per item.
	first, last := elems[0][0], elems[len(elems)-1][1]
	buf := append([]byte(nil), body[first:last]...)
	var paths strings.Builder
	paths.Grow(len(elems) * 20)
	ends := make([]int, len(elems))
	for k := range elems {
		paths.WriteString("appointments[")
		paths.WriteString(strconv.Itoa(k))
		paths.WriteByte(']')
		ends[k] = paths.Len()
	}
	all := paths.String()
	items = make([]Item, len(elems))
	from := 0
	for k, e := range elems {
		s, t := e[0]-first, e[1]-first
		items[k] = Item{Index: k, Path: all[from:ends[k]], Raw: buf[s:t:t]}
		from = ends[k]
	}
	return items, nil, true
}

func errNeither() *RequestError {
	return &RequestError{Status: http.StatusUnprocessableEntity,
		Message: "body must be a JSON object with an appointments array or an appointment object"}
}

// object is one JSON object of an entry: the members of members whose
// parent is parent. get scans from the end: the last of duplicate keys
// wins, as it does in a map.
type object struct {
	src     string
	members []member
	parent  int
	// lo and hi bound the indexes of its members: the scan appends an
	// object's members right after the member holding it.
	lo, hi int
}

func (o object) get(key string) string {
	if k := o.find(key); k >= 0 {
		return o.src[o.members[k].start:o.members[k].end]
	}
	return ""
}

// find returns the index of key's member, -1 when it is absent.
func (o object) find(key string) int {
	for k := o.hi - 1; k >= o.lo; k-- {
		m := o.members[k]
		if m.parent != o.parent {
			continue
		}
		name := o.src[m.key+1 : m.keyEnd-1]
		if m.keyEscaped {
			var ok bool
			if name, ok = unquote(o.src[m.key:m.keyEnd]); !ok {
				continue
			}
		}
		if name == key {
			return k
		}
	}
	return -1
}

// fast reads an entry's fields from its scanned members.
type fast struct {
	fieldErrors
	// members holds the members of the entry and of its objects.
	members []member
}

// validateFast is validateSlow for an entry that is a well-formed JSON
// object; ok is false for anything else. w is reused from entry to entry
// (its members' buffer above all): the entry and errors returned refer only
// to their own memory.
func validateFast(it Item, loc *time.Location, now time.Time, w *fast) (e Entry, errs []FieldError, ok bool) {
	src := string(it.Raw)
	i := skipSpace(src, 0)
	if i == len(src) || src[i] != '{' {
		return e, nil, false
	}
	*w = fast{fieldErrors: fieldErrors{index: it.Index, base: it.Path}, members: w.members[:0]}
	// One scan records the entry's members and those of its objects.
	end, ok := scanObject(src, i, 1, &w.members, -1, 2)
	if !ok || skipSpace(src, end) != len(src) {
		return e, nil, false
	}
	root := object{src: src, members: w.members, parent: -1, hi: len(w.members)}
	e, errs = w.entry(readEntry[object](w, root, loc, now))
	return e, errs, true
}

// object reads parent[key] as an object; see walker.object. The value was
// checked by the scan of the whole entry.
func (w *fast) object(parent object, p, key string, required bool) (object, bool) {
	k := parent.find(key)
	if k < 0 || parent.src[parent.members[k].start:parent.members[k].end] == "null" {
		if required {
			w.fail(p, key, "is required")
		}
		return object{}, false
	}
	if parent.src[parent.members[k].start] != '{' {
		w.fail(p, key, "must be an object")
		return object{}, false
	}
	hi := k + 1
	for hi < len(parent.members) && parent.members[hi].parent == k {
		hi++
	}
	return object{src: parent.src, members: parent.members, parent: k, lo: k + 1, hi: hi}, true
}

// str reads obj[key] as a trimmed string; see walker.str.
func (w *fast) str(obj object, p, key string, required bool, maxLen int) (s string, present bool) {
	var ok bool
	raw := obj.get(key)
	if raw == "" || raw == "null" {
		if required {
			w.fail(p, key, "is required")
		}
		return "", false
	}
	if raw[0] != '"' {
		w.fail(p, key, "must be a string")
		return "", false
	}
	if s = raw[1 : len(raw)-1]; strings.IndexByte(s, '\\') >= 0 || !utf8.ValidString(s) {
		// encoding/json's unescaping and its replacement of invalid UTF-8.
		if s, ok = unquote(raw); !ok {
			w.fail(p, key, "must be a string")
			return "", false
		}
	}
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		if required {
			w.fail(p, key, "must not be empty")
		}
		return "", false
	case len(s) > maxLen && utf8.RuneCountInString(s) > maxLen:
		w.fail(p, key, fmt.Sprintf("must be at most %d characters", maxLen))
		return "", false
	case strings.IndexByte(s, 0) >= 0:
		// PostgreSQL text cannot hold NUL.
		w.fail(p, key, "must not contain NUL characters")
		return "", false
	}
	return s, true
}

// unquote decodes a JSON string as encoding/json does. It is a function
// of its own so that only this rare path pays for the escaping variable.
func unquote(raw string) (string, bool) {
	var s string
	err := json.Unmarshal([]byte(raw), &s)
	return s, err == nil
}

func (w *fast) required(obj object, p, key string, maxLen int) string {
	s, _ := w.str(obj, p, key, true, maxLen)
	return s
}

func (w *fast) optional(obj object, p, key string, maxLen int) *string {
	if s, ok := w.str(obj, p, key, false, maxLen); ok {
		return &s
	}
	return nil
}

// date reads a required MM/DD/YYYY as midnight UTC.
func (w *fast) date(obj object, p, key string) (time.Time, bool) {
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

// dateTime reads a required MM/DD/YYYY HH:MM in loc (see wallTime).
func (w *fast) dateTime(obj object, p, key string, loc *time.Location) (time.Time, bool) {
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

// duration reads the optional appointment.duration; see walker.duration.
func (w *fast) duration(obj object, p string) *int {
	const key = "duration"
	raw := obj.get(key)
	if raw == "" || raw == "null" {
		return nil
	}
	var s string
	switch c := raw[0]; {
	case c == '"':
		var ok bool
		if s, ok = w.str(obj, p, key, false, MaxNameLen); !ok {
			return nil
		}
	case c == '-' || isDigit(c):
		s = raw // a JSON number, as json.Number keeps it
	default:
		w.fail(p, key, msgDuration)
		return nil
	}
	n, ok := minutes(s)
	if !ok {
		w.fail(p, key, msgDuration)
		return nil
	}
	return &n
}
