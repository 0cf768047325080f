package payload

import (
	"encoding/json"
	"testing"
)

// unquote is unquoteValid's string.
func unquote(s string) string {
	u, _ := unquoteValid(s)
	return u
}

// unquoteValid decodes strings as encoding/json does, replacement
// characters included.
func TestUnquote(t *testing.T) {
	for _, s := range []string{
		`""`, `"plain"`, `"\"\\\/\b\f\n\r\t"`, `"\u00e9\u20AC"`, `"\ud83d\ude00"`,
		`"\ud83d"`, `"\ude00\ud83d"`, `"\ud83dx"`, `"\ud83d\u0041"`, `"\ud800\ud800\udc00"`,
		"\"\xff\xc3(\xed\xa0\x80\"", `"a\u0000b"`,
	} {
		var want string
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if got := unquote(s); got != want {
			t.Errorf("unquote(%s) = %q, want %q", s, got, want)
		}
	}
}
