package payload

import (
	"bytes"
	"fmt"
	"os"
	"testing"
	"time"
)

// BenchmarkDecodeValidate decodes and validates a batch of 100 distinct
// entries (the spec example's, with their own ids), as the receiver does
// for each request (DecodeValidate).
func BenchmarkDecodeValidate(b *testing.B) {
	example, err := os.ReadFile("testdata/spec-example.json")
	if err != nil {
		b.Fatal(err)
	}
	// The example's one entry, between the array's brackets.
	entry := bytes.TrimSpace(example[bytes.IndexByte(example, '[')+1 : bytes.LastIndexByte(example, ']')])
	for _, n := range []int{1, 100} {
		var body bytes.Buffer
		body.WriteString(`{"appointments":[`)
		for i := range n {
			if i > 0 {
				body.WriteByte(',')
			}
			body.Write(bytes.ReplaceAll(entry, []byte(`"apt-12345"`), fmt.Appendf(nil, `"apt-%d"`, i)))
		}
		body.WriteString(`]}`)
		raw := body.Bytes()
		now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
		b.Run(fmt.Sprintf("%dentries", n), func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				batch, rerr := DecodeValidate(raw, 1000, time.UTC, now)
				if rerr != nil {
					b.Fatal(rerr)
				}
				valid, invalid := batch.Valid, batch.Invalid
				if len(valid) != n || len(invalid) != 0 {
					b.Fatalf("%d valid, %d invalid, want %d valid", len(valid), len(invalid), n)
				}
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
