package main

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// The limit writes the receiver's rows for a batch (a delivery row, then
// patients, practitioners, appointments and a history row per appointment)
// straight into the same schema: no HTTP, no validation, no content-hash
// check, no quarantine, one request per statement. Its statements are built
// from the store's own description of the columns (store.Tables,
// store.EntryArrays), so it writes exactly the receiver's columns. Two
// set-based methods:
//
//   - unnest: one prepared statement of data-modifying CTEs over unnest()
//     of column arrays, in autocommit: one round trip per batch;
//   - copy: COPY into a per-connection temporary staging table, then the
//     same CTEs reading from it, in one transaction (BEGIN, COPY, INSERT …
//     SELECT, COMMIT: four round trips, but no array encoding).
//
// The cell's limit is the faster of the two.
var limitCTE = func() string {
	t := store.Tables()
	upsert := func(cte string, t store.Table) string {
		return `, ` + cte + ` AS (
    INSERT INTO ` + t.Name() + ` AS t (ehr, ` + list(t.Columns()) + `)
    SELECT DISTINCT ON (` + t.Key() + `) $1, ` + list(t.Arrays()) + `
    FROM e ORDER BY ` + t.Key() + `
    ON CONFLICT (ehr, external_id) DO UPDATE SET ` + list(set(t.Values())) + `
    WHERE (` + list(qualify("t", t.Values())) + `) IS DISTINCT FROM (` + list(qualify("EXCLUDED", t.Values())) + `)
)`
	}
	a, h := t.Appointments, t.History
	return `
, d AS (
    INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
    VALUES ($1, $2, now(), $3, $4, 'stored', 200)
    RETURNING id AS delivery_id
)` + upsert("p", t.Patients) + upsert("r", t.Practitioners) + `, a AS (
    INSERT INTO appointments AS t (ehr, ` + list(a.Columns()) + `, delivery_id)
    SELECT $1, ` + list(a.Arrays()) + `, (SELECT delivery_id FROM d)
    FROM e ORDER BY ` + a.Key() + `
    ON CONFLICT (ehr, external_id) DO UPDATE SET ` + list(set(a.Values())) + `, delivery_id = EXCLUDED.delivery_id
    WHERE t.content_hash <> EXCLUDED.content_hash
    RETURNING ` + list(h.Arrays()) + `
)
INSERT INTO appointment_history (ehr, ` + list(h.Columns()) + `)
SELECT $1, ` + list(h.Arrays()) + ` FROM a`
}()

// The statements, from the store's columns. The entry arrays' arguments
// follow the delivery's four ($1 to $4).
var (
	entryArrays = store.EntryArrays()
	unnestSQL   = "WITH e AS (SELECT * FROM unnest(" + list(each(entryArrays, func(i int, a store.Array) string {
		return "$" + strconv.Itoa(5+i) + "::" + a.Type + "[]"
	})) + ") AS u(" + list(each(entryArrays, func(_ int, a store.Array) string { return a.Name })) + "))" + limitCTE
	stagingSQL = "CREATE TEMP TABLE IF NOT EXISTS staging (" + list(each(entryArrays, func(_ int, a store.Array) string {
		return a.Name + " " + a.Type
	})) + ") ON COMMIT DELETE ROWS"
	copySQL = "WITH e AS (SELECT * FROM staging)" + limitCTE
	copyIn  = "COPY staging (" + list(each(entryArrays, func(_ int, a store.Array) string { return a.Name })) + ") FROM STDIN"
)

func list(s []string) string { return strings.Join(s, ", ") }

func set(cols []string) []string {
	return each(cols, func(_ int, c string) string { return c + " = EXCLUDED." + c })
}

func qualify(alias string, cols []string) []string {
	return each(cols, func(_ int, c string) string { return alias + "." + c })
}

func each[T any](in []T, f func(int, T) string) []string {
	out := make([]string, len(in))
	for i, v := range in {
		out[i] = f(i, v)
	}
	return out
}

// rowArrays reads each of the store's entry arrays from the limit's rows,
// by the array's name. The rows leave notes absent.
var rowArrays = map[string]rowArray{
	"id":               text(func(r *harness.Row) string { return r.ID }),
	"status":           text(func(r *harness.Row) string { return r.Status }),
	"status_raw":       text(func(r *harness.Row) string { return r.StatusRaw }),
	"start_time":       timeOf(func(r *harness.Row) time.Time { return r.Start }, time.RFC3339Nano),
	"start_date":       timeOf(func(r *harness.Row) time.Time { return r.StartDate }, time.DateOnly),
	"created_time":     timeOf(func(r *harness.Row) time.Time { return r.Created }, time.RFC3339Nano),
	"type":             text(func(r *harness.Row) string { return r.Type }),
	"duration_minutes": integer(func(r *harness.Row) int64 { return int64(r.Duration) }),
	"reason":           text(func(r *harness.Row) string { return r.Reason }),
	"notes":            absent,
	"location_name":    text(func(r *harness.Row) string { return r.LocationName }),
	"encounter_id":     text(func(r *harness.Row) string { return r.EncounterID }),
	"encounter_reason": text(func(r *harness.Row) string { return r.EncounterReason }),
	"department_id":    text(func(r *harness.Row) string { return r.DepartmentID }),
	"content_hash":     bytea(func(r *harness.Row) []byte { return r.ContentHash[:] }),
	"patient_id":       text(func(r *harness.Row) string { return r.PatientID }),
	"pat_first_name":   text(func(r *harness.Row) string { return r.PatFirst }),
	"pat_middle_name":  text(func(r *harness.Row) string { return r.PatMiddle }),
	"pat_last_name":    text(func(r *harness.Row) string { return r.PatLast }),
	"pat_birth_date":   timeOf(func(r *harness.Row) time.Time { return r.PatBirth }, time.DateOnly),
	"pat_gender":       text(func(r *harness.Row) string { return r.PatGender }),
	"pat_phone":        text(func(r *harness.Row) string { return r.PatPhone }),
	"pat_email":        text(func(r *harness.Row) string { return r.PatEmail }),
	"practitioner_id":  text(func(r *harness.Row) string { return r.PractitionerID }),
	"pra_first_name":   text(func(r *harness.Row) string { return r.PraFirst }),
	"pra_last_name":    text(func(r *harness.Row) string { return r.PraLast }),

	// The receiver writes each request's received time; one will do.
	"version_received_at": timeOf(func(*harness.Row) time.Time { return limitStarted }, time.RFC3339Nano),
}

var limitStarted = time.Now()

// rowArray is one entry array: the unnest method's argument for a batch,
// and the copy method's value for one row.
type rowArray struct {
	array func(rows []harness.Row) any
	value func(r *harness.Row) any
}

// column is the rowArray of get's values: the batch's array is an A of
// each row's value through elem (a pq array wants the element it encodes).
func column[A ~[]E, E, V any](get func(*harness.Row) V, elem func(V) E) rowArray {
	return rowArray{
		array: func(rows []harness.Row) any {
			a := make(A, len(rows))
			for i := range rows {
				a[i] = elem(get(&rows[i]))
			}
			return a
		},
		value: func(r *harness.Row) any { return get(r) },
	}
}

func itself[V any](v V) V { return v }

func text(get func(*harness.Row) string) rowArray {
	return column[pq.StringArray](get, itself)
}

func timeOf(get func(*harness.Row) time.Time, layout string) rowArray {
	return column[pq.StringArray](get, func(t time.Time) string { return t.Format(layout) })
}

func integer(get func(*harness.Row) int64) rowArray {
	return column[pq.Int64Array](get, itself)
}

func bytea(get func(*harness.Row) []byte) rowArray {
	return column[pq.ByteaArray](get, itself)
}

// absent is an array of NULLs.
var absent = rowArray{
	array: func(rows []harness.Row) any {
		return "{" + strings.TrimSuffix(strings.Repeat("NULL,", len(rows)), ",") + "}"
	},
	value: func(*harness.Row) any { return nil },
}

// limitArrays are rowArrays in the order of the store's entry arrays.
func limitArrays() ([]rowArray, error) {
	out := make([]rowArray, len(entryArrays))
	for i, a := range entryArrays {
		ra, ok := rowArrays[a.Name]
		if !ok {
			return nil, fmt.Errorf("the limit does not fill the store's column array %s: add it to rowArrays", a.Name)
		}
		out[i] = ra
	}
	if len(rowArrays) != len(entryArrays) {
		return nil, fmt.Errorf("rowArrays has %d arrays, the store %d: remove those the store no longer has", len(rowArrays), len(entryArrays))
	}
	return out, nil
}

// writer writes one batch of rows on its own connection.
type writer interface {
	write(ctx context.Context, rows []harness.Row, seq int64) error
	close()
}

func deliveryArgs(rows []harness.Row, seq int64) []any {
	return []any{harness.EHR, fmt.Sprintf("limit-%d", seq), rows[0].ContentHash[:], len(rows)}
}

type unnestWriter struct {
	conn   *sql.Conn
	stmt   *sql.Stmt
	arrays []rowArray
}

func newUnnestWriter(ctx context.Context, db *sql.DB, arrays []rowArray) (writer, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	stmt, err := conn.PrepareContext(ctx, unnestSQL)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("while preparing the unnest statement: %w", err)
	}
	return &unnestWriter{conn: conn, stmt: stmt, arrays: arrays}, nil
}

func (w *unnestWriter) write(ctx context.Context, rows []harness.Row, seq int64) error {
	args := deliveryArgs(rows, seq)
	for _, a := range w.arrays {
		args = append(args, a.array(rows))
	}
	_, err := w.stmt.ExecContext(ctx, args...)
	return err
}

func (w *unnestWriter) close() { w.stmt.Close(); w.conn.Close() }

type copyWriter struct {
	conn   *sql.Conn
	arrays []rowArray
}

func newCopyWriter(ctx context.Context, db *sql.DB, arrays []rowArray) (writer, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.ExecContext(ctx, stagingSQL); err != nil {
		conn.Close()
		return nil, fmt.Errorf("while creating the staging table: %w", err)
	}
	return &copyWriter{conn: conn, arrays: arrays}, nil
}

func (w *copyWriter) write(ctx context.Context, rows []harness.Row, seq int64) (err error) {
	tx, err := w.conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	cp, err := tx.PrepareContext(ctx, copyIn)
	if err != nil {
		return err
	}
	values := make([]any, len(w.arrays))
	for i := range rows {
		for j, a := range w.arrays {
			values[j] = a.value(&rows[i])
		}
		if _, err := cp.ExecContext(ctx, values...); err != nil {
			return err
		}
	}
	if _, err := cp.ExecContext(ctx); err != nil {
		return err
	}
	if err := cp.Close(); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, copySQL, deliveryArgs(rows, seq)...); err != nil {
		return err
	}
	return tx.Commit()
}

func (w *copyWriter) close() { w.conn.Close() }

// limitSide is one limit method's connections, one per sender, opened once
// per cell and kept across its slices: opening (or closing) them between
// slices would put dozens of backends starting or exiting into the other
// side's window (measured: a 300-500 ms stall of every request at the start
// of each receiver slice, docs/performance.md).
type limitSide struct {
	method  string
	db      *sql.DB
	writers []writer
}

func openLimit(ctx context.Context, dbURL, method string, senders int) (*limitSide, error) {
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(senders)
	db.SetMaxIdleConns(senders)
	l := &limitSide{method: method, db: db}
	arrays, err := limitArrays()
	if err != nil {
		l.close()
		return nil, err
	}
	newWriter := newUnnestWriter
	if method == "copy" {
		newWriter = newCopyWriter
	}
	for range senders {
		w, err := newWriter(ctx, db, arrays)
		if err != nil {
			l.close()
			return nil, err
		}
		l.writers = append(l.writers, w)
	}
	return l, nil
}

func (l *limitSide) close() {
	for _, w := range l.writers {
		w.close()
	}
	l.db.Close()
}

// run writes batches of gen's rows from one goroutine per connection for
// warmup+d, and records the window after warmup.
func (l *limitSide) run(ctx context.Context, gen harness.Gen, batch int, warmup, d time.Duration, meter *cpuMeter) (*recorder, error) {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		firstEr error
		rec     = newRecorder(len(l.writers))
	)
	start := time.Now()
	rec.window(start.Add(warmup), start.Add(warmup+d))
	defer meter.watch(rec.begin, rec.end)()
	for s, w := range l.writers {
		wg.Go(func() {
			rows := make([]harness.Row, batch)
			for time.Now().Before(rec.end) {
				seq := next.Add(1)
				first := (seq - 1) * int64(batch)
				for i := range rows {
					rows[i] = gen.Row(first + int64(i))
				}
				t0 := time.Now()
				if err := w.write(ctx, rows, seq); err != nil {
					mu.Lock()
					firstEr = fmt.Errorf("limit (%s) write failed: %w", l.method, err)
					mu.Unlock()
					return
				}
				rec.add(s, t0, time.Now(), batch)
			}
		})
	}
	wg.Wait()
	if firstEr != nil {
		return nil, firstEr
	}
	return rec, nil
}
