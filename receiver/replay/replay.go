// Package replay stores quarantined entries that are valid now
// (docs/operations.md, "Deliveries and replay"). Each entry is validated
// again by receiver/payload with today's rules, time zone and date, and
// the valid ones are written by receiver/store's Write, exactly as a
// delivery's entries are: the same statement, content-hash idempotency,
// history rows and order under retries. The same statement marks them
// replayed.
package replay

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// Store is what a replay needs of receiver/store.Store.
type Store interface {
	EachQuarantined(ctx context.Context, f store.QuarantineFilter, fn func(store.QuarantineRecord) error) error
	Write(ctx context.Context, b store.Batch) (store.Result, error)
	LockReplay(ctx context.Context, ehr string) (unlock func(), err error)
}

// Options say which entries to replay and how to read them.
type Options struct {
	// Filter selects the deliveries whose pending entries are replayed;
	// Filter.EHR is required (the time zone is the EHR's).
	Filter store.DeliveryFilter
	// Location is the EHR's time zone today (spec.timeZone).
	Location *time.Location
	// Now is the clock: "in the future" and the replay's received time.
	Now func() time.Time
	// DryRun validates and reports without writing.
	DryRun bool
}

// pageSize is how many quarantined entries one query reads at most, and
// pageBytes how much of their content (at least one entry's): what a
// replay holds in memory at a time. Variables for the tests of pages.
var (
	pageSize  = 500
	pageBytes = 4 << 20
)

// Report is what a replay did. It holds no patient data: ids, counts and
// field errors, whose messages never quote a value.
type Report struct {
	// Examined is the pending entries read; Valid of them validate today.
	Examined int `json:"examined"`
	Valid    int `json:"valid"`
	// Deliveries is the replay deliveries written, one per original
	// delivery with a valid entry.
	Deliveries int `json:"deliveries"`
	// Written, Duplicates and Superseded are Write's counts over the
	// valid entries.
	Written    int `json:"written"`
	Duplicates int `json:"duplicates"`
	Superseded int `json:"superseded"`
	// StillInvalid are the entries that fail today too; they stay pending.
	StillInvalid []Invalid `json:"stillInvalid"`
	// ContentDropped is the entries the filter selects that were never
	// replayed and whose content retention removed: appointments no replay
	// can bring back.
	ContentDropped int `json:"contentDropped"`
}

// Invalid is a quarantined entry that still fails validation.
type Invalid struct {
	ID         int64                `json:"id"`
	DeliveryID int64                `json:"deliveryId"`
	RequestID  string               `json:"requestId"`
	EntryIndex int                  `json:"entryIndex"`
	Errors     []payload.FieldError `json:"errors"`
}

// Run replays the pending quarantined entries opts selects, one original
// delivery at a time.
func Run(ctx context.Context, st Store, opts Options) (Report, error) {
	var rep Report
	if opts.Filter.EHR == "" {
		return rep, errors.New("replay: the EHR is required (its time zone reads the entries)")
	}
	if opts.Location == nil {
		return rep, errors.New("replay: the time zone is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if !opts.DryRun {
		unlock, err := st.LockReplay(ctx, opts.Filter.EHR)
		if err != nil {
			return rep, err
		}
		defer unlock()
	}
	var after store.QuarantineKey
	for {
		var page []store.QuarantineRecord
		err := st.EachQuarantined(ctx, store.QuarantineFilter{
			Delivery: opts.Filter, Pending: true, After: after, Limit: pageSize, MaxBytes: pageBytes, WithContent: true,
		}, func(q store.QuarantineRecord) error {
			page = append(page, q)
			return nil
		})
		if err != nil {
			return rep, err
		}
		if len(page) == 0 {
			err := st.EachQuarantined(ctx, store.QuarantineFilter{Delivery: opts.Filter, Dropped: true},
				func(store.QuarantineRecord) error {
					rep.ContentDropped++
					return nil
				})
			return rep, err
		}
		last := page[len(page)-1]
		after = store.QuarantineKey{DeliveryID: last.DeliveryID, EntryIndex: last.EntryIndex}
		// A delivery cut by the page's end is finished on the next page,
		// in a replay delivery of its own.
		for start := 0; start < len(page); {
			end := start + 1
			for end < len(page) && page[end].DeliveryID == page[start].DeliveryID {
				end++
			}
			if err := replayDelivery(ctx, st, opts, page[start:end], &rep); err != nil {
				return rep, err
			}
			start = end
		}
	}
}

// replayDelivery validates one delivery's pending entries and writes the
// valid ones as one batch.
func replayDelivery(ctx context.Context, st Store, opts Options, qs []store.QuarantineRecord, rep *Report) error {
	now := opts.Now()
	var (
		entries  []payload.Entry
		versions []store.Version
		ids      []int64
	)
	for _, q := range qs {
		rep.Examined++
		e, errs := Validate(q, opts.Location, now)
		if len(errs) > 0 {
			rep.StillInvalid = append(rep.StillInvalid, Invalid{
				ID: q.ID, DeliveryID: q.DeliveryID, RequestID: q.RequestID, EntryIndex: q.EntryIndex, Errors: errs,
			})
			continue
		}
		rep.Valid++
		entries = append(entries, e)
		// First received just before the original delivery: a version
		// stored since is not undone (the entry is superseded), as with a
		// sender's retry, and neither is one that delivery itself stored
		// (a later entry of its batch for the same appointment, which won
		// there). A version first received at the same instant would
		// otherwise not count as newer.
		versions = append(versions, store.Version{Hash: store.ContentHash(e), FirstReceived: q.ReceivedAt.Add(-time.Microsecond)})
		ids = append(ids, q.ID)
	}
	if len(entries) == 0 || opts.DryRun {
		return nil
	}
	var sum [32]byte
	if b, err := hex.DecodeString(qs[0].BodySHA256); err == nil && len(b) == len(sum) {
		copy(sum[:], b)
	}
	res, err := st.Write(ctx, store.Batch{
		Delivery: store.Delivery{
			EHR: qs[0].EHR, RequestID: qs[0].RequestID, ReceivedAt: now, BodySHA256: sum,
			ItemCount: len(entries), Outcome: store.OutcomeReplayed, StatusCode: http.StatusOK,
		},
		Entries:  entries,
		Versions: versions,
		Replayed: ids,
	})
	if err != nil {
		return fmt.Errorf("replay: delivery %d: %w", qs[0].DeliveryID, err)
	}
	rep.Deliveries++
	rep.Written += res.Written
	rep.Duplicates += res.Duplicates
	rep.Superseded += res.Superseded
	return nil
}

// Validate checks one quarantined entry as the receiver checks an entry of
// a delivery, with loc and now. Paths read as the array form's
// ("appointments[3].patient.gender"): the stored entry does not say which
// form it came in.
func Validate(q store.QuarantineRecord, loc *time.Location, now time.Time) (payload.Entry, []payload.FieldError) {
	it := payload.Item{Index: q.EntryIndex, Path: fmt.Sprintf("appointments[%d]", q.EntryIndex), Raw: q.Raw}
	valid, invalid := payload.Validate([]payload.Item{it}, loc, now)
	if len(invalid) > 0 {
		return payload.Entry{}, invalid[0].Errors
	}
	return valid[0], nil
}
