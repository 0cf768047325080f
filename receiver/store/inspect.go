package store

import (
	"context"
	"database/sql"
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
	// FieldErrorCount is how many errors the answer to a refused request
	// listed (outcome rejected or invalid_body), and FieldErrors the first
	// of them (at most MaxFieldErrors; fewer, or none, when the receiver
	// could not keep them: Delivery.FieldErrors). Paths and rules, never a
	// value. Only EachDeliveryWithEntries (`deliveries show`) reads them.
	FieldErrorCount int                  `json:"fieldErrorCount,omitempty"`
	FieldErrors     []payload.FieldError `json:"fieldErrors,omitempty"`
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

// deliveryRecordColumns are a DeliveryRecord's, of the webhook_deliveries
// row aliased d, in scanDelivery's order.
const deliveryRecordColumns = `d.id, d.ehr, d.request_id, d.received_at, encode(d.body_sha256, 'hex') AS body_sha256,
    d.item_count, d.outcome, d.status_code,
    (SELECT count(*) FROM quarantined_entries q WHERE q.delivery_id = d.id) AS quarantined,
    (SELECT count(*) FROM quarantined_entries q WHERE q.delivery_id = d.id
        AND q.replayed_at IS NULL AND q.raw IS NOT NULL) AS pending`

// deliveryErrorsColumns are a DeliveryRecord's field errors, of the
// webhook_deliveries row aliased d, in deliveryErrorsScan's order.
const deliveryErrorsColumns = `d.field_errors, d.field_error_count`

// deliveryErrorsScan holds deliveryErrorsColumns as scanned: NULL for a
// delivery whose answer listed none.
type deliveryErrorsScan struct {
	errors []byte
	count  *int
}

func (e *deliveryErrorsScan) dest() []any { return []any{&e.errors, &e.count} }

// fill sets d's field errors from the row.
func (e *deliveryErrorsScan) fill(d *DeliveryRecord) error {
	d.FieldErrorCount, d.FieldErrors = 0, nil
	if e.count != nil {
		d.FieldErrorCount = *e.count
	}
	if e.errors == nil {
		return nil
	}
	if err := json.Unmarshal(e.errors, &d.FieldErrors); err != nil {
		return fmt.Errorf("delivery %d: while reading its field errors: %w", d.ID, err)
	}
	if len(d.FieldErrors) == 0 {
		d.FieldErrors = nil
	}
	return nil
}

// deliveriesSQL selects the deliveries f selects, newest first; withErrors,
// their field errors too (deliveryErrorsColumns, after
// deliveryRecordColumns).
func (f DeliveryFilter) deliveriesSQL(withErrors bool) (string, []any) {
	where, args := f.where(nil)
	cols := deliveryRecordColumns
	if withErrors {
		cols += ",\n    " + deliveryErrorsColumns
	}
	q := `SELECT ` + cols + `
FROM webhook_deliveries d WHERE ` + where + ` ORDER BY d.received_at DESC, d.id DESC`
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	return q, args
}

// scanDelivery reads deliveryRecordColumns into r, then the row's other
// columns into more.
func scanDelivery(rows *sql.Rows, r *DeliveryRecord, more ...any) error {
	return rows.Scan(append([]any{&r.ID, &r.EHR, &r.RequestID, &r.ReceivedAt, &r.BodySHA256, &r.ItemCount,
		&r.Outcome, &r.StatusCode, &r.Quarantined, &r.Pending}, more...)...)
}

// EachDelivery calls fn with each delivery f selects, newest first, as it
// reads them. An error of fn stops the query and is returned as it is.
func (s *Store) EachDelivery(ctx context.Context, f DeliveryFilter, fn func(DeliveryRecord) error) error {
	q, args := f.deliveriesSQL(false)
	return s.each(ctx, "EachDelivery", q, args, func(rows *sql.Rows) error {
		var r DeliveryRecord
		if err := scanDelivery(rows, &r); err != nil {
			return wrap("EachDelivery", err)
		}
		return fn(r)
	})
}

// each runs q and calls row with each row as the driver reads it, so that
// the rows are never all in memory. An error of row stops the query and is
// returned as it is; the database's are wrapped with op.
func (s *Store) each(ctx context.Context, op, q string, args []any, row func(*sql.Rows) error) error {
	// Cancelled when row fails: lib/pq's Close reads every row left,
	// which the cancellation cuts short.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return wrap(op, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := row(rows); err != nil {
			cancel()
			return err
		}
	}
	return wrap(op, rows.Err())
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
	// MaxBytes, when not 0, ends the list before the entry whose content
	// would bring the list's past it (the first is always listed): pages
	// whose size a count alone does not bound, entries being up to a
	// body's size.
	MaxBytes int
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

// quarantineRecordColumns are a quarantined entry's own, of
// quarantined_entries aliased q, in quarantineScan's order; its content
// only withContent.
func quarantineRecordColumns(withContent bool) string {
	raw := "NULL::bytea"
	if withContent {
		raw = "q.raw"
	}
	return `q.id, q.entry_index, q.created_at, q.replayed_at, q.errors, q.raw IS NULL, ` + raw
}

// quarantineScan holds quarantineRecordColumns as scanned: pointers, for
// the NULLs of a delivery without entries in a LEFT JOIN.
type quarantineScan struct {
	id         *int64
	entryIndex *int
	createdAt  *time.Time
	replayedAt *time.Time
	errors     []byte
	dropped    *bool
	raw        []byte
}

func (r *quarantineScan) dest() []any {
	return []any{&r.id, &r.entryIndex, &r.createdAt, &r.replayedAt, &r.errors, &r.dropped, &r.raw}
}

// fill sets q's own fields from the row; its delivery's are the caller's.
func (r *quarantineScan) fill(q *QuarantineRecord) error {
	q.ID, q.EntryIndex, q.CreatedAt = *r.id, *r.entryIndex, *r.createdAt
	q.ReplayedAt, q.ContentDropped = r.replayedAt, *r.dropped
	q.Errors = nil
	if err := json.Unmarshal(r.errors, &q.Errors); err != nil {
		return fmt.Errorf("quarantined entry %d: while reading its errors: %w", q.ID, err)
	}
	q.Raw = nil
	if r.raw != nil {
		q.Raw = json.RawMessage(r.raw)
	}
	return nil
}

// quarantineSQL selects the entries f selects, by delivery and entry index,
// each with its delivery's columns first (q.delivery_id, d.ehr,
// d.request_id, d.received_at, the body's hash in hex) and, with MaxBytes,
// two more last.
func (f QuarantineFilter) quarantineSQL() (string, []any) {
	where, args := f.Delivery.where(nil)
	if f.Pending {
		where += " AND q.replayed_at IS NULL AND q.raw IS NOT NULL"
	}
	if f.Dropped {
		where += " AND q.replayed_at IS NULL AND q.raw IS NULL"
	}
	if f.After != (QuarantineKey{}) {
		args = append(args, f.After.DeliveryID, f.After.EntryIndex)
		where += fmt.Sprintf(" AND (q.delivery_id, q.entry_index) > ($%d, $%d)", len(args)-1, len(args))
	}
	q := `SELECT q.delivery_id, d.ehr, d.request_id, d.received_at, encode(d.body_sha256, 'hex'),
    ` + quarantineRecordColumns(f.WithContent)
	if f.MaxBytes > 0 {
		// The content's running total, in the list's order: the server
		// sends no entry past the budget.
		q += `,
    coalesce(sum(octet_length(q.raw)) OVER w, 0) AS upto, row_number() OVER w AS n`
	}
	q += `
FROM quarantined_entries q JOIN webhook_deliveries d ON d.id = q.delivery_id
WHERE ` + where
	if f.MaxBytes > 0 {
		q += " WINDOW w AS (ORDER BY q.delivery_id, q.entry_index)"
	}
	q += " ORDER BY q.delivery_id, q.entry_index"
	if f.Limit > 0 {
		q += " LIMIT " + strconv.Itoa(f.Limit)
	}
	if f.MaxBytes > 0 {
		args = append(args, f.MaxBytes)
		q = fmt.Sprintf("SELECT * FROM (%s) page WHERE n = 1 OR upto <= $%d ORDER BY delivery_id, entry_index", q, len(args))
	}
	return q, args
}

// EachQuarantined calls fn with each quarantined entry f selects, by
// delivery and entry index (one delivery's entries are adjacent), as it
// reads them. An error of fn stops the query and is returned as it is.
func (s *Store) EachQuarantined(ctx context.Context, f QuarantineFilter, fn func(QuarantineRecord) error) error {
	const op = "EachQuarantined"
	q, args := f.quarantineSQL()
	var (
		r        QuarantineRecord
		row      quarantineScan
		upto, n  int64
		windowed []any
	)
	if f.MaxBytes > 0 {
		windowed = []any{&upto, &n}
	}
	dest := append(append([]any{&r.DeliveryID, &r.EHR, &r.RequestID, &r.ReceivedAt, &r.BodySHA256}, row.dest()...), windowed...)
	return s.each(ctx, op, q, args, func(rows *sql.Rows) error {
		if err := rows.Scan(dest...); err != nil {
			return wrap(op, err)
		}
		if err := row.fill(&r); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return fn(r)
	})
}

// EachDeliveryWithEntries calls delivery with each delivery f selects,
// newest first, field errors included, and after it entry with each of its
// quarantined entries by index (their content only withContent): what
// `deliveries show` prints, as it reads it, one entry at a time. An error
// of either stops the query and is returned as it is.
func (s *Store) EachDeliveryWithEntries(ctx context.Context, f DeliveryFilter, withContent bool,
	delivery func(DeliveryRecord) error, entry func(QuarantineRecord) error) error {
	const op = "EachDeliveryWithEntries"
	sel, args := f.deliveriesSQL(true)
	// OFFSET 0 keeps the deliveries a subquery of their own, computing
	// each one's counts once, not once per entry; its order and the
	// lateral join let PostgreSQL sort one delivery's entries at a time.
	q := `SELECT d.*, ` + quarantineRecordColumns(withContent) + `
FROM (` + sel + ` OFFSET 0) d
LEFT JOIN LATERAL (SELECT * FROM quarantined_entries q WHERE q.delivery_id = d.id) q ON true
ORDER BY d.received_at DESC, d.id DESC, q.entry_index`
	var (
		d    DeliveryRecord
		errs deliveryErrorsScan
		row  quarantineScan
		last int64
	)
	dest := append(errs.dest(), row.dest()...)
	return s.each(ctx, op, q, args, func(rows *sql.Rows) error {
		if err := scanDelivery(rows, &d, dest...); err != nil {
			return wrap(op, err)
		}
		if d.ID != last {
			last = d.ID
			if err := errs.fill(&d); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			if err := delivery(d); err != nil {
				return err
			}
		}
		if row.id == nil {
			return nil // a delivery without quarantined entries
		}
		r := QuarantineRecord{DeliveryID: d.ID, EHR: d.EHR, RequestID: d.RequestID, ReceivedAt: d.ReceivedAt, BodySHA256: d.BodySHA256}
		if err := row.fill(&r); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		return entry(r)
	})
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
	conn, release, err := s.tryAdvisoryLock(ctx, "LockReplay",
		`pg_try_advisory_lock($1, hashtext($2))`, `pg_advisory_unlock($1, hashtext($2))`, replayLockClass, ehr)
	if err != nil {
		return nil, err
	}
	if conn == nil {
		return nil, ErrReplayRunning
	}
	// Released once the replay is over: a failed release drops the
	// connection, which ends its session and the lock with it.
	return func() { _ = release() }, nil
}
