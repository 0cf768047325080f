package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// The reference implementation on encoding/json: FuzzFastMatchesSlow holds
// Decode and Validate to its answers. It reads an entry's fields through the
// same list (fields.go), over decoded maps.

// FuzzFastMatchesSlow checks the scanner-based code against the reference:
// for any body, Decode must answer exactly as decodeSlow does, and
// validation exactly as validateSlow does, for every item and for the whole
// body taken as one item.
func FuzzFastMatchesSlow(f *testing.F) {
	for _, seed := range []string{
		specExample,
		`{"appointments":[1,null,{},[], "x" ,{"appointment":null}]}`,
		`{"appointment":{"id":"a","status":"No-Show","start_time":"02/29/2028 23:59","start_date":"02/29/2028","created_time":"01/01/1800 00:00","type":"t","duration":1440},"patient":{"id":"p","first_name":"Zoë","last_name":"O'Brien","birth_date":"12/31/1999","gender":"Other"},"practitioner":{"id":"d","first_name":"a","last_name":"b"}}`,
		`{"appointment":{"id":"a\u0000b","id":" x\n","type":"\ud800","status":"BOOKED","duration":-0.5e3},"patient":{"phone":12,"email":"\u00e9"},"pa\u0074ient":{},"location":[],"encounter":{"id":"","reason":null}}`,
		"{\"appointment\":{\"id\":\"\xff\xfe\",\"notes\":\"a\xc3\"}}",
		`{"appointments":{}, "appointments":[{"appointment":{}}]}`,
		`{"appointments":[{"appointment":{}}], "appointments":null}`,
		`{"appointment":{"id":"x"},"appointments":null}`, `{"appointments":null,"appointment":null}`,
		`{"appointments":[1],"appointment":{},"appointments":null}`, `{"appointments":null,"appointment":1,"appointments":[1]}`,
		`{"appointment":null,"appointments":[1]}`, `{"appointment":{},"appointment":null,"appointments":[1]}`,
		`{"appointmen\u0074s":[1]}`,
		`{"appointments":[1]} x`, "\uFEFF{\"appointments\":[1]}", "\uFEFF", "\xEF\xBB{}",
		" \n{\"appointment\":1}\t ", `{"appointments":[ 1 , {"a":2} ]}`,
		`{"appointment":{"i\u0064":"x","\u0069d":7},"patient":{"birth_date":" 02/29/1992 "},"location":{"name":"\t"}}`,
		` [1] `, `null`, `"x"`, `{}`, `{"appointments":[]}`, ``, `{`, `[[[[`, `{"a":1e}`, `{"a":01}`, `{"a":tru}`,
		`{"appointments":[{"appointment":{"id":"\ud83d\ude00\udc00\ud800x\u00e9\/\b"}}]}`,
		deep(300, `{"appointment":`, `}`),
		// Past maxObjectRecords the scan records only the keys read, the
		// last of each.
		`{"appointments":[{` + strings.Repeat(`"x":{"id":1},`, maxObjectRecords) +
			`"appointment":{"id":"a"},"appointment":{"id":"b"},"\u0070atient":{"i\u0064":1,"id":2},"location":1,"location":{}}]}`,
	} {
		f.Add([]byte(seed))
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		orig := bytes.Clone(body)
		items, rerr := Decode(body, 5)
		wantItems, wantErr := decodeSlow(body, 5)
		if diff := cmp.Diff(wantErr, rerr); diff != "" {
			t.Fatalf("Decode error mismatch (-slow +fast):\n%s", diff)
		}
		if diff := cmp.Diff(wantItems, items); diff != "" {
			t.Fatalf("Decode items mismatch (-slow +fast):\n%s", diff)
		}
		var r scanReader // reused, as Validate does
		for _, it := range append(items, Item{Index: 7, Path: "x", Raw: body}) {
			e, errs := r.validate(it, ny, now)
			we, werrs := validateSlow(it, ny, now)
			if diff := cmp.Diff(werrs, errs); diff != "" {
				t.Fatalf("field errors mismatch (-slow +fast):\n%s", diff)
			}
			if diff := cmp.Diff(we, e); diff != "" {
				t.Fatalf("entry mismatch (-slow +fast):\n%s", diff)
			}
		}
		batchMatches(t, body, 5, ny)
		for _, it := range items {
			it.Raw[0] = 'X' // items must not alias body
		}
		if !bytes.Equal(orig, body) {
			t.Fatal("Decode's items alias the body")
		}
	})
}

// Inputs the fuzzer seldom builds get the reference's answers: escaped
// top-level keys, nesting up to and past encoding/json's limit, entries
// that are not objects.
func TestRareInputsMatchTheReference(t *testing.T) {
	entry := `{"appointment":{"id":"a"},"patient":` + deep(300, `{"x":`, `}`) + `}`
	for _, body := range []string{
		`{"appointmen\u0074s":[1,2]}`,
		`{"appointment\u0073":{}}`,
		`{"\u0061ppointment":{"id":"x"}}`,
		`{"appointments":[` + entry + `,` + deep(maxDepth-2, "[", "]") + `]}`,
		deep(maxDepth/2, `{"appointment":[`, `]}`),
		deep(maxDepth+1, "[", "]"),
		`{"a":` + deep(maxDepth, "[", "]") + `}`,
		`{"appointments":[42,"x",null,[],{}]}`,
		// A later array replaces an earlier one, errors listed included.
		`{"appointments":[` + strings.Repeat(`{"appointment":{},"patient":{},"practitioner":{}},`, 9) +
			`{"appointment":{},"patient":{},"practitioner":{}}],"appointments":[{},{}]}`,
		// Duplicate keys: the last wins, whether the body's scan recorded
		// its array (plain key) or not (escaped key).
		`{"appointments":[{"appointment":{"id":"a"}}],"appointmen\u0074s":[{"patient":{"id":1}}]}`,
		`{"appointmen\u0074s":[{"patient":{"id":1}}],"appointments":[1,{"appointment":{"id":"a"}}]}`,
		`{"appointment":{"id":"a"},"appointment":{"id":"b"},"patient":{"x":{"y":[]}},"patient":null}`,
		// Invalid entries beside valid ones, errors whose messages name a path.
		`{"appointments":[{"appointment":{"start_time":"03/10/2026 14:30","start_date":"03/11/2026"}},null,` +
			strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(specExample), `{ "appointments": [`), `] }`) + `,7]}`,
	} {
		matchesReference(t, body, now)
	}
	// Past encoding/json's nesting limit is malformed, at its offset.
	_, rerr := Decode([]byte(deep(maxDepth+1, "[", "]")), 10)
	if want := fmt.Sprintf("malformed JSON at byte offset %d", maxDepth+1); rerr == nil || rerr.Status != 400 || rerr.Message != want {
		t.Errorf("too deep: %v, want 400 %q", rerr, want)
	}
	// Items a caller builds: nothing and null are a missing entry, other
	// non-objects and malformed JSON are not an object.
	for raw, want := range map[string]string{"": "must be an object", "\x00": "must be an object", " null ": "is required",
		`{"appointment":{}`: "must be an object", `{} {}`: "must be an object", "[1]": "must be an object"} {
		_, errs := validateOne(Item{Path: "p", Raw: []byte(raw)}, time.UTC, now)
		if len(errs) != 1 || errs[0] != (FieldError{Field: "p", Message: want}) {
			t.Errorf("validating %q: %+v, want %q", raw, errs, want)
		}
	}
	if _, errs := validateOne(Item{Path: "p"}, time.UTC, now); len(errs) != 1 || errs[0].Message != "is required" {
		t.Errorf("validating no bytes: %+v, want is required", errs)
	}
}

// deep nests opening and closing n times around 1.
func deep(n int, opening, closing string) string {
	return strings.Repeat(opening, n) + "1" + strings.Repeat(closing, n)
}

// decodeSlow is Decode on encoding/json.
func decodeSlow(body []byte, maxBatchSize int) ([]Item, *RequestError) {
	doc, rerr := oneDocument(body)
	if rerr != nil {
		return nil, rerr
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(doc, &top) != nil || top == nil {
		return nil, &RequestError{Status: http.StatusUnprocessableEntity,
			Message: "body must be a JSON object with an appointments array or an appointment object"}
	}
	single, one := top["appointment"]
	arr, ok := top["appointments"]
	// A null beside the other form is ignored; two values are refused.
	arrValue, oneValue := ok && string(arr) != "null", one && string(single) != "null"
	if arrValue && oneValue {
		return nil, &RequestError{Status: http.StatusUnprocessableEntity,
			Message: "body holds both an appointments array and an appointment object: send one of the two forms"}
	}
	if arrValue || ok && !one {
		var raws []json.RawMessage
		if json.Unmarshal(arr, &raws) != nil || raws == nil {
			return nil, &RequestError{Status: http.StatusUnprocessableEntity, Field: "appointments",
				Message: "appointments must be an array"}
		}
		if err := batchSize(len(raws), maxBatchSize); err != nil {
			return nil, err
		}
		items := make([]Item, len(raws))
		for i, r := range raws {
			items[i] = Item{Index: i, Path: "appointments[" + strconv.Itoa(i) + "]", Raw: r}
		}
		return items, nil
	}
	if one {
		return []Item{{Index: 0, Path: "", Raw: doc}}, nil
	}
	return nil, &RequestError{Status: http.StatusUnprocessableEntity,
		Message: "body must be a JSON object with an appointments array or an appointment object"}
}

// oneDocument checks that body holds exactly one JSON value (surrounding
// whitespace allowed) and returns it.
func oneDocument(body []byte) (json.RawMessage, *RequestError) {
	if bytes.HasPrefix(body, []byte("\uFEFF")) {
		return nil, errByteOrderMark()
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var doc json.RawMessage
	if err := dec.Decode(&doc); err != nil {
		return nil, malformedSlow(err, int64(len(body)))
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		// Whatever follows the first document, valid JSON or not, is trailing data.
		off := end + int64(len(body[end:])-len(bytes.TrimLeft(body[end:], " \t\r\n")))
		return nil, &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON: unexpected data after the JSON document at byte offset %d", off)}
	}
	return doc, nil
}

// malformedSlow describes a decoding error by its byte offset only.
func malformedSlow(err error, size int64) *RequestError {
	var syn *json.SyntaxError
	switch {
	case errors.As(err, &syn):
		return &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON at byte offset %d", syn.Offset)}
	case errors.Is(err, io.EOF) && size == 0:
		return &RequestError{Status: http.StatusBadRequest, Message: "malformed JSON: the body is empty"}
	default: // io.EOF on whitespace only, io.ErrUnexpectedEOF on a truncated document
		return &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON: unexpected end of the body at byte offset %d", size)}
	}
}

// validateSlow is scanReader.validate on encoding/json.
func validateSlow(it Item, loc *time.Location, now time.Time) (Entry, []FieldError) {
	r := mapReader{fieldErrors{index: it.Index, base: it.Path}}
	root, ok := r.decode(it.Raw, it.Path, true)
	if !ok {
		return Entry{}, r.errs
	}
	return r.entry(readEntry[map[string]json.RawMessage](&r, root, loc, now))
}

// mapReader is the fieldReader over maps decoded by encoding/json.
type mapReader struct{ fieldErrors }

func isNull(raw json.RawMessage) bool {
	return raw == nil || bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// object decodes parent[key] as a JSON object (see fieldReader).
func (r *mapReader) object(parent map[string]json.RawMessage, p, key string, required bool) (map[string]json.RawMessage, bool) {
	return r.decode(parent[key], r.path(p, key), required)
}

// decode decodes raw as a JSON object. Absent or null is an error only when
// required; ok is false whenever there is nothing to look into.
func (r *mapReader) decode(raw json.RawMessage, path string, required bool) (map[string]json.RawMessage, bool) {
	if isNull(raw) {
		if required {
			r.failAt(path, "is required")
		}
		return nil, false
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		r.failAt(path, "must be an object")
		return nil, false
	}
	return obj, true
}

// str reads obj[key] as a trimmed string; present is false when it is
// absent, null or blank (blank required strings are an error).
func (r *mapReader) str(obj map[string]json.RawMessage, p, key string, required bool, maxLen int) (s string, present bool) {
	path := r.path(p, key)
	raw := obj[key]
	if isNull(raw) {
		if required {
			r.failAt(path, "is required")
		}
		return "", false
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		r.failAt(path, "must be a string")
		return "", false
	}
	// encoding/json replaces what is not valid text with U+FFFD: look at
	// the bytes as sent.
	if !validText(raw) {
		r.failAt(path, msgUTF8)
		return "", false
	}
	s = strings.TrimSpace(s)
	switch {
	case blank(s):
		if required {
			r.failAt(path, "must not be empty")
		}
		return "", false
	case utf8.RuneCountInString(s) > maxLen:
		r.failAt(path, fmt.Sprintf("must be at most %d characters", maxLen))
		return "", false
	case strings.ContainsRune(s, 0):
		// PostgreSQL text cannot hold NUL.
		r.failAt(path, "must not contain NUL characters")
		return "", false
	}
	return s, true
}

func (r *mapReader) required(obj map[string]json.RawMessage, p, key string, maxLen int) string {
	s, _ := r.str(obj, p, key, true, maxLen)
	return s
}

func (r *mapReader) optional(obj map[string]json.RawMessage, p, key string, maxLen int) *string {
	if s, ok := r.str(obj, p, key, false, maxLen); ok {
		return &s
	}
	return nil
}

// date reads a required MM/DD/YYYY as midnight UTC.
func (r *mapReader) date(obj map[string]json.RawMessage, p, key string) (time.Time, bool) {
	s, ok := r.str(obj, p, key, true, MaxNameLen)
	return r.parsed(p, key, s, ok, calendarDate)
}

// dateTime reads a required MM/DD/YYYY HH:MM in loc.
func (r *mapReader) dateTime(obj map[string]json.RawMessage, p, key string, loc *time.Location) (time.Time, bool) {
	s, ok := r.str(obj, p, key, true, MaxNameLen)
	return r.parsed(p, key, s, ok, func(s string) (time.Time, string) { return wallTime(s, loc) })
}

func (r *mapReader) duration(obj map[string]json.RawMessage, p string) *int {
	path := r.path(p, "duration")
	raw := bytes.TrimSpace(obj["duration"])
	if isNull(raw) {
		return nil
	}
	var s string
	if raw[0] == '"' {
		var ok bool
		if s, ok = r.str(obj, p, "duration", false, MaxNameLen); !ok {
			return nil
		}
	} else {
		var n json.Number
		if json.Unmarshal(raw, &n) != nil {
			r.failAt(path, msgDuration)
			return nil
		}
		s = n.String()
	}
	n, ok := minutes(s)
	if !ok {
		r.failAt(path, msgDuration)
		return nil
	}
	return &n
}

// validText reports whether the JSON string raw (which encoding/json
// accepted) is valid UTF-8 with every \u surrogate escape in a pair.
func validText(raw json.RawMessage) bool {
	if !utf8.Valid(raw) {
		return false
	}
	t := string(bytes.TrimSpace(raw))
	high := false // the previous escape was a high surrogate awaiting its low half
	for i := 1; i < len(t)-1; i++ {
		if t[i] != '\\' {
			if high {
				return false
			}
			continue
		}
		i++
		if t[i] != 'u' {
			if high {
				return false
			}
			continue
		}
		v, err := strconv.ParseUint(t[i+1:i+5], 16, 32)
		if err != nil {
			return false
		}
		i += 4
		switch {
		case v >= 0xD800 && v <= 0xDBFF:
			if high {
				return false
			}
			high = true
		case v >= 0xDC00 && v <= 0xDFFF:
			if !high {
				return false
			}
			high = false
		default:
			if high {
				return false
			}
		}
	}
	return !high
}

// batchMatches checks that DecodeValidate, which validates entries from
// the body's one scan, answers as Decode and then Validate.
func batchMatches(t *testing.T, body []byte, maxBatchSize int, loc *time.Location) {
	t.Helper()
	items, rerr := Decode(body, maxBatchSize)
	b, berr := DecodeValidate(body, maxBatchSize, loc, now)
	if diff := cmp.Diff(rerr, berr); diff != "" {
		t.Fatalf("DecodeValidate error (-Decode +DecodeValidate):\n%s", diff)
	}
	if rerr != nil {
		return
	}
	if b.Len != len(items) {
		t.Fatalf("DecodeValidate: %d entries, Decode %d", b.Len, len(items))
	}
	valid, invalid := Validate(items, loc, now)
	if diff := cmp.Diff(valid, b.Valid); diff != "" {
		t.Fatalf("DecodeValidate entries (-Validate +DecodeValidate):\n%s", diff)
	}
	if diff := cmp.Diff(invalid, b.Invalid); diff != "" {
		t.Fatalf("DecodeValidate errors (-Validate +DecodeValidate):\n%s", diff)
	}
	orig := bytes.Clone(body)
	for _, inv := range b.Invalid {
		if len(inv.Item.Raw) > 0 {
			inv.Item.Raw[0] = 'X' // items must not alias body
		}
	}
	if !bytes.Equal(orig, body) {
		t.Fatal("DecodeValidate's items alias the body")
	}
}

// matchesReference checks Decode, DecodeValidate and the validation of
// each item (and of the whole body as an item) against the reference.
func matchesReference(t *testing.T, body string, now time.Time) {
	t.Helper()
	items, rerr := Decode([]byte(body), 10)
	wantItems, wantErr := decodeSlow([]byte(body), 10)
	if diff := cmp.Diff(wantErr, rerr); diff != "" {
		t.Fatalf("Decode(%.60q…) error (-reference +got):\n%s", body, diff)
	}
	if diff := cmp.Diff(wantItems, items); diff != "" {
		t.Fatalf("Decode(%.60q…) items (-reference +got):\n%s", body, diff)
	}
	batchMatches(t, []byte(body), 10, newYork)
	for _, it := range append(items, Item{Index: 1, Path: "p", Raw: []byte(body)}) {
		e, errs := validateOne(it, newYork, now)
		we, werrs := validateSlow(it, newYork, now)
		if diff := cmp.Diff(werrs, errs); diff != "" {
			t.Fatalf("validating %.60q…: errors (-reference +got):\n%s", it.Raw, diff)
		}
		if diff := cmp.Diff(we, e); diff != "" {
			t.Fatalf("validating %.60q…: entry (-reference +got):\n%s", it.Raw, diff)
		}
	}
}
