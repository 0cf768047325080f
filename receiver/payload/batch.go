package payload

import (
	"encoding/json"
	"time"
	"unsafe"
)

// Batch is a body decoded and validated: how many entries it has, and
// what Validate says of them.
type Batch struct {
	// Len is the number of entries, valid or not.
	Len   int
	Valid []Entry
	// Invalid holds the invalid entries' items, as Decode makes them. The
	// valid entries' items are not made: nothing reads them.
	Invalid []Invalid
}

// DecodeValidate is Decode followed by Validate, with one scan of the body
// instead of three (the body, the appointments array again, each entry
// again): the members the body's scan records of each entry are read
// straight away. A body Decode refuses gets Decode's error, whatever its
// entries say; its entries' validation is wasted, at most maxBatchSize
// entries of it.
//
// The valid entries' fields are substrings of body itself, not of a copy:
// the caller must not modify body afterwards (the receiver reads each body
// into a buffer of its own and drops it after this call).
func DecodeValidate(body []byte, maxBatchSize int, loc *time.Location, now time.Time) (Batch, *RequestError) {
	// No copy of a body of up to MaxBodyBytes: its bytes are never written
	// again (above), so a string may share them.
	text := unsafe.String(unsafe.SliceData(body), len(body))
	i := skipSpace(text, 0)
	if i == len(text) || text[i] != '{' {
		return decodeThenValidate(body, maxBatchSize, loc, now)
	}
	s := bodyScan{text: text, max: maxBatchSize, loc: loc, now: now, listed: MaxListedErrors}
	end, ok := s.scanTop(i)
	if !ok || skipSpace(text, end) != len(text) {
		return Batch{}, malformed(body)
	}
	// The scan kept the last of duplicate keys, as a map does.
	arr, one, oneValue := false, false, false
	for _, m := range s.top {
		if m.parent == -1 {
			arr = arr || m.field == fieldAppointments
			if m.field == fieldAppointment {
				one, oneValue = true, text[m.start] != 'n'
			}
		}
	}
	switch {
	case arr && s.followed && oneValue:
		return Batch{}, errBoth() // as Decode
	case arr && s.followed:
		return s.arrayBatch()
	case arr || !one:
		// Not an array, an escaped key the scan did not follow, or
		// neither form: rare, so Decode and Validate as they are.
		return decodeThenValidate(body, maxBatchSize, loc, now)
	}
	// The single form: the body's members are the entry's.
	r := scanReader{fieldErrors: fieldErrors{index: 0, base: ""}}
	e, errs := r.entry(readEntry[object](&r, object{src: text, members: s.top, parent: -1, hi: len(s.top)}, loc, now))
	if len(errs) > 0 {
		it := Item{Index: 0, Path: "", Raw: append(json.RawMessage(nil), body[i:end]...)}
		return Batch{Len: 1, Invalid: []Invalid{{Item: it, Errors: errs}}}, nil
	}
	return Batch{Len: 1, Valid: []Entry{e}}, nil
}

func decodeThenValidate(body []byte, maxBatchSize int, loc *time.Location, now time.Time) (Batch, *RequestError) {
	items, rerr := Decode(body, maxBatchSize)
	if rerr != nil {
		return Batch{}, rerr
	}
	valid, invalid := Validate(items, loc, now)
	return Batch{Len: len(items), Valid: valid, Invalid: invalid}, nil
}

// bodyScan is DecodeValidate's scan of one body.
type bodyScan struct {
	text string
	max  int
	loc  *time.Location
	now  time.Time
	r    scanReader
	// top holds the body's members and those of its objects, as
	// Validate's scan of a single-form entry records them.
	top []member
	// followed: the last "appointments" member is the array the fields
	// below describe, its key spelled without escapes.
	followed bool
	n        int // the array's elements
	valid    []Entry
	invalid  []Invalid
	// members is the entry being validated's, reused from entry to entry.
	members []member
	// listed counts down the errors listed in full (MaxListedErrors).
	listed int
}

// scanTop checks the object at text[i] as scanObject(text, i, 1, &s.top,
// -1, 2) does, and follows an "appointments" array with scanEntries. Of
// the body's own members it records only those of fieldNames, the last of
// each key, as sift does past maxObjectRecords: a body has few members,
// and DecodeValidate tells them by their field.
func (s *bodyScan) scanTop(i int) (int, bool) {
	b := s.text
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	var seen fieldSet
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		m, ok := scanMemberKey(b, i, -1)
		if !ok {
			return 0, false
		}
		if m.field = keyField(b, &m); m.field == 0 {
			m.end, ok = scanValue(b, m.start, 1)
		} else {
			seen = recordOnce(&s.top, seen, m.field, -1)
			k := len(s.top)
			s.top = append(s.top, m)
			if m.field == fieldAppointments {
				s.followed = false
			}
			switch {
			case m.start < len(b) && b[m.start] == '{':
				m.end, ok = scanObject(b, m.start, 2, &s.top, k, 1)
			case m.start < len(b) && b[m.start] == '[' && m.field == fieldAppointments && !m.keyEscaped:
				s.followed = true
				m.end, ok = s.scanEntries(m.start)
			default:
				ok = scanMemberValue(b, &m, 1)
			}
			s.top[k].end, s.top[k].plainValue = m.end, m.plainValue
		}
		if !ok {
			return 0, false
		}
		var closed bool
		if i, closed, ok = afterValue(b, m.end, '}'); !ok || closed {
			return i, ok
		}
	}
}

// scanEntries checks the array at text[i] (two containers deep) as
// scanArray does and counts its elements; it validates the first s.max,
// recording each that is an object as Validate's scan of it would
// (scanObject, two levels). A later array replaces an earlier one's
// results.
func (s *bodyScan) scanEntries(i int) (int, bool) {
	b := s.text
	s.n, s.valid, s.invalid, s.listed = 0, s.valid[:0], s.invalid[:0], MaxListedErrors
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, true
	}
	for {
		start := i
		var (
			end int
			ok  bool
		)
		validate := s.n < s.max // past it, the answer is a 413
		isObject := start < len(b) && b[start] == '{'
		if isObject && validate {
			s.members = s.members[:0]
			end, ok = scanObject(b, start, 3, &s.members, -1, 2)
		} else {
			end, ok = scanValue(b, start, 2)
		}
		if !ok {
			return 0, false
		}
		if validate {
			s.validate(s.n, start, end, isObject)
		}
		s.n++
		var closed bool
		if i, closed, ok = afterValue(b, end, ']'); !ok || closed {
			return i, ok
		}
	}
}

// validate validates element k, text[start:end], as Validate does; an
// object from the members just recorded.
func (s *bodyScan) validate(k, start, end int, isObject bool) {
	var (
		e    Entry
		errs []FieldError
	)
	if isObject {
		s.r = scanReader{fieldErrors: fieldErrors{index: k, inArray: true, listed: &s.listed}, strs: s.r.strs}
		root := object{src: s.text, members: s.members, parent: -1, hi: len(s.members)}
		e, errs = s.r.entry(readEntry[object](&s.r, root, s.loc, s.now))
	}
	if !isObject || len(errs) > 0 {
		it := Item{Index: k, Path: arrayPath(k), Raw: []byte(s.text[start:end])}
		if !isObject {
			// null or another value: validate says which error.
			s.r.listed = &s.listed
			_, errs = s.r.validate(it, s.loc, s.now)
		}
		s.invalid = append(s.invalid, Invalid{Item: it, Errors: errs})
		return
	}
	if s.valid == nil {
		// As many as entries of this one's size would fill the body, and an
		// eighth more: entries of a batch are alike, and a low guess grows.
		n := len(s.text) / (end - start + 1)
		s.valid = make([]Entry, 0, min(s.max, n+n/8+1))
	}
	s.valid = append(s.valid, e)
}

// arrayBatch is the batch of the appointments array the scan followed.
func (s *bodyScan) arrayBatch() (Batch, *RequestError) {
	if err := batchSize(s.n, s.max); err != nil {
		return Batch{}, err
	}
	b := Batch{Len: s.n, Invalid: s.invalid}
	if len(s.valid) > 0 { // nil for none, as Validate's
		b.Valid = s.valid
	}
	return b, nil
}
