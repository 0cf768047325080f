package payload

import (
	"bytes"
	"time"
)

// Length bounds in characters (architecture.md, "The request's path").
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

// Validate checks every item (architecture.md, "The request's path") and normalises the valid ones for
// storage: strings trimmed of surrounding white space, optional ones that
// are absent, null or blank as nil. Times are read in loc; now decides what
// "in the future" means, as a date in loc. Valid entries come back in batch
// order; every invalid entry comes back with its errors (all of them while
// the batch has listed fewer than MaxListedErrors, then its first).
func Validate(items []Item, loc *time.Location, now time.Time) (valid []Entry, invalid []Invalid) {
	var r scanReader // reused across entries: nothing validated keeps it
	listed := MaxListedErrors
	r.listed = &listed
	for _, it := range items {
		e, errs := r.validate(it, loc, now)
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

// validate checks one entry. The entry and errors returned refer only to
// their own memory, not to r's.
func (r *scanReader) validate(it Item, loc *time.Location, now time.Time) (Entry, []FieldError) {
	*r = scanReader{fieldErrors: fieldErrors{index: it.Index, base: it.Path, listed: r.listed}, members: r.members[:0], strs: r.strs}
	// One copy of the entry: its fields are substrings of it, never of Raw.
	src := string(it.Raw)
	i := skipSpace(src, 0)
	if i == len(src) || src[i] != '{' {
		// null, or no bytes at all, is a missing entry.
		if it.Raw == nil || bytes.Equal(bytes.TrimSpace(it.Raw), []byte("null")) {
			r.failAt(it.Path, "is required")
		} else {
			r.failAt(it.Path, "must be an object")
		}
		return r.entry(Entry{})
	}
	// One scan records the entry's members and those of its objects.
	end, ok := scanObject(src, i, 1, &r.members, -1, 2)
	if !ok || skipSpace(src, end) != len(src) {
		r.failAt(it.Path, "must be an object")
		return r.entry(Entry{})
	}
	root := object{src: src, members: r.members, parent: -1, hi: len(r.members)}
	return r.entry(readEntry[object](r, root, loc, now))
}
