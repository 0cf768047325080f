package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// quarantinedBatch is a delivery whose entries all went to quarantine,
// each entry raw as sent.
func quarantinedBatch(raws ...string) Batch {
	b := batch()
	b.Delivery.Outcome, b.Delivery.ItemCount = OutcomeQuarantined, len(raws)
	for i, r := range raws {
		b.Quarantined = append(b.Quarantined, Quarantined{Index: i, Raw: []byte(r), Errors: []payload.FieldError{
			{Index: i, Field: fmt.Sprintf("appointments[%d].patient.gender", i), Message: "must be one of …"}}})
	}
	return b
}

// Deliveries newest first, each followed by its entries in index order; a
// delivery without entries too; the limit counts deliveries, not rows.
func TestEachDeliveryWithEntries(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	mustWrite(t, s, batch())
	mustWrite(t, s, quarantinedBatch(`{"a":0}`, `{"a":1}`, `{"a":2}`))
	mustWrite(t, s, quarantinedBatch(`{"b":0}`, `{"b":1}`))

	read := func(f DeliveryFilter, content bool) []string {
		t.Helper()
		var got []string
		err := s.EachDeliveryWithEntries(context.Background(), f, content, func(d DeliveryRecord) error {
			got = append(got, fmt.Sprintf("delivery %d (%d quarantined, %d pending)", d.ItemCount, d.Quarantined, d.Pending))
			return nil
		}, func(q QuarantineRecord) error {
			got = append(got, fmt.Sprintf("entry %d %s %s", q.EntryIndex, q.Raw, q.Errors[0].Field))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	want := []string{
		"delivery 2 (2 quarantined, 2 pending)",
		`entry 0 {"b":0} appointments[0].patient.gender`,
		`entry 1 {"b":1} appointments[1].patient.gender`,
		"delivery 3 (3 quarantined, 3 pending)",
		`entry 0 {"a":0} appointments[0].patient.gender`,
		`entry 1 {"a":1} appointments[1].patient.gender`,
		`entry 2 {"a":2} appointments[2].patient.gender`,
		"delivery 0 (0 quarantined, 0 pending)",
	}
	if got := read(DeliveryFilter{EHR: ehr}, true); !slices.Equal(got, want) {
		t.Errorf("read\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := read(DeliveryFilter{EHR: ehr, Limit: 2}, false); len(got) != 7 || strings.Contains(strings.Join(got, ""), `{"`) {
		t.Errorf("limit 2 without content read\n%s\nwant the first two deliveries' 7 rows, no content", strings.Join(got, "\n"))
	}
}

// An error of the callback stops the query and comes back as it is.
func TestEachStopsAtTheCallbacksError(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	mustWrite(t, s, quarantinedBatch(`{"a":0}`, `{"a":1}`, `{"a":2}`))
	stop := errors.New("stop")
	calls := 0
	err := s.EachQuarantined(context.Background(), QuarantineFilter{WithContent: true}, func(QuarantineRecord) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("EachQuarantined: %v after %d calls, want the callback's error after 1", err, calls)
	}
	// The store goes on.
	n := 0
	if err := s.EachDelivery(context.Background(), DeliveryFilter{}, func(DeliveryRecord) error { n++; return nil }); err != nil || n != 1 {
		t.Errorf("EachDelivery after a stop: %d deliveries, %v", n, err)
	}
}

// Pages by content: MaxBytes ends a page before the entry that would pass
// it, a larger entry has a page of its own, and every entry is read once.
func TestEachQuarantinedMaxBytes(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	// Each entry distinct: identical pending ones are kept once.
	letter := 'a'
	sized := func(n int) string {
		letter++
		return `"` + strings.Repeat(string(letter), n-2) + `"`
	}
	mustWrite(t, s, quarantinedBatch(sized(100), sized(100), sized(300)))
	mustWrite(t, s, quarantinedBatch(sized(50), sized(50), sized(50), sized(50)))

	var pages []int
	f := QuarantineFilter{Pending: true, WithContent: true, MaxBytes: 250, Limit: 3}
	for {
		size, n := 0, 0
		err := s.EachQuarantined(context.Background(), f, func(q QuarantineRecord) error {
			size += len(q.Raw)
			n++
			f.After = QuarantineKey{DeliveryID: q.DeliveryID, EntryIndex: q.EntryIndex}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		pages = append(pages, size)
	}
	// 100+100 | 300 | 50+50+50 (the limit) | 50
	if want := []int{200, 300, 150, 50}; fmt.Sprint(pages) != fmt.Sprint(want) {
		t.Errorf("pages of %v bytes, want %v", pages, want)
	}
}
