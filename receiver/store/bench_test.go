package store

import (
	"context"
	"database/sql/driver"
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
		if _, err := s.Write(ctx, batch(newAppointments(&n, 100)...)); err != nil {
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

// BenchmarkWriteLayout is the receiver's own part of a write, without the
// database: hashing the entries and laying a group's requests out as the
// statement's arguments, in their wire form. Groups of 8 one-entry
// requests and one 100-entry request.
func BenchmarkWriteLayout(b *testing.B) {
	for _, c := range []struct{ requests, entries int }{{8, 1}, {1, 100}} {
		b.Run(fmt.Sprintf("%dx%d", c.requests, c.entries), func(b *testing.B) {
			batches := make([]Batch, c.requests)
			for r := range batches {
				entries := make([]payload.Entry, c.entries)
				for i := range entries {
					entries[i] = specEntry()
					entries[i].Appointment.ID = fmt.Sprintf("apt-%d-%d", r, i)
				}
				batches[r] = batch(entries...)
			}
			for b.Loop() {
				group := make([]*prepared, len(batches))
				for i, bt := range batches {
					p, err := prepare(bt)
					if err != nil {
						b.Fatal(err)
					}
					group[i] = p
				}
				for _, a := range writeArgs(group, false) {
					if v, ok := a.(driver.Valuer); ok {
						if _, err := v.Value(); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*c.requests*c.entries), "ns/entry")
		})
	}
}

// newAppointments makes count new appointments numbered on from *n, their
// patients taken from a pool of 1,000.
func newAppointments(n *int, count int) []payload.Entry {
	entries := make([]payload.Entry, count)
	for i := range entries {
		*n++
		entries[i] = minimalEntry(fmt.Sprintf("apt-%d", *n))
		entries[i].Patient.ID = fmt.Sprintf("pat-%d", *n%1000)
	}
	return entries
}

// BenchmarkWriteQuarantine writes requests of 90 new appointments and 10
// invalid entries under quarantine, so the full statement: "new" keeps 10
// new invalid entries each time, "retried" sends the same 10 again (after
// the first request they are already held).
func BenchmarkWriteQuarantine(b *testing.B) {
	for _, retried := range []bool{false, true} {
		name := "new"
		if retried {
			name = "retried"
		}
		b.Run(name, func(b *testing.B) {
			s, _ := newStore(b)
			ctx := context.Background()
			n := 0
			for b.Loop() {
				bt := batch(newAppointments(&n, 90)...)
				bt.Delivery.Outcome = OutcomeQuarantined
				for i := range 10 {
					id := fmt.Sprintf("bad-%d-%d", n, i)
					if retried {
						id = fmt.Sprintf("bad-%d", i)
					}
					bt.Quarantined = append(bt.Quarantined, Quarantined{Index: 90 + i,
						Raw: fmt.Appendf(nil, `{"appointment":{"id":%q,"start_time":"13/45/2026 99:99"},"patient":{"first_name":"Zoë"}}`, id),
						Errors: []payload.FieldError{{Index: 90 + i, Field: fmt.Sprintf("appointments[%d].appointment.start_time", 90+i),
							Message: "must be a date and time MM/DD/YYYY HH:MM"}}})
				}
				if _, err := s.Write(ctx, bt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
