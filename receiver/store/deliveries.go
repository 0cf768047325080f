package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// RecordDeliveries logs authenticated requests that were answered with an
// error, all in one statement: the receiver's delivery log gathers them so
// that a flood of rejected requests is a few writes, not one per request.
// Every record must be for the same EHR (a receiver serves one). A refused
// request's field errors (Delivery.FieldErrors) go with its row.
func (s *Store) RecordDeliveries(ctx context.Context, ds []Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	rows := make([]recordRow, len(ds))
	size := 128 * len(ds)
	for i, d := range ds {
		if err := d.check(); err != nil {
			return fmt.Errorf("RecordDeliveries: delivery %d: %w", i, err)
		}
		if d.EHR != ds[0].EHR {
			return fmt.Errorf("RecordDeliveries: delivery %d is for another EHR than delivery 0", i)
		}
		rows[i].Delivery = d
		if d.FieldErrorCount == 0 {
			continue
		}
		// [] when the receiver kept none of them: the count still says
		// that the answer listed some.
		errs := d.FieldErrors
		if errs == nil {
			errs = []payload.FieldError{}
		}
		j, err := json.Marshal(errs)
		if err != nil {
			return fmt.Errorf("RecordDeliveries: delivery %d: while encoding its field errors: %w", i, err)
		}
		e := string(j)
		rows[i].errors = &e
		size += len(e) + len(e)/8 // quotes and backslashes escaped
	}
	p := &prepared{deliveryRow: recordArrays.encode(rows, size/len(ds))}
	args := appendArrays([]any{ds[0].EHR}, []*prepared{p}, len(recordArrays.names), func(p *prepared) *elements { return &p.deliveryRow })
	_, err := s.db.ExecContext(ctx, recordSQL, args...)
	return wrap("RecordDeliveries", err)
}
