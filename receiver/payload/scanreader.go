package payload

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

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
	var f field // key's, once a key with escapes needs it
	for k := o.hi - 1; k >= o.lo; k-- {
		m := &o.members[k]
		if m.parent != o.parent {
			// A member of a nested object: they all sit right after the
			// member holding it, so go on from that one.
			k = m.parent + 1
			continue
		}
		if m.keyEscaped {
			// The scan resolved the escapes into the key's field.
			if f == 0 {
				f = fieldOf(key)
			}
			if m.field == f {
				return k
			}
			continue
		}
		// The length first: most keys differ in it, and then no slice is
		// made.
		if m.keyEnd-m.key-2 == len(key) && o.src[m.key+1:m.keyEnd-1] == key {
			return k
		}
	}
	return -1
}

// scanReader is the fieldReader over objects the scanner recorded.
type scanReader struct {
	fieldErrors
	// members holds the members of the entry and of its objects.
	members []member
	// strs holds optional fields' values (keep).
	strs []string
}

// object reads parent[key] as an object (see fieldReader).
func (r *scanReader) object(parent object, p, key string, required bool) (object, bool) {
	k := parent.find(key)
	if k < 0 || parent.src[parent.members[k].start:parent.members[k].end] == "null" {
		if required {
			r.fail(p, key, "is required")
		}
		return object{}, false
	}
	if parent.src[parent.members[k].start] != '{' {
		r.fail(p, key, "must be an object")
		return object{}, false
	}
	hi := k + 1
	for hi < len(parent.members) && parent.members[hi].parent == k {
		hi++
	}
	return object{src: parent.src, members: parent.members, parent: k, lo: k + 1, hi: hi}, true
}

// str reads obj[key] as a trimmed string; present is false when it is
// absent, null or blank (blank required strings are an error).
func (r *scanReader) str(obj object, p, key string, required bool, maxLen int) (s string, present bool) {
	k := obj.find(key)
	// Most values are plain (ASCII, no escapes): valid text without NUL,
	// one byte per character, and nothing but ASCII white space to trim.
	plain := k >= 0 && obj.members[k].plainValue
	if plain {
		m := &obj.members[k]
		s = obj.src[m.start+1 : m.end-1]
		if len(s) > 0 && (s[0] <= ' ' || s[len(s)-1] <= ' ') {
			s = strings.TrimSpace(s)
		}
	} else if s, present = r.decoded(obj, k, p, key, required); !present {
		return "", false
	}
	switch {
	case blank(s):
		if required {
			r.fail(p, key, "must not be empty")
		}
		return "", false
	case len(s) > maxLen && (plain || utf8.RuneCountInString(s) > maxLen):
		r.fail(p, key, fmt.Sprintf("must be at most %d characters", maxLen))
		return "", false
	case !plain && strings.IndexByte(s, 0) >= 0:
		// PostgreSQL text cannot hold NUL.
		r.fail(p, key, "must not contain NUL characters")
		return "", false
	}
	return s, true
}

// decoded reads member k's value (k -1: absent), which is not plain, as a
// trimmed string; ok is false when it is absent, null or not a string
// (an error unless absent or null and not required).
func (r *scanReader) decoded(obj object, k int, p, key string, required bool) (s string, ok bool) {
	var raw string
	if k >= 0 {
		raw = obj.src[obj.members[k].start:obj.members[k].end]
	}
	if raw == "" || raw == "null" {
		if required {
			r.fail(p, key, "is required")
		}
		return "", false
	}
	if raw[0] != '"' {
		r.fail(p, key, "must be a string")
		return "", false
	}
	if s = raw[1 : len(raw)-1]; strings.IndexByte(s, '\\') >= 0 || !utf8.ValidString(s) {
		var valid bool
		// Replacing bytes with U+FFFD would store altered patient data.
		if s, valid = unquoteValid(raw); !valid {
			r.fail(p, key, msgUTF8)
			return "", false
		}
	}
	return strings.TrimSpace(s), true
}

func (r *scanReader) required(obj object, p, key string, maxLen int) string {
	s, _ := r.str(obj, p, key, true, maxLen)
	return s
}

func (r *scanReader) optional(obj object, p, key string, maxLen int) *string {
	if s, ok := r.str(obj, p, key, false, maxLen); ok {
		return r.keep(s)
	}
	return nil
}

// keep returns a pointer to s in a chunk of strings, so that optional
// fields cost one allocation per chunk, not one each. Nothing writes
// through the pointers, so entries can share a chunk; it lives as long as
// any of them, and a request's entries go together anyway.
func (r *scanReader) keep(s string) *string {
	if len(r.strs) == cap(r.strs) {
		r.strs = make([]string, 0, 64)
	}
	r.strs = append(r.strs, s)
	return &r.strs[len(r.strs)-1]
}

// date reads a required MM/DD/YYYY as midnight UTC.
func (r *scanReader) date(obj object, p, key string) (time.Time, bool) {
	s, ok := r.str(obj, p, key, true, MaxNameLen)
	return r.parsed(p, key, s, ok, calendarDate)
}

// dateTime reads a required MM/DD/YYYY HH:MM in loc (see wallTime).
func (r *scanReader) dateTime(obj object, p, key string, loc *time.Location) (time.Time, bool) {
	s, ok := r.str(obj, p, key, true, MaxNameLen)
	return r.parsed(p, key, s, ok, func(s string) (time.Time, string) { return wallTime(s, loc) })
}

// duration reads the optional appointment.duration: a string of digits as
// the spec shows ("30"), or, leniently, a JSON integer.
func (r *scanReader) duration(obj object, p string) *int {
	const key = "duration"
	raw := obj.get(key)
	if raw == "" || raw == "null" {
		return nil
	}
	var s string
	switch c := raw[0]; {
	case c == '"':
		var ok bool
		if s, ok = r.str(obj, p, key, false, MaxNameLen); !ok {
			return nil
		}
	case c == '-' || isDigit(c):
		s = raw // a JSON number, as json.Number keeps it
	default:
		r.fail(p, key, msgDuration)
		return nil
	}
	n, ok := minutes(s)
	if !ok {
		r.fail(p, key, msgDuration)
		return nil
	}
	return &n
}
