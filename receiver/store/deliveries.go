package store

import (
	"context"
	"fmt"
	"time"

	"github.com/lib/pq"
)

// RecordDeliveries logs authenticated requests that were answered with an
// error, all in one statement: the receiver's delivery log gathers them so
// that a flood of rejected requests is a few writes, not one per request.
func (s *Store) RecordDeliveries(ctx context.Context, ds []Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	n := len(ds)
	var (
		ehr, requestID, received, outcome = make(pq.StringArray, n), make(pq.StringArray, n), make(pq.StringArray, n), make(pq.StringArray, n)
		sha                               = make(pq.ByteaArray, n)
		items, status                     = make(pq.Int64Array, n), make(pq.Int64Array, n)
	)
	for i, d := range ds {
		if err := d.check(); err != nil {
			return fmt.Errorf("RecordDeliveries: delivery %d: %w", i, err)
		}
		ehr[i], requestID[i], outcome[i] = d.EHR, d.RequestID, string(d.Outcome)
		// The zone offset travels with the instant.
		received[i] = d.ReceivedAt.Format(time.RFC3339Nano)
		sha[i] = d.BodySHA256[:]
		items[i], status[i] = int64(d.ItemCount), int64(d.StatusCode)
	}
	_, err := s.db.ExecContext(ctx, `
		INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
		SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bytea[], $5::integer[], $6::text[], $7::integer[])`,
		ehr, requestID, received, sha, items, outcome, status)
	return wrap("RecordDeliveries", err)
}
