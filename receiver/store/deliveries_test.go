package store

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// TestRecordDeliveries: one statement writes every record, each field
// exactly, and a record the table cannot take fails the whole call.
func TestRecordDeliveries(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	at := time.Date(2026, 3, 10, 14, 30, 0, 123456000, newYork)
	var ds []Delivery
	for i := range 300 {
		ds = append(ds, Delivery{EHR: ehr, RequestID: fmt.Sprintf("rd-%d", i), ReceivedAt: at.Add(time.Duration(i) * time.Millisecond),
			BodySHA256: sha256.Sum256(fmt.Appendf(nil, "rd %d", i)), ItemCount: i % 7, Outcome: OutcomeBadSignature, StatusCode: 401})
	}
	ds[1].Outcome, ds[1].StatusCode, ds[1].ItemCount = OutcomeRejected, 422, 3
	if err := s.RecordDeliveries(context.Background(), ds); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries WHERE request_id LIKE 'rd-%'`); n != len(ds) {
		t.Errorf("%d rows, want %d", n, len(ds))
	}
	for _, i := range []int{0, 1, 299} {
		var (
			outcome     string
			status, n   int
			sha         []byte
			received    time.Time
			ehrOfRecord string
		)
		err := db.QueryRow(`SELECT ehr, received_at, body_sha256, item_count, outcome, status_code FROM webhook_deliveries WHERE request_id = $1`,
			ds[i].RequestID).Scan(&ehrOfRecord, &received, &sha, &n, &outcome, &status)
		if err != nil {
			t.Fatal(err)
		}
		d := ds[i]
		if ehrOfRecord != d.EHR || !received.Equal(d.ReceivedAt) || string(sha) != string(d.BodySHA256[:]) ||
			n != d.ItemCount || outcome != string(d.Outcome) || status != d.StatusCode {
			t.Errorf("row %d: %s %s %x %d %s %d, want %+v", i, ehrOfRecord, received, sha, n, outcome, status, d)
		}
	}
	if err := s.RecordDeliveries(context.Background(), nil); err != nil {
		t.Errorf("no records: %v", err)
	}
	bad := []Delivery{ds[0], ds[0]}
	bad[1].Outcome = ""
	if err := s.RecordDeliveries(context.Background(), bad); err == nil {
		t.Error("a record without an outcome was accepted")
	}
	bad[1] = ds[0]
	bad[1].ItemCount = -1 // the table's CHECK refuses it
	bad[0].RequestID = "rd-refused"
	if err := s.RecordDeliveries(context.Background(), bad); err == nil {
		t.Error("a record the table refuses was accepted")
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries WHERE request_id = 'rd-refused'`); n != 0 {
		t.Errorf("a failed call wrote %d rows", n)
	}
}

// fieldErrors are n errors of entries 0..n-1, as payload words them.
func fieldErrors(n int) []payload.FieldError {
	errs := make([]payload.FieldError, n)
	for i := range errs {
		errs[i] = payload.FieldError{Index: i, Field: fmt.Sprintf("appointments[%d].patient.birth_date", i), Message: "must be a real calendar date"}
	}
	return errs
}

// TestRecordDeliveriesFieldErrors: a refused request's field errors go
// with its row, as a JSON array with the count the answer listed; a row
// without them has NULL in both; a record past the bounds is refused, and
// Write, whose deliveries have none, refuses them. `deliveries show`'s
// read returns them, list's leaves them out.
func TestRecordDeliveriesFieldErrors(t *testing.T) {
	t.Parallel()
	s, db := newStore(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Minute)
	d := func(req string, o Outcome, status, count int, errs []payload.FieldError) Delivery {
		return Delivery{EHR: ehr, RequestID: req, ReceivedAt: at, BodySHA256: sha256.Sum256([]byte(req)), ItemCount: 4,
			Outcome: o, StatusCode: status, FieldErrorCount: count, FieldErrors: errs}
	}
	malformed := []payload.FieldError{{Index: -1, Field: "", Message: `malformed JSON at byte offset 18: "quoted" \ back`}}
	ds := []Delivery{
		d("fe-rejected", OutcomeRejected, 422, 3, fieldErrors(3)),
		d("fe-many", OutcomeRejected, 422, 37, fieldErrors(MaxFieldErrors)),
		d("fe-none-kept", OutcomeRejected, 422, 5, nil),
		d("fe-malformed", OutcomeInvalidBody, 400, 1, malformed),
		d("fe-signature", OutcomeBadSignature, 401, 0, nil),
	}
	if err := s.RecordDeliveries(ctx, ds); err != nil {
		t.Fatal(err)
	}
	stored := func(req string) string {
		t.Helper()
		var got string
		if err := db.QueryRow(`SELECT coalesce(field_error_count::text, 'NULL') || ' ' || coalesce(field_errors::text, 'NULL')
			FROM webhook_deliveries WHERE request_id = $1`, req).Scan(&got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	for req, want := range map[string]string{
		"fe-rejected": `3 [{"field": "appointments[0].patient.birth_date", "index": 0, "message": "must be a real calendar date"}, ` +
			`{"field": "appointments[1].patient.birth_date", "index": 1, "message": "must be a real calendar date"}, ` +
			`{"field": "appointments[2].patient.birth_date", "index": 2, "message": "must be a real calendar date"}]`,
		"fe-none-kept": "5 []",
		"fe-malformed": `1 [{"field": "", "index": -1, "message": "malformed JSON at byte offset 18: \"quoted\" \\ back"}]`,
		"fe-signature": "NULL NULL",
	} {
		if got := stored(req); got != want {
			t.Errorf("%s stored %s\nwant %s", req, got, want)
		}
	}
	if n := count(t, db, `SELECT jsonb_array_length(field_errors) FROM webhook_deliveries WHERE request_id = 'fe-many'`); n != MaxFieldErrors {
		t.Errorf("fe-many kept %d errors, want %d", n, MaxFieldErrors)
	}

	byReq := map[string]DeliveryRecord{}
	err := s.EachDeliveryWithEntries(ctx, DeliveryFilter{EHR: ehr}, false, func(r DeliveryRecord) error {
		byReq[r.RequestID] = r
		return nil
	}, func(QuarantineRecord) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range ds {
		got := byReq[want.RequestID]
		if got.FieldErrorCount != want.FieldErrorCount || !slices.Equal(got.FieldErrors, want.FieldErrors) {
			t.Errorf("%s read back with %d errors %v, want %d %v", want.RequestID, got.FieldErrorCount, got.FieldErrors,
				want.FieldErrorCount, want.FieldErrors)
		}
	}
	err = s.EachDelivery(ctx, DeliveryFilter{RequestID: "fe-rejected"}, func(r DeliveryRecord) error {
		if r.FieldErrorCount != 0 || r.FieldErrors != nil {
			t.Errorf("EachDelivery (list) read field errors: %+v", r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	for _, bad := range []Delivery{
		d("fe-too-many", OutcomeRejected, 422, 50, fieldErrors(MaxFieldErrors+1)),
		d("fe-miscounted", OutcomeRejected, 422, 2, fieldErrors(3)),
	} {
		if err := s.RecordDeliveries(ctx, []Delivery{bad}); err == nil {
			t.Errorf("%s (%d errors, count %d) was accepted", bad.RequestID, len(bad.FieldErrors), bad.FieldErrorCount)
		}
	}
	b := batch()
	b.Delivery.FieldErrorCount, b.Delivery.FieldErrors = 1, fieldErrors(1)
	if _, err := s.Write(ctx, b); err == nil || !strings.Contains(err.Error(), "no field errors") {
		t.Errorf("Write of a delivery with field errors: %v, want refused", err)
	}
	if n := count(t, db, `SELECT count(*) FROM webhook_deliveries WHERE request_id LIKE 'fe-%'`); n != len(ds) {
		t.Errorf("%d rows, want the %d recorded", n, len(ds))
	}
}
