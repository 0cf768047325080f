package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// DeliveryFilter selects rows of webhook_deliveries; a zero field selects
// everything. It is what `ehr-operator deliveries` filters by.
type DeliveryFilter struct {
	EHR       string
	RequestID string
	Outcome   Outcome
	// IDs, when not empty, are the deliveries' ids.
	IDs []int64
	// Since (inclusive) and Until (exclusive) bound received_at.
	Since, Until time.Time
	// Limit is the most rows returned; 0 is no limit.
	Limit int
}

// DeliveryRecord is a row of webhook_deliveries and the count of its
// quarantined entries. It holds no patient data.
type DeliveryRecord struct {
	ID          int64     `json:"id"`
	EHR         string    `json:"ehr"`
	RequestID   string    `json:"requestId"`
	ReceivedAt  time.Time `json:"receivedAt"`
	BodySHA256  string    `json:"bodySha256"`
	ItemCount   int       `json:"itemCount"`
	Outcome     Outcome   `json:"outcome"`
	StatusCode  int       `json:"statusCode"`
	Quarantined int       `json:"quarantined"`
	// Pending is the quarantined entries neither replayed nor emptied by
	// retention: what a replay would look at.
	Pending int `json:"pending"`
}

// where renders f's conditions on the webhook_deliveries row aliased d,
// appending their arguments.
func (f DeliveryFilter) where(args []any) (string, []any) {
	var conds []string
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if f.EHR != "" {
		add("d.ehr = ?", f.EHR)
	}
	if f.RequestID != "" {
		add("d.request_id = ?", f.RequestID)
	}
	if f.Outcome != "" {
		add("d.outcome = ?", string(f.Outcome))
	}
	if len(f.IDs) > 0 {
		add("d.id = ANY(?)", pq.Array(f.IDs))
	}
	if !f.Since.IsZero() {
		add("d.received_at >= ?", f.Since)
	}
	if !f.Until.IsZero() {
		add("d.received_at < ?", f.Until)
	}
	if len(conds) == 0 {
		return "true", args
	}
	return strings.Join(conds, " AND "), args
}

// Deliveries lists the deliveries f selects, newest first.
func (s *Store) Deliveries(ctx context.Context, f DeliveryFilter) ([]DeliveryRecord, error) {
	where, args := f.where(nil)
	q := `SELECT d.id, d.ehr, d.request_id, d.received_at, encode(d.body_sha256, 'hex'), d.item_count,
    d.outcome, d.status_code,
    (SELECT count(*) FROM quarantined_entries q WHERE q.delivery_id = d.id),
    (SELECT count(*) FROM quarantined_entries q WHERE q.delivery_id = d.id
        AND q.replayed_at IS NULL AND q.raw IS NOT NULL)
FROM webhook_deliveries d WHERE ` + where + ` ORDER BY d.received_at DESC, d.id DESC`
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, wrap("Deliveries", err)
	}
	defer rows.Close()
	var out []DeliveryRecord
	for rows.Next() {
		var r DeliveryRecord
		if err := rows.Scan(&r.ID, &r.EHR, &r.RequestID, &r.ReceivedAt, &r.BodySHA256, &r.ItemCount,
			&r.Outcome, &r.StatusCode, &r.Quarantined, &r.Pending); err != nil {
			return nil, wrap("Deliveries", err)
		}
		out = append(out, r)
	}
	return out, wrap("Deliveries", rows.Err())
}

// QuarantineFilter selects quarantined entries by their delivery (Delivery,
// whose Limit is ignored) and by their own state.
type QuarantineFilter struct {
	Delivery DeliveryFilter
	// Pending keeps the entries neither replayed nor emptied by retention.
	Pending bool
	// Dropped keeps the entries not replayed whose content retention
	// removed: they can never be replayed.
	Dropped bool
	// After keeps the entries after it in (delivery, entry index) order, the
	// order of the list: pages.
	After QuarantineKey
	// Limit is the most rows returned; 0 is no limit.
	Limit int
	// WithContent reads each entry's raw bytes (patient data); without it
	// Raw stays nil.
	WithContent bool
}

// QuarantineKey orders quarantined entries: by delivery, then by their
// index in it.
type QuarantineKey struct {
	DeliveryID int64
	EntryIndex int
}

// QuarantineRecord is a quarantined entry with what a replay needs of its
// delivery. Raw is patient data: nil unless asked for.
type QuarantineRecord struct {
	ID         int64     `json:"id"`
	DeliveryID int64     `json:"deliveryId"`
	EHR        string    `json:"ehr"`
	RequestID  string    `json:"requestId"`
	ReceivedAt time.Time `json:"receivedAt"`
	// BodySHA256 is the delivery's, hex.
	BodySHA256 string               `json:"bodySha256"`
	EntryIndex int                  `json:"entryIndex"`
	CreatedAt  time.Time            `json:"createdAt"`
	ReplayedAt *time.Time           `json:"replayedAt,omitempty"`
	Errors     []payload.FieldError `json:"errors"`
	// ContentDropped: retention removed the raw entry; it cannot be replayed.
	ContentDropped bool            `json:"contentDropped"`
	Raw            json.RawMessage `json:"raw,omitempty"`
}

// QuarantinedEntries lists the quarantined entries f selects, by delivery
// and entry index (one delivery's entries are adjacent).
func (s *Store) QuarantinedEntries(ctx context.Context, f QuarantineFilter) ([]QuarantineRecord, error) {
	where, args := f.Delivery.where(nil)
	raw := "NULL::bytea"
	if f.WithContent {
		raw = "q.raw"
	}
	q := `SELECT q.id, q.delivery_id, d.ehr, d.request_id, d.received_at, encode(d.body_sha256, 'hex'),
    q.entry_index, q.created_at, q.replayed_at, q.errors, q.raw IS NULL, ` + raw + `
FROM quarantined_entries q JOIN webhook_deliveries d ON d.id = q.delivery_id
WHERE ` + where
	if f.Pending {
		q += " AND q.replayed_at IS NULL AND q.raw IS NOT NULL"
	}
	if f.Dropped {
		q += " AND q.replayed_at IS NULL AND q.raw IS NULL"
	}
	if f.After != (QuarantineKey{}) {
		args = append(args, f.After.DeliveryID, f.After.EntryIndex)
		q += fmt.Sprintf(" AND (q.delivery_id, q.entry_index) > ($%d, $%d)", len(args)-1, len(args))
	}
	q += " ORDER BY q.delivery_id, q.entry_index"
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, wrap("QuarantinedEntries", err)
	}
	defer rows.Close()
	var out []QuarantineRecord
	for rows.Next() {
		var (
			r      QuarantineRecord
			errs   []byte
			raw    []byte
			replay *time.Time
		)
		if err := rows.Scan(&r.ID, &r.DeliveryID, &r.EHR, &r.RequestID, &r.ReceivedAt, &r.BodySHA256,
			&r.EntryIndex, &r.CreatedAt, &replay, &errs, &r.ContentDropped, &raw); err != nil {
			return nil, wrap("QuarantinedEntries", err)
		}
		r.ReplayedAt = replay
		if err := json.Unmarshal(errs, &r.Errors); err != nil {
			return nil, fmt.Errorf("QuarantinedEntries: entry %d: while reading its errors: %w", r.ID, err)
		}
		if raw != nil {
			r.Raw = json.RawMessage(raw)
		}
		out = append(out, r)
	}
	return out, wrap("QuarantinedEntries", rows.Err())
}

// replayLockClass is the first key of the replay's advisory lock; the
// second is the EHR's hashtext.
const replayLockClass int32 = 0x65687270 // "ehrp"

// ErrReplayRunning: another replay of the EHR holds its lock.
var ErrReplayRunning = errors.New("another replay of this EHR is running; run this one when it has ended")

// LockReplay takes the EHR's replay lock, without waiting: two replays at
// once would each write a replay delivery for the same entries (the data
// stays right, the delivery log does not). unlock releases it.
func (s *Store) LockReplay(ctx context.Context, ehr string) (unlock func(), err error) {
	conn, unlock, err := s.tryAdvisoryLock(ctx, "LockReplay",
		`pg_try_advisory_lock($1, hashtext($2))`, `pg_advisory_unlock($1, hashtext($2))`, replayLockClass, ehr)
	if err != nil {
		return nil, err
	}
	if conn == nil {
		return nil, ErrReplayRunning
	}
	return unlock, nil
}
