package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"
)

// Retention is how long a receiver keeps each kind of row of its EHR
// (docs/architecture.md, "Schema and write path"); 0 keeps it for ever. Patient
// content and metadata have periods of their own: a quarantined entry's
// raw body may go after a month while the row saying it happened stays a
// year.
type Retention struct {
	// DeliveryLog: webhook_deliveries rows, by received_at, a refused
	// request's field errors with them (columns of its row). A row an
	// appointment, a history row or a quarantined entry still refers to
	// stays until that goes.
	DeliveryLog time.Duration
	// QuarantineContent: a quarantined entry's raw body (patient data)
	// and its hash, set to NULL, by created_at.
	QuarantineContent time.Duration
	// Quarantine: quarantined_entries rows (index, errors, times), by
	// created_at.
	Quarantine time.Duration
	// History: appointment_history rows, by applied_at. A version whose
	// history row went is no longer recognised as seen: keep the history
	// longer than any sender may redeliver an old version.
	History time.Duration
}

// Enabled reports whether any period is set.
func (r Retention) Enabled() bool { return r != Retention{} }

// Validate refuses negative periods and a content period longer than its
// row's: the row takes the content with it.
func (r Retention) Validate() error {
	var errs []error
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"delivery log", r.DeliveryLog}, {"quarantine content", r.QuarantineContent}, {"quarantine", r.Quarantine}, {"history", r.History}} {
		if p.d < 0 {
			errs = append(errs, fmt.Errorf("retention of the %s must not be negative, not %s", p.name, p.d))
		}
	}
	if r.Quarantine > 0 && r.QuarantineContent > r.Quarantine {
		errs = append(errs, fmt.Errorf("retention of the quarantine content (%s) must not exceed the quarantine's (%s)",
			r.QuarantineContent, r.Quarantine))
	}
	return errors.Join(errs...)
}

// Pruned counts the rows one Prune removed (for QuarantineContent, the
// entries whose body it dropped).
type Pruned struct {
	DeliveryLog, QuarantineContent, Quarantine, History int64
}

const (
	// pruneLockID is the session advisory lock one pruner holds per
	// database: receivers of every EHR sharing it take turns.
	pruneLockID int64 = 0x6568725f726574 // "ehr_ret"
	// pruneBatch rows per statement, each its own short transaction, so
	// row locks are held for milliseconds and the WAL comes in small
	// pieces.
	pruneBatch = 500
	// prunePause between batches leaves the database to the writers.
	prunePause = 10 * time.Millisecond
)

// pruneLockTimeout bounds a batch's wait for a lock: the pruner gives way
// rather than queue writers behind it.
const pruneLockTimeout = "1s"

// The batches. Each picks old rows of the EHR, skipping rows another
// transaction has locked, so it never waits for a writer, and goes on
// from where the last batch ended ($4, $5: its last row's time and id), in
// the order of an index, so that a batch reads about the rows it removes.
// A batch that started again from the oldest rows re-read every row the
// earlier ones had deleted (until vacuum): the first history prune of 3.6 M
// rows slowed from 3,000 to 1,700 rows a second in 4 minutes, each batch
// a sequential scan (docs/performance.md, "At a year's volume"). Each
// returns how many rows it scanned and changed, and its last row's key.
var (
	// appointment_history_ehr_applied_at (migration 10).
	pruneHistorySQL = pruneSQL("appointment_history", "applied_at", "",
		`DELETE FROM appointment_history h USING scanned s WHERE h.id = s.id`)
	// quarantined_entries_ehr_created_at.
	pruneQuarantineSQL = pruneSQL("quarantined_entries", "created_at", "",
		`DELETE FROM quarantined_entries q USING scanned s WHERE q.id = s.id`)
	// The content's hash goes with it (raw_sha256, migration 6): a
	// fingerprint of patient data. A row a receiver of the previous release
	// emptied keeps its hash until the next run.
	pruneQuarantineContentSQL = pruneSQL("quarantined_entries", "created_at", `AND (raw IS NOT NULL OR raw_sha256 IS NOT NULL)`,
		`UPDATE quarantined_entries q SET raw = NULL, raw_sha256 = NULL FROM scanned s WHERE q.id = s.id`)
)

// pruneDeliveriesSQL is the delivery log's batch. A delivery row still
// referred to (by the appointment it last wrote, a history row, a
// quarantined entry) stays, and is only read: the batch locks and deletes
// the rows nothing refers to. Locking every row it read, as the other
// batches do, wrote each referred-to row's header again on every run: 1.46 M
// rows, 157 s and 0.8 GB of WAL an hour at a year's volume
// (docs/performance.md, "At a year's volume"). It returns, besides
// pruneSQL's columns, the first row it found free but could not lock (a
// writer held it), from where the next run goes on.
const pruneDeliveriesSQL = `WITH scanned AS MATERIALIZED (
    SELECT id, received_at AS at FROM webhook_deliveries
    WHERE ehr = $1 AND received_at < $2 AND (received_at, id) > ($4, $5)
    ORDER BY received_at, id LIMIT $3
), free AS MATERIALIZED (
    SELECT s.id, s.at FROM scanned s
    WHERE NOT EXISTS (SELECT 1 FROM appointments a WHERE a.delivery_id = s.id)
        AND NOT EXISTS (SELECT 1 FROM appointment_history h WHERE h.delivery_id = s.id)
        AND NOT EXISTS (SELECT 1 FROM quarantined_entries q WHERE q.delivery_id = s.id)
), locked AS (
    SELECT d.id FROM webhook_deliveries d JOIN free f ON d.id = f.id
    FOR UPDATE OF d SKIP LOCKED
), gone AS (
    DELETE FROM webhook_deliveries d USING locked l WHERE d.id = l.id
    RETURNING d.id
), last AS (
    SELECT at, id FROM scanned ORDER BY at DESC, id DESC LIMIT 1
), skipped AS (
    SELECT at, id FROM free WHERE id NOT IN (SELECT id FROM gone) ORDER BY at, id LIMIT 1
)
SELECT (SELECT count(*) FROM scanned), (SELECT count(*) FROM gone), last.at, last.id, skipped.at, skipped.id
FROM (SELECT 1) one LEFT JOIN last ON true LEFT JOIN skipped ON true`

// pruneSQL is a batch of change (a DELETE or UPDATE of the rows scanned)
// over table's rows of the EHR older than $2 by its time column at, and
// matching cond, after ($4, $5) in (at, id) order. Rows it skips are not
// among those scanned, so it never names one (the last two columns).
func pruneSQL(table, at, cond, change string) string {
	return `WITH scanned AS (
    SELECT id, ` + at + ` AS at FROM ` + table + `
    WHERE ehr = $1 AND ` + at + ` < $2 AND (` + at + `, id) > ($4, $5) ` + cond + `
    ORDER BY ` + at + `, id LIMIT $3 FOR UPDATE SKIP LOCKED
), gone AS (
    ` + change + `
    RETURNING 1
), last AS (
    SELECT at, id FROM scanned ORDER BY at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM scanned), (SELECT count(*) FROM gone), last.at, last.id, NULL::timestamptz, NULL::bigint
FROM (SELECT 1) one LEFT JOIN last ON true`
}

// tryAdvisoryLock takes a session advisory lock (lock and unlock are the
// two calls, with args) on a connection of its own, without waiting. It
// returns a nil connection when another session holds the lock. unlock
// releases it and returns the connection to the pool, or drops the
// connection when the release fails: the lock lives as long as the
// session, and a pooled one still holding it would keep it forever. It
// fails, too, when the lock was not held at the release: the connection's
// statements ran in another session than the lock's, which keeps it.
// checkSessions refuses the poolers that do that; this says so should one
// get past it.
func (s *Store) tryAdvisoryLock(ctx context.Context, op, lock, unlock string, args ...any) (*sql.Conn, func() error, error) {
	if err := s.checkSessions(ctx); err != nil {
		return nil, nil, wrap(op, err)
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, nil, wrap(op+": connect", err)
	}
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT `+lock, args...).Scan(&got); err != nil {
		_ = conn.Close()
		return nil, nil, wrap(op+": lock", err)
	}
	if !got {
		_ = conn.Close()
		return nil, nil, nil
	}
	return conn, func() error {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		var released bool
		err := conn.QueryRowContext(uctx, `SELECT `+unlock, args...).Scan(&released)
		if err == nil && !released {
			err = ErrTransactionPooling
		}
		if err != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
		return wrap(op+": unlock", err)
	}, nil
}

// Prune removes ehr's rows older than r's periods, as of now. It runs only
// when it gets the database's pruning lock at once, and reports whether
// it did: another receiver pruning is not waited for. Pruned counts what
// was removed, also when it fails part way. The delivery log's step goes
// on from where this Store's last Prune of ehr stopped (pruneDeliveries).
func (s *Store) Prune(ctx context.Context, ehr string, r Retention, now time.Time) (p Pruned, ran bool, err error) {
	if err := r.Validate(); err != nil {
		return p, false, err
	}
	if s.poolShort() { // the writes need every connection the server gives (pool.go)
		return p, false, nil
	}
	conn, unlock, err := s.tryAdvisoryLock(ctx, "Prune", `pg_try_advisory_lock($1)`, `pg_advisory_unlock($1)`, pruneLockID)
	if err != nil || conn == nil {
		return p, false, err
	}
	defer func() {
		if uerr := unlock(); err == nil {
			err = uerr
		}
	}()

	steps := []struct {
		op     string
		period time.Duration
		sql    string
		n      *int64
	}{
		{"history", r.History, pruneHistorySQL, &p.History},
		{"quarantine", r.Quarantine, pruneQuarantineSQL, &p.Quarantine},
		{"quarantine content", r.QuarantineContent, pruneQuarantineContentSQL, &p.QuarantineContent},
	}
	for _, st := range steps {
		if st.period <= 0 {
			continue
		}
		if _, err := pruneStep(ctx, conn, st.sql, ehr, now.Add(-st.period), pruneKey{}, st.n); err != nil {
			return p, true, wrap("Prune: "+st.op, err)
		}
	}
	if r.DeliveryLog > 0 {
		if err := s.pruneDeliveries(ctx, conn, ehr, now, now.Add(-r.DeliveryLog), &p.DeliveryLog); err != nil {
			return p, true, wrap("Prune: delivery log", err)
		}
	}
	return p, true, nil
}

// fullPassEvery is how often the delivery log's step reads again from the
// oldest row: a row still referred to when a run read it may be free by
// now (its appointment changed, its history rows went).
const fullPassEvery = 24 * time.Hour

// pruneKey is a row's place in a prune step's (time, id) order; the zero
// key is before every row.
type pruneKey struct {
	at time.Time
	id int64
}

// deliveryPass is how far this process's runs have read one EHR's
// delivery log.
type deliveryPass struct {
	after   pruneKey  // the next run reads the rows after this one
	started time.Time // the current pass began at the oldest row
	done    bool      // the last run reached its cutoff
}

// next is where a run at now reads from: from the oldest row on the first
// run and once a completed pass is fullPassEvery old, otherwise after the
// rows earlier runs read. Between full passes a run reads only the rows
// that came past the period since, not the referred-to ones again.
func (d deliveryPass) next(now time.Time) deliveryPass {
	if d.started.IsZero() || d.done && now.Sub(d.started) >= fullPassEvery {
		return deliveryPass{started: now}
	}
	return d
}

// pruneDeliveries runs the delivery log's step from where this process's
// last run for ehr stopped, and keeps where this one stops: also when it
// fails part way, so that a backlog longer than a run goes on next time.
func (s *Store) pruneDeliveries(ctx context.Context, conn *sql.Conn, ehr string, now, cutoff time.Time, n *int64) error {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	if s.deliveryPasses == nil {
		s.deliveryPasses = map[string]deliveryPass{}
	}
	d := s.deliveryPasses[ehr].next(now)
	stop, err := pruneStep(ctx, conn, pruneDeliveriesSQL, ehr, cutoff, d.after, n)
	d.after, d.done = stop, err == nil
	s.deliveryPasses[ehr] = d
	return err
}

// pruneStep runs q's batches from after to cutoff, adding the rows each
// changed to n. It returns where a next run may go on from: the last row
// read, or before the first row a batch skipped.
func pruneStep(ctx context.Context, conn *sql.Conn, q, ehr string, cutoff time.Time, after pruneKey, n *int64) (pruneKey, error) {
	var skipped *pruneKey
	resume := func() pruneKey {
		if skipped != nil {
			return *skipped
		}
		return after
	}
	for {
		var (
			scanned, changed int64
			lastAt, skipAt   sql.NullTime
			lastID, skipID   sql.NullInt64
		)
		err := inBatch(ctx, conn, func(tx *sql.Tx) error {
			return tx.QueryRowContext(ctx, q, ehr, cutoff, pruneBatch, after.at, after.id).
				Scan(&scanned, &changed, &lastAt, &lastID, &skipAt, &skipID)
		})
		if err != nil {
			return resume(), err
		}
		*n += changed
		if skipped == nil && skipAt.Valid {
			// Just before it: ids are unique, and (at, id-1) sorts after
			// every row read before it.
			skipped = &pruneKey{skipAt.Time, skipID.Int64 - 1}
		}
		if lastAt.Valid {
			after = pruneKey{lastAt.Time, lastID.Int64}
		}
		if scanned < pruneBatch {
			return resume(), nil
		}
		if err := pause(ctx); err != nil {
			return resume(), err
		}
	}
}

// inBatch runs one batch in a transaction of its own with the pruner's
// lock timeout, read-only on a server set so (keepReadOnlySQL).
func inBatch(ctx context.Context, conn *sql.Conn, f func(*sql.Tx) error) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, keepReadOnlySQL+`; SET LOCAL lock_timeout = '`+pruneLockTimeout+`'`); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

func pause(ctx context.Context) error {
	t := time.NewTimer(prunePause)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
