package payload

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// hostileBodies are correctly formed bodies of about size bytes whose
// shapes once made the scanner record a member (48 bytes) for every five
// to a dozen bytes, or an element for every two.
func hostileBodies(size int) map[string][]byte {
	fill := func(prefix, unit, suffix string) []byte {
		var b bytes.Buffer
		b.Grow(size + len(unit))
		b.WriteString(prefix)
		for k := 0; b.Len()+len(unit)+len(suffix) < size; k++ {
			if k > 0 {
				b.WriteByte(',')
			}
			b.WriteString(unit)
		}
		b.WriteString(suffix)
		return b.Bytes()
	}
	return map[string][]byte{
		// Members no reader looks up: of an entry, of the single form's
		// entry and of its objects, of a body of neither form, of an entry
		// that Decode and Validate read (escaped top-level key).
		"entry of empty keys":         fill(`{"appointments":[{`, `"":0`, `}]}`),
		"single form of empty keys":   fill(`{"appointment":{},`, `"":0`, `}`),
		"single form's object":        fill(`{"appointment":{`, `"":0`, `}}`),
		"neither form":                fill(`{`, `"":0`, `}`),
		"escaped key, entry of keys":  fill(`{"appointment\u0073":[{`, `"":0`, `}]}`),
		"entry's unknown object":      fill(`{"appointments":[{"x":{`, `"":0`, `}}]}`),
		"entry of escaped empty keys": fill(`{"appointments":[{`, `"\u0061":0`, `}]}`),
		// Members a reader looks up, again and again.
		"duplicate keys":          fill(`{"appointments":[{"patient":{`, `"id":0`, `}}]}`),
		"duplicate objects":       fill(`{"appointments":[{`, `"patient":{"id":1},"location":{"name":1}`, `}]}`),
		"duplicate escaped keys":  fill(`{"appointment":{`, `"\u0069d":0`, `}}`),
		"single form, duplicates": fill(`{`, `"appointment":{"id":1},"department_id":0`, `}`),
		// More elements than a batch may have: 413.
		"escaped key, elements": fill(`{"appointment\u0073":[`, `0`, `]}`),
		"escaped key, objects":  fill(`{"appointment\u0073":[`, `{}`, `]}`),
		"elements":              fill(`{"appointments":[`, `0`, `]}`),
		"objects of keys":       fill(`{"appointments":[`, `{"":0}`, `]}`),
	}
}

// allocated is how many bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// What decoding a body allocates is bounded by the body's size whatever
// its shape: at most 3 bytes a body byte, against sizing.PerBodyByte's 10
// for everything a request holds (an invalid entry's raw bytes for
// quarantine are one; Decode's items and Validate's copy of an entry two).
// It was 16 to 97 for these bodies, up to 400 MB for 4 MiB.
func TestHostileBodiesMemory(t *testing.T) {
	const size = 4 << 20
	bodies := hostileBodies(size)
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for name := range bodies {
			if !yield(name) {
				return
			}
		}
	}) {
		body := bodies[name]
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			var (
				b    Batch
				rerr *RequestError
			)
			fast := allocated(func() { b, rerr = DecodeValidate(body, 1000, time.UTC, now) })
			slow := allocated(func() {
				if items, err := Decode(body, 1000); err == nil {
					Validate(items, time.UTC, now)
				}
			})
			t.Logf("%d bytes: DecodeValidate allocated %.2f bytes a byte, Decode and Validate %.2f; %d entries, %v",
				len(body), float64(fast)/float64(len(body)), float64(slow)/float64(len(body)), b.Len, rerr)
			if limit := uint64(3 * len(body)); fast > limit || slow > limit {
				t.Errorf("DecodeValidate allocated %d bytes, Decode and Validate %d, for a body of %d: more than 3 a byte",
					fast, slow, len(body))
			}
		})
	}
}

// A body of more entries than a batch may have is still answered with
// their number, by both paths, although only as many as a batch may have
// are recorded.
func TestTooManyEntriesCounted(t *testing.T) {
	for _, key := range []string{"appointments", `appointment\u0073`} {
		for _, elem := range []string{"0", "{}", `{"":0}`} {
			body := []byte(`{"` + key + `":[` + strings.Repeat(elem+",", 1000) + elem + `]}`)
			want := &RequestError{Status: 413, Field: "appointments",
				Message: "appointments has 1001 entries; at most 1000 are accepted per request"}
			if _, rerr := Decode(body, 1000); !cmp.Equal(rerr, want) {
				t.Errorf("Decode(%s of %s) = %v, want %v", key, elem, rerr, want)
			}
			if _, rerr := DecodeValidate(body, 1000, time.UTC, now); !cmp.Equal(rerr, want) {
				t.Errorf("DecodeValidate(%s of %s) = %v, want %v", key, elem, rerr, want)
			}
			// One fewer is a batch.
			body = []byte(`{"` + key + `":[` + strings.Repeat(elem+",", 999) + elem + `]}`)
			if b, rerr := DecodeValidate(body, 1000, time.UTC, now); rerr != nil || b.Len != 1000 {
				t.Errorf("DecodeValidate(%s of 1000 %s) = %d entries, %v", key, elem, b.Len, rerr)
			}
		}
	}
}

// Objects of more than maxObjectRecords records, where the scan records
// only the members of fieldNames, the last of each key, answer as the
// reference does: which member a reader finds does not change.
func TestLargeObjectsMatchTheReference(t *testing.T) {
	valid := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(specExample), `{ "appointments": [`), `] }`))
	inner := valid[1 : len(valid)-1] // the entry's members
	unknown := func(n int) string {
		var b strings.Builder
		for k := range n {
			fmt.Fprintf(&b, `"x%d":{"id":"u","a":[1]},`, k)
		}
		return b.String()
	}
	many := unknown(maxObjectRecords + 5)
	for _, entry := range []string{
		// A valid entry after and among unknown members: still valid.
		`{` + many + inner + `}`,
		`{` + inner + `,` + strings.TrimSuffix(many, ",") + `}`,
		`{"patient":{` + many + `"id":"p"},` + inner + `}`,
		// Its fields sent again, past the limit: the last ones count.
		`{` + many + inner + `,` + inner + `}`,
		`{` + inner + `,` + many + inner + `,` + inner + `}`,
		`{` + inner + `,` + many + `"patient":null}`,
		`{` + inner + `,` + many + `"patient":7,"patient":{"id":"q"},"patient":{"first_name":" \u00e9 "}}`,
		`{` + inner + `,` + many + `"patient":{"id":"q"},"location":{"name":"l"},"patient":{"id":1},"department_id":"d"}`,
		`{` + inner + `,` + many + `"appointment":{"i\u0064":"x","\u0069d":7,"id":"y"},"appointment":{"id":"z"}}`,
		`{` + many + `"appointment":{"id":"a","id":"b"},"\u0061ppointment":{"id":"c"},"appointmen\u0074":{"id":"d"}}`,
		// Escaped keys before the limit, plain ones after, and back.
		`{"\u0070atient":{"id":1},` + many + `"patient":{"id":2}}`,
		`{"patient":{"id":1},` + many + `"\u0070atient":{"id":2},"x":1}`,
		`{"patient":{` + many + `"\u0069d":1,"id":2,"\u0069d":3}}`,
	} {
		for _, tc := range []struct {
			body  string
			batch bool
		}{
			{`{"appointments":[` + entry + `,` + valid + `,` + entry + `]}`, true},
			{entry, false}, // the single form, or neither
			{`{"appointmen\u0074s":[` + entry + `]}`, true},
		} {
			body := tc.body
			if _, rerr := Decode([]byte(body), 10); tc.batch && rerr != nil {
				t.Fatalf("Decode(%.60q…): %v", body, rerr)
			}
			matchesReference(t, body, now)
		}
	}
	// The first entry of that list is valid: unknown members are ignored,
	// however many.
	b, rerr := DecodeValidate([]byte(`{"appointments":[{`+many+many+inner+`}]}`), 10, newYork, now)
	if rerr != nil || len(b.Valid) != 1 {
		t.Errorf("an entry of many unknown members: %d valid, %+v, %v", len(b.Valid), b.Invalid, rerr)
	}
}

// The records of one entry stay few, whatever it holds: up to
// maxObjectRecords as they come, then one member of each of fieldNames and
// the records of its object.
func TestEntryRecordsBounded(t *testing.T) {
	const (
		fields = len(fieldNames) - 1
		object = maxObjectRecords + fields // of the entry's objects
		most   = maxObjectRecords + object + fields*(1+object)
	)
	entry := func(prefix, unit, suffix string) string {
		return prefix + strings.Repeat(unit+",", 100_000) + unit + suffix
	}
	for _, raw := range []string{
		entry(`{`, `"":0`, `}`),
		entry(`{`, `"\u0061":{"":0}`, `}`),
		entry(`{"x":{`, `"":0`, `}}`),
		entry(`{"patient":{`, `"id":0`, `}}`),
		entry(`{"patient":{`, `"":0,"\u0069d":0`, `}}`),
		entry(`{`, `"patient":{"id":1},"location":{"name":1,"":2}`, `}`),
		entry(`{`, `"appointment":{"id":1},"department_id":0`, `}`),
		entry(`{`, `"appointment":{"":1,"id":2,"type":3},"\u0070atient":{"id":[]},"x":{"id":1}`, `}`),
	} {
		var r scanReader
		r.validate(Item{Raw: []byte(raw)}, newYork, now)
		if len(r.members) > most {
			t.Errorf("%.40s…: %d records, more than %d", raw, len(r.members), most)
		}
	}
}

// keyRecorder is a fieldReader that notes the keys readEntry reads.
type keyRecorder struct{ keys map[string]bool }

func (r keyRecorder) object(_ string, _, key string, _ bool) (string, bool) {
	r.keys[key] = true
	return key, true
}
func (r keyRecorder) required(_ string, _, key string, _ int) string { r.keys[key] = true; return "" }
func (r keyRecorder) optional(_ string, _, key string, _ int) *string {
	r.keys[key] = true
	return nil
}
func (r keyRecorder) date(_ string, _, key string) (time.Time, bool) {
	r.keys[key] = true
	return time.Time{}, false
}
func (r keyRecorder) dateTime(_ string, _, key string, _ *time.Location) (time.Time, bool) {
	r.keys[key] = true
	return time.Time{}, false
}
func (r keyRecorder) duration(string, string) *int { r.keys["duration"] = true; return nil }
func (r keyRecorder) fail(string, string, string)  {}
func (r keyRecorder) path(p, key string) string    { return join(p, key) }

// fieldNames are exactly the keys the readers look up: a key readEntry
// read and the scan did not record past maxObjectRecords would be missed.
func TestFieldNamesAreTheKeysRead(t *testing.T) {
	r := keyRecorder{keys: map[string]bool{"appointments": true, "appointment": true}}
	readEntry[string](r, "", time.UTC, now)
	if diff := cmp.Diff(slices.Sorted(func(yield func(string) bool) {
		for k := range r.keys {
			yield(k)
		}
	}), slices.Sorted(slices.Values(fieldNames[1:]))); diff != "" {
		t.Errorf("fieldNames (-read +fieldNames):\n%s", diff)
	}
	for f, name := range fieldNames {
		if got := fieldOf(name); got != field(f) {
			t.Errorf("fieldOf(%q) = %d, want %d", name, got, f)
		}
		if len(name) > maxNameLen {
			t.Errorf("%q is longer than maxNameLen", name)
		}
	}
	if fieldNames[fieldAppointments] != "appointments" || fieldNames[fieldAppointment] != "appointment" {
		t.Error("fieldAppointments or fieldAppointment is not its name's")
	}
	for _, name := range []string{"", "i", "x", "ID", "idx", "appointments ", "Patient", "department_idx", "nam", "nameX"} {
		if f := fieldOf(name); f != 0 {
			t.Errorf("fieldOf(%q) = %d, want 0", name, f)
		}
	}
}

// keyField resolves a key as unquote does, without allocating.
func FuzzKeyField(f *testing.F) {
	for _, key := range []string{
		`"id"`, `"i\u0064"`, `"\u0069\u0064"`, `"\u0049d"`, `"i\u0064\u0000"`, `"appointment\u0073"`,
		`"\u0064epartment_id"`, `"\u0064epartment_idx"`, `"\ud83d\ude00"`, `"n\u0061me"`, `"n\/ame"`,
		`"\u00e9"`, "\"i\xff\"", `"i\"d"`, `"first\u005fname"`, `"a\\b"`, `"patient\u0000"`, `""`, `"x"`,
		`"` + strings.Repeat("id", 40) + `"`, `"` + strings.Repeat(`\u0069`, 40) + `"`,
	} {
		f.Add(key)
	}
	f.Fuzz(func(t *testing.T, key string) {
		end, _, ok := scanString(key, 0)
		if len(key) == 0 || key[0] != '"' || !ok || end != len(key) {
			return
		}
		m := member{key: 0, keyEnd: len(key), keyEscaped: strings.IndexByte(key, '\\') >= 0}
		var got field
		if n := testing.AllocsPerRun(10, func() { got = keyField(key, &m) }); n != 0 {
			t.Errorf("keyField(%s) allocates %v times", key, n)
		}
		if n := testing.AllocsPerRun(10, func() { keyField([]byte(key), &m) }); n > 1 { // []byte(key)
			t.Errorf("keyField(%s) on bytes allocates %v times", key, n)
		}
		if want := fieldOf(unquote(key)); got != want {
			t.Errorf("keyField(%s) = %d, fieldOf(unquote) = %d", key, got, want)
		}
		if got2 := keyField([]byte(key), &m); got2 != got {
			t.Errorf("keyField(%s) = %d on a string, %d on bytes", key, got, got2)
		}
	})
}

// Errors are listed in full up to MaxListedErrors a batch; past it each
// invalid entry lists its first error and a count of the rest, by both
// paths alike. An entry of a few bytes has a dozen errors, so listing them
// all made a 50 KB body of 1,000 such entries cost 1.2 MB of errors, past
// what the in-flight budget charges for it.
func TestErrorsListedAreBounded(t *testing.T) {
	entry := `{"appointment":{},"patient":{},"practitioner":{}}`
	body := []byte(`{"appointments":[` + strings.Repeat(entry+",", 999) + entry + `]}`)
	var b Batch
	fast := allocated(func() {
		var rerr *RequestError
		if b, rerr = DecodeValidate(body, 1000, time.UTC, now); rerr != nil {
			t.Fatal(rerr)
		}
	})
	items, rerr := Decode(body, 1000)
	if rerr != nil {
		t.Fatal(rerr)
	}
	_, slow := Validate(items, time.UTC, now)
	if diff := cmp.Diff(b.Invalid, slow); diff != "" {
		t.Fatalf("DecodeValidate and Validate differ (-fast +slow):\n%s", diff)
	}
	if len(b.Invalid) != 1000 {
		t.Fatalf("%d invalid entries, want 1000", len(b.Invalid))
	}
	listed := 0
	for _, inv := range b.Invalid {
		listed += len(inv.Errors)
	}
	first := len(b.Invalid[0].Errors) // an entry listed in full
	last := b.Invalid[999].Errors
	t.Logf("%d errors listed for %d entries (%d in the first); %d bytes allocated for a body of %d", listed, len(b.Invalid), first, fast, len(body))
	if listed > MaxListedErrors+first+2*1000 {
		t.Errorf("%d errors listed, want at most %d", listed, MaxListedErrors+first+2*1000)
	}
	want := fmt.Sprintf("has more errors, not listed: the request has more than %d", MaxListedErrors)
	if len(last) != 2 || last[1].Field != "appointments[999]" || last[1].Message != want {
		t.Errorf("the last entry's errors: %+v, want its first and %q", last, want)
	}
	// Within what the budget charges a request of this size (PerBodyByte,
	// 10 a byte) with the per-request minimum the receiver reserves.
	if limit := uint64(10 * max(len(body), 64<<10)); fast > limit {
		t.Errorf("DecodeValidate allocated %d bytes, more than %d", fast, limit)
	}
}
