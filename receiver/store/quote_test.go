package store

import "testing"

// Array elements reach PostgreSQL quoted, with quotes and backslashes
// escaped and everything else as is.
func TestAppendQuoted(t *testing.T) {
	for in, want := range map[string]string{
		``:                `""`,
		`plain`:           `"plain"`,
		`a"b\c`:           `"a\"b\\c"`,
		`"\`:              `"\"\\"`,
		`\\""`:            `"\\\\\"\""`,
		"é,{} NULL\n\x01": "\"é,{} NULL\n\x01\"",
	} {
		if got := string(appendQuoted([]byte("x"), in)); got != "x"+want {
			t.Errorf("appendQuoted(%q) = %q, want %q", in, got, "x"+want)
		}
	}
}
