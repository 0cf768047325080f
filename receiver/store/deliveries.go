package store

import (
	"context"
	"fmt"
)

// RecordDeliveries logs authenticated requests that were answered with an
// error, all in one statement: the receiver's delivery log gathers them so
// that a flood of rejected requests is a few writes, not one per request.
// Every record must be for the same EHR (a receiver serves one).
func (s *Store) RecordDeliveries(ctx context.Context, ds []Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	for i, d := range ds {
		if err := d.check(); err != nil {
			return fmt.Errorf("RecordDeliveries: delivery %d: %w", i, err)
		}
		if d.EHR != ds[0].EHR {
			return fmt.Errorf("RecordDeliveries: delivery %d is for another EHR than delivery 0", i)
		}
	}
	p := &prepared{deliveryRow: deliveryArrays.encode(ds, 128*len(ds))}
	args := appendArrays([]any{ds[0].EHR}, []*prepared{p}, len(deliveryArrays.names), func(p *prepared) *elements { return &p.deliveryRow })
	_, err := s.db.ExecContext(ctx, recordSQL, args...)
	return wrap("RecordDeliveries", err)
}
