package store

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
)

// fillDeliveries writes n delivery rows over the last 30 days, shaped as
// at volume (docs/performance.md, "At a year's volume"): three EHRs
// (60/30/10 %), 95 % stored, 2 % quarantined, 2 % rejected, 1 %
// invalid_body, none unavailable; then ANALYZE, as autovacuum would.
func fillDeliveries(t *testing.T, db *sqlx.DB, n int) {
	t.Helper()
	if _, err := db.Exec(`INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
SELECT CASE WHEN i % 10 < 6 THEN 'bench' WHEN i % 10 < 9 THEN 'epic-north' ELSE 'cerner-west' END,
    md5(i::text), now() - interval '30 days' + i * (interval '30 days' / $1), sha256(int8send(i)), 1,
    CASE WHEN (i / 10) % 20 <> 0 THEN 'stored'
        ELSE (ARRAY['quarantined','quarantined','rejected','rejected','invalid_body'])[(i / 200) % 5 + 1] END, 200
FROM generate_series(1, $1) i`, n); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`ANALYZE webhook_deliveries`); err != nil {
		t.Fatal(err)
	}
}

// rowsRead runs EXPLAIN ANALYZE of q and counts the webhook_deliveries rows
// its scans read: those they returned and those their filters removed.
func rowsRead(t *testing.T, db *sqlx.DB, q string, args ...any) float64 {
	t.Helper()
	var out []byte
	if err := db.QueryRow(`EXPLAIN (ANALYZE, FORMAT JSON) `+q, args...).Scan(&out); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	var plans []struct{ Plan plan }
	if err := json.Unmarshal(out, &plans); err != nil {
		t.Fatal(err)
	}
	return plans[0].Plan.read("webhook_deliveries")
}

type plan struct {
	Relation string  `json:"Relation Name"`
	Rows     float64 `json:"Actual Rows"`
	Loops    float64 `json:"Actual Loops"`
	Filtered float64 `json:"Rows Removed by Filter"`
	Rechecks float64 `json:"Rows Removed by Index Recheck"`
	Plans    []plan  `json:"Plans"`
}

func (p plan) read(rel string) float64 {
	n := 0.0
	if p.Relation == rel {
		n = (p.Rows + p.Filtered + p.Rechecks) * p.Loops
	}
	for _, c := range p.Plans {
		n += c.read(rel)
	}
	return n
}

// What `deliveries list` and `show` ask in an incident reads about as many
// rows as it prints, not the delivery log: newest across EHRs, an outcome with or
// without --ehr (one never recorded too), --since without --ehr. Before
// migration 9 each of these read every row of the table or of the EHR.
func TestDeliveryFiltersReadWhatTheyPrint(t *testing.T) {
	t.Parallel()
	_, db := newStore(t)
	const n = 200_000
	fillDeliveries(t, db, n)
	now := time.Now()
	for _, c := range []struct {
		name string
		f    DeliveryFilter
	}{
		{"newest", DeliveryFilter{Limit: 100}},
		{"--ehr", DeliveryFilter{EHR: "cerner-west", Limit: 100}},
		{"--outcome rejected", DeliveryFilter{Outcome: OutcomeRejected, Limit: 100}},
		{"--ehr --outcome rejected", DeliveryFilter{EHR: "cerner-west", Outcome: OutcomeRejected, Limit: 100}},
		{"--ehr --outcome unavailable (none)", DeliveryFilter{EHR: "bench", Outcome: OutcomeUnavailable, Limit: 100}},
		{"--outcome stored", DeliveryFilter{Outcome: OutcomeStored, Limit: 100}},
		{"--since 1h", DeliveryFilter{Since: now.Add(-time.Hour)}},
		{"--since 2d --until 1d --outcome invalid_body", DeliveryFilter{Since: now.Add(-48 * time.Hour), Until: now.Add(-24 * time.Hour), Outcome: OutcomeInvalidBody}},
	} {
		q, args := c.f.deliveriesSQL(false)
		// 1 % of the table: an EHR's 100 newest among all EHRs' (1,000
		// for the 10 % one) may be read past, not all of its rows.
		if got := rowsRead(t, db, q, args...); got > 2000 {
			t.Errorf("%s: read %.0f of %d delivery rows, want at most 2,000", c.name, got, n)
		}
	}
}

// tableReads is how many rows of table PostgreSQL's statistics say were
// read (sequentially, and fetched through indexes) and deleted, once
// the deletes reach wantDeleted: a backend reports its counts within
// seconds of going idle, reads and deletes together.
func tableReads(t *testing.T, db *sqlx.DB, table string, wantDeleted int64) (read int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var deleted int64
		if err := db.QueryRow(`SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0), n_tup_del
FROM pg_stat_user_tables WHERE relname = $1`, table).Scan(&read, &deleted); err != nil {
			t.Fatal(err)
		}
		if deleted >= wantDeleted {
			return read
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d deletes reported after 30 s, want %d", table, deleted, wantDeleted)
		}
		time.Sleep(200 * time.Millisecond)
		if _, err := db.Exec(`SELECT pg_stat_clear_snapshot()`); err != nil {
			t.Fatal(err)
		}
	}
}

// The history's retention reads about the rows it deletes. Its batches
// used to pick old rows with a sequential scan from the table's start,
// each reading again what the batches before had deleted, and the last
// one the whole table: at 12 M rows a first prune slowed from 3,000 to
// 1,700 rows a second within minutes.
func TestPruneHistoryReadsWhatItDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := newStore(t)
	if err := s.RecordDeliveries(ctx, failures(1, ehr, "d")); err != nil {
		t.Fatal(err)
	}
	// 60,000 rows over 200 days in time order, 60 % of this EHR's.
	if _, err := db.Exec(`INSERT INTO appointment_history (ehr, appointment_external_id, status, start_time, content_hash, delivery_id, applied_at)
SELECT CASE WHEN i % 10 < 6 THEN $1 ELSE 'other' END, 'apt-' || i, 'booked', now(), sha256(int8send(i)),
    (SELECT min(id) FROM webhook_deliveries), now() - interval '200 days' + i * interval '288 s'
FROM generate_series(1, 60000) i`, ehr); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`ANALYZE appointment_history`); err != nil {
		t.Fatal(err)
	}
	// Rows 1 … 30,000 are older than 100 days, 6 in 10 of them this EHR's
	// (not counted with a query: that would read the table too).
	const old = 18000
	before := tableReads(t, db, "appointment_history", 0)
	p, ran, err := s.Prune(ctx, ehr, Retention{History: 100 * day}, time.Now())
	if err != nil || !ran || p.History != old {
		t.Fatalf("Prune: ran %v, %+v, %v; want %d history rows", ran, p, err, old)
	}
	// Each deleted row is read about twice (found, then deleted by id);
	// the plans vary with autovacuum's statistics, so 10 times is the
	// bound. Scanning from the oldest row each batch read 2.1 M.
	if read := tableReads(t, db, "appointment_history", old) - before; read > 10*old {
		t.Errorf("deleting %d history rows read %d, want at most %d", old, read, 10*old)
	} else {
		t.Logf("deleting %d history rows read %d", old, read)
	}
}
