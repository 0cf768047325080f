package auth

import (
	"bytes"
	"testing"
)

// BenchmarkVerify is the signature check of every request, for a single
// entry (~700 bytes) and a 100-entry batch (~70 KB), with a previous secret
// configured (rotation: both HMACs are computed).
func BenchmarkVerify(b *testing.B) {
	secret, prev := []byte("bench-webhook-secret"), []byte("bench-previous-secret")
	for _, size := range []struct {
		name  string
		bytes int
	}{{"1entry", 700}, {"100entries", 70_000}} {
		body := bytes.Repeat([]byte("x"), size.bytes)
		sig := Sign(secret, body)
		b.Run(size.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if !Verify(body, sig, secret, prev) {
					b.Fatal("the signature did not verify")
				}
			}
		})
	}
}

// BenchmarkKeyMatches is the constant-time API key check.
func BenchmarkKeyMatches(b *testing.B) {
	for b.Loop() {
		if !KeyMatches("bench-api-key", "bench-api-key") {
			b.Fatal("the key did not match")
		}
	}
}
