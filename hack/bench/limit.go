package main

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/internal/harness"
)

// The limit writes the receiver's rows for a batch (a delivery row, then
// patients, practitioners, appointments and a history row per appointment)
// straight into the same schema: no HTTP, no validation, no content-hash
// check, no advisory locks, no savepoints. Two set-based methods:
//
//   - unnest: one prepared statement of data-modifying CTEs over unnest()
//     of column arrays, in autocommit: one round trip per batch;
//   - copy: COPY into a per-connection temporary staging table, then the
//     same CTEs reading from it, in one transaction (BEGIN, COPY, INSERT …
//     SELECT, COMMIT: four round trips, but no array encoding).
//
// The cell's limit is the faster of the two.
const limitCTE = `
, d AS (
    INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
    VALUES ($1, $2, now(), $3, $4, 'stored', 200)
    RETURNING id AS delivery_id
), p AS (
    INSERT INTO patients AS t (ehr, external_id, first_name, middle_name, last_name, birth_date, gender, phone, email)
    SELECT DISTINCT ON (patient_id) $1, patient_id, pat_first, pat_middle, pat_last, pat_birth, pat_gender, pat_phone, pat_email
    FROM e ORDER BY patient_id
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, middle_name = EXCLUDED.middle_name, last_name = EXCLUDED.last_name,
        birth_date = EXCLUDED.birth_date, gender = EXCLUDED.gender, phone = EXCLUDED.phone, email = EXCLUDED.email
    WHERE (t.first_name, t.middle_name, t.last_name, t.birth_date, t.gender, t.phone, t.email)
        IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.middle_name, EXCLUDED.last_name,
        EXCLUDED.birth_date, EXCLUDED.gender, EXCLUDED.phone, EXCLUDED.email)
), r AS (
    INSERT INTO practitioners AS t (ehr, external_id, first_name, last_name)
    SELECT DISTINCT ON (practitioner_id) $1, practitioner_id, pra_first, pra_last
    FROM e ORDER BY practitioner_id
    ON CONFLICT (ehr, external_id) DO UPDATE SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name
    WHERE (t.first_name, t.last_name) IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.last_name)
), a AS (
    INSERT INTO appointments AS t (ehr, external_id, patient_external_id, practitioner_external_id, status, status_raw,
        start_time, start_date, created_time, type, duration_minutes, reason, location_name,
        encounter_id, encounter_reason, department_id, content_hash, delivery_id)
    SELECT $1, id, patient_id, practitioner_id, status, status_raw, start_time, start_date, created_time,
        type, duration, reason, location_name, encounter_id, encounter_reason, department_id, content_hash,
        (SELECT delivery_id FROM d)
    FROM e ORDER BY id
    ON CONFLICT (ehr, external_id) DO UPDATE SET status = EXCLUDED.status, content_hash = EXCLUDED.content_hash,
        delivery_id = EXCLUDED.delivery_id
    WHERE t.content_hash <> EXCLUDED.content_hash
    RETURNING external_id, status, start_time, content_hash, delivery_id
)
INSERT INTO appointment_history (ehr, appointment_external_id, status, start_time, content_hash, delivery_id)
SELECT $1, external_id, status, start_time, content_hash, delivery_id FROM a`

const columns = `id, patient_id, practitioner_id, status, status_raw, start_time, start_date, created_time, type,
    duration, reason, location_name, encounter_id, encounter_reason, department_id,
    pat_first, pat_middle, pat_last, pat_birth, pat_gender, pat_phone, pat_email, pra_first, pra_last, content_hash`

var unnestSQL = `WITH e AS (SELECT * FROM unnest(
    $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::date[], $12::timestamptz[],
    $13::text[], $14::integer[], $15::text[], $16::text[], $17::text[], $18::text[], $19::text[],
    $20::text[], $21::text[], $22::text[], $23::date[], $24::text[], $25::text[], $26::text[], $27::text[],
    $28::text[], $29::bytea[]) AS u(` + columns + `))` + limitCTE

const stagingSQL = `CREATE TEMP TABLE IF NOT EXISTS staging (
    id text, patient_id text, practitioner_id text, status text, status_raw text, start_time timestamptz,
    start_date date, created_time timestamptz, type text, duration integer, reason text, location_name text,
    encounter_id text, encounter_reason text, department_id text, pat_first text, pat_middle text, pat_last text,
    pat_birth date, pat_gender text, pat_phone text, pat_email text, pra_first text, pra_last text, content_hash bytea
) ON COMMIT DELETE ROWS`

var copySQL = `WITH e AS (SELECT * FROM staging)` + limitCTE

var stagingColumns = strings.Split(strings.Join(strings.Fields(columns), ""), ",")

// writer writes one batch of rows on its own connection.
type writer interface {
	write(ctx context.Context, rows []harness.Row, seq int64) error
	close()
}

func deliveryArgs(rows []harness.Row, seq int64) []any {
	return []any{harness.EHR, fmt.Sprintf("limit-%d", seq), rows[0].ContentHash[:], len(rows)}
}

type unnestWriter struct {
	conn *sql.Conn
	stmt *sql.Stmt
}

func newUnnestWriter(ctx context.Context, db *sql.DB) (writer, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	stmt, err := conn.PrepareContext(ctx, unnestSQL)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("while preparing the unnest statement: %w", err)
	}
	return &unnestWriter{conn: conn, stmt: stmt}, nil
}

func (w *unnestWriter) write(ctx context.Context, rows []harness.Row, seq int64) error {
	n := len(rows)
	col := func(f func(r *harness.Row) string) pq.StringArray {
		a := make(pq.StringArray, n)
		for i := range rows {
			a[i] = f(&rows[i])
		}
		return a
	}
	ts := func(f func(r *harness.Row) time.Time, layout string) pq.StringArray {
		a := make(pq.StringArray, n)
		for i := range rows {
			a[i] = f(&rows[i]).Format(layout)
		}
		return a
	}
	dur := make(pq.Int64Array, n)
	hashes := make(pq.ByteaArray, n)
	for i := range rows {
		dur[i] = int64(rows[i].Duration)
		hashes[i] = rows[i].ContentHash[:]
	}
	args := append(deliveryArgs(rows, seq),
		col(func(r *harness.Row) string { return r.ID }),
		col(func(r *harness.Row) string { return r.PatientID }),
		col(func(r *harness.Row) string { return r.PractitionerID }),
		col(func(r *harness.Row) string { return r.Status }),
		col(func(r *harness.Row) string { return r.StatusRaw }),
		ts(func(r *harness.Row) time.Time { return r.Start }, time.RFC3339Nano),
		ts(func(r *harness.Row) time.Time { return r.StartDate }, time.DateOnly),
		ts(func(r *harness.Row) time.Time { return r.Created }, time.RFC3339Nano),
		col(func(r *harness.Row) string { return r.Type }),
		dur,
		col(func(r *harness.Row) string { return r.Reason }),
		col(func(r *harness.Row) string { return r.LocationName }),
		col(func(r *harness.Row) string { return r.EncounterID }),
		col(func(r *harness.Row) string { return r.EncounterReason }),
		col(func(r *harness.Row) string { return r.DepartmentID }),
		col(func(r *harness.Row) string { return r.PatFirst }),
		col(func(r *harness.Row) string { return r.PatMiddle }),
		col(func(r *harness.Row) string { return r.PatLast }),
		ts(func(r *harness.Row) time.Time { return r.PatBirth }, time.DateOnly),
		col(func(r *harness.Row) string { return r.PatGender }),
		col(func(r *harness.Row) string { return r.PatPhone }),
		col(func(r *harness.Row) string { return r.PatEmail }),
		col(func(r *harness.Row) string { return r.PraFirst }),
		col(func(r *harness.Row) string { return r.PraLast }),
		hashes,
	)
	_, err := w.stmt.ExecContext(ctx, args...)
	return err
}

func (w *unnestWriter) close() { w.stmt.Close(); w.conn.Close() }

type copyWriter struct{ conn *sql.Conn }

func newCopyWriter(ctx context.Context, db *sql.DB) (writer, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.ExecContext(ctx, stagingSQL); err != nil {
		conn.Close()
		return nil, fmt.Errorf("while creating the staging table: %w", err)
	}
	return &copyWriter{conn: conn}, nil
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
	cp, err := tx.PrepareContext(ctx, "COPY staging ("+strings.Join(stagingColumns, ", ")+") FROM STDIN")
	if err != nil {
		return err
	}
	for i := range rows {
		r := &rows[i]
		if _, err := cp.ExecContext(ctx, r.ID, r.PatientID, r.PractitionerID, r.Status, r.StatusRaw,
			r.Start, r.StartDate, r.Created, r.Type, r.Duration, r.Reason, r.LocationName, r.EncounterID,
			r.EncounterReason, r.DepartmentID, r.PatFirst, r.PatMiddle, r.PatLast, r.PatBirth, r.PatGender,
			r.PatPhone, r.PatEmail, r.PraFirst, r.PraLast, r.ContentHash[:]); err != nil {
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

// runLimit writes batches of gen's rows from senders goroutines, each on
// its own connection, for warmup+d, and records the window after warmup.
func runLimit(ctx context.Context, dbURL, method string, gen harness.Gen, batch, senders int, warmup, d time.Duration, meter *cpuMeter) (*recorder, error) {
	db, err := sql.Open("postgres", dbURL)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(senders)
	db.SetMaxIdleConns(senders)
	newWriter := newUnnestWriter
	if method == "copy" {
		newWriter = newCopyWriter
	}
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		firstEr error
		rec     = newRecorder(senders)
	)
	writers := make([]writer, senders)
	for i := range writers {
		if writers[i], err = newWriter(ctx, db); err != nil {
			return nil, err
		}
		defer writers[i].close()
	}
	start := time.Now()
	rec.window(start.Add(warmup), start.Add(warmup+d))
	defer meter.watch(rec.begin, rec.end)()
	for s := range senders {
		wg.Go(func() {
			rows := make([]harness.Row, batch)
			for time.Now().Before(rec.end) {
				seq := next.Add(1)
				first := (seq - 1) * int64(batch)
				for i := range rows {
					rows[i] = gen.Row(first + int64(i))
				}
				t0 := time.Now()
				if err := writers[s].write(ctx, rows, seq); err != nil {
					mu.Lock()
					firstEr = fmt.Errorf("limit (%s) write failed: %w", method, err)
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
