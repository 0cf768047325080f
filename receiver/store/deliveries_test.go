package store

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"
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
