package payload

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// FuzzFastMatchesSlow checks the fast paths against the encoding/json
// reference implementation: for any body, Decode must answer exactly as
// decodeSlow does, and ValidateItem exactly as validateSlow does, for every
// item and for the whole body taken as one item.
func FuzzFastMatchesSlow(f *testing.F) {
	for _, seed := range []string{
		specExample,
		`{"appointments":[1,null,{},[], "x" ,{"appointment":null}]}`,
		`{"appointment":{"id":"a","status":"No-Show","start_time":"02/29/2028 23:59","start_date":"02/29/2028","created_time":"01/01/1800 00:00","type":"t","duration":1440},"patient":{"id":"p","first_name":"Zoë","last_name":"O'Brien","birth_date":"12/31/1999","gender":"Other"},"practitioner":{"id":"d","first_name":"a","last_name":"b"}}`,
		`{"appointment":{"id":"a\u0000b","id":" x\n","type":"\ud800","status":"BOOKED","duration":-0.5e3},"patient":{"phone":12,"email":"\u00e9"},"pa\u0074ient":{},"location":[],"encounter":{"id":"","reason":null}}`,
		"{\"appointment\":{\"id\":\"\xff\xfe\",\"notes\":\"a\xc3\"}}",
		`{"appointments":{}, "appointments":[{"appointment":{}}]}`,
		`{"appointments":[{"appointment":{}}], "appointments":null}`,
		`{"appointmen\u0074s":[1]}`,
		`{"appointments":[1]} x`,
		" \n{\"appointment\":1}\t ", `{"appointments":[ 1 , {"a":2} ]}`,
		`{"appointment":{"i\u0064":"x","\u0069d":7},"patient":{"birth_date":" 02/29/1992 "},"location":{"name":"\t"}}`,
		` [1] `, `null`, `"x"`, `{}`, `{"appointments":[]}`, ``, `{`, `[[[[`, `{"a":1e}`, `{"a":01}`, `{"a":tru}`,
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
		for _, it := range append(items, Item{Index: 7, Path: "x", Raw: body}) {
			e, errs := ValidateItem(it, ny, now)
			we, werrs := validateSlow(it, ny, now)
			if diff := cmp.Diff(werrs, errs); diff != "" {
				t.Fatalf("field errors mismatch (-slow +fast):\n%s", diff)
			}
			if diff := cmp.Diff(we, e); diff != "" {
				t.Fatalf("entry mismatch (-slow +fast):\n%s", diff)
			}
		}
		for _, it := range items {
			it.Raw[0] = 'X' // items must not alias body
		}
		if !bytes.Equal(orig, body) {
			t.Fatal("Decode's items alias the body")
		}
	})
}
