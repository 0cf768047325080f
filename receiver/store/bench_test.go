package store

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// BenchmarkWrite writes batches of 100 new appointments (one request each),
// on a throwaway cluster with fsync off: it measures the statement, not the
// disk. Run: go test -run '^$' -bench Write ./receiver/store/
func BenchmarkWrite(b *testing.B) {
	s, _ := newStore(b)
	ctx := context.Background()
	n := 0
	for b.Loop() {
		entries := make([]payload.Entry, 100)
		for i := range entries {
			n++
			entries[i] = minimalEntry(fmt.Sprintf("apt-%d", n))
			entries[i].Patient.ID = fmt.Sprintf("pat-%d", n%1000)
		}
		if _, err := s.Write(ctx, batch(entries...)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(100*b.N)/b.Elapsed().Seconds(), "appointments/s")
}

// BenchmarkWriteParallelSingles sends one-entry requests from many
// goroutines, as most EHRs do: the batcher's case.
func BenchmarkWriteParallelSingles(b *testing.B) {
	s, db := newStore(b)
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			e := minimalEntry(fmt.Sprintf("apt-%d", i))
			e.Patient.ID = fmt.Sprintf("pat-%d", i%1000)
			if _, err := s.Write(ctx, batch(e)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
	b.ReportMetric(float64(b.N)/float64(transactions(b, db)), "requests/tx")
}
