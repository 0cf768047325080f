package store

import (
	"context"
	"fmt"
	"testing"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// BenchmarkWriteLargeHistory writes batches of 100 new appointments into an
// EHR whose appointment_history already holds 50,000 rows. The content-hash
// check must probe the history once per entry by index; it once read every
// history row of the EHR for every statement (a hash anti-join), so writes
// slowed down as the table grew (docs/performance.md).
// Run: go test -run '^$' -bench LargeHistory ./receiver/store/
func BenchmarkWriteLargeHistory(b *testing.B) {
	s, db := newStore(b)
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `
		WITH d AS (
		    INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
		    VALUES ($1, 'prefill', now(), sha256('prefill'), 50000, 'stored', 200) RETURNING id
		), p AS (
		    INSERT INTO patients (ehr, external_id, first_name, last_name, birth_date, gender)
		    SELECT $1, 'old-pat-' || i, 'A', 'B', '1970-01-01', 'Other' FROM generate_series(1, 50000) i
		), r AS (
		    INSERT INTO practitioners (ehr, external_id, first_name, last_name) VALUES ($1, 'old-prov', 'C', 'D')
		), a AS (
		    INSERT INTO appointments (ehr, external_id, patient_external_id, practitioner_external_id, status, status_raw,
		        start_time, start_date, created_time, type, content_hash, delivery_id)
		    SELECT $1, 'old-' || i, 'old-pat-' || i, 'old-prov', 'booked', 'booked', now(), now(), now(), 'T',
		        sha256(('old-' || i)::bytea), (SELECT id FROM d)
		    FROM generate_series(1, 50000) i
		    RETURNING external_id, status, start_time, content_hash, delivery_id
		)
		INSERT INTO appointment_history (ehr, appointment_external_id, status, start_time, content_hash, delivery_id)
		SELECT $1, external_id, status, start_time, content_hash, delivery_id FROM a`, ehr); err != nil {
		b.Fatalf("while filling the history: %v", err)
	}
	n := 0
	for b.Loop() {
		entries := make([]payload.Entry, 100)
		for i := range entries {
			n++
			entries[i] = minimalEntry(fmt.Sprintf("apt-%d", n))
		}
		if _, err := s.Write(ctx, batch(entries...)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(100*b.N)/b.Elapsed().Seconds(), "appointments/s")
}
