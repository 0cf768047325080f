package store

import (
	"cmp"
	"database/sql"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// writeSQL stores one request in one round trip: the delivery row, then the
// entries whose content hash the appointment's history lacks (older or
// identical content is a no-op), upserted as snapshots into patients,
// practitioners and appointments, a history row per applied change, and the
// quarantined entries. Patients and practitioners are only written from
// entries that apply, so a replayed old entry cannot roll them back either.
//
// The appointment upsert also skips a row whose current hash equals the
// entry's: that covers a concurrent identical delivery committed after this
// statement's snapshot was taken (ON CONFLICT sees the latest row version).
//
// OFFSET 0 keeps the history check a per-entry index probe: without it the
// planner may turn NOT EXISTS into a hash anti-join that reads every history
// row of the EHR for every statement, so writes slow down as the history
// grows (docs/performance.md, BenchmarkWriteLargeHistory).
//
// The caller dedupes appointments (last wins) and sorts by key; patients and
// practitioners are deduped here (the latest entry naming them wins).
const writeSQL = `
WITH delivery AS (
    INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    RETURNING id AS delivery_id
), entry AS (
    SELECT u.*
    FROM unnest(
        $8::text[], $9::bytea[], $10::text[], $11::text[], $12::text[], $13::text[],
        $14::timestamptz[], $15::date[], $16::timestamptz[], $17::text[], $18::integer[],
        $19::text[], $20::text[], $21::text[], $22::text[], $23::text[], $24::text[],
        $25::text[], $26::text[], $27::text[], $28::date[], $29::text[], $30::text[], $31::text[],
        $32::text[], $33::text[]
    ) WITH ORDINALITY AS u(
        id, content_hash, patient_id, practitioner_id, status, status_raw,
        start_time, start_date, created_time, type, duration_minutes,
        reason, notes, location_name, encounter_id, encounter_reason, department_id,
        pat_first_name, pat_middle_name, pat_last_name, pat_birth_date, pat_gender, pat_phone, pat_email,
        pra_first_name, pra_last_name,
        ord
    )
    WHERE NOT EXISTS (
        SELECT 1 FROM appointment_history h
        WHERE h.ehr = $1 AND h.appointment_external_id = u.id AND h.content_hash = u.content_hash
        OFFSET 0
    )
), patient AS (
    INSERT INTO patients AS p (ehr, external_id, first_name, middle_name, last_name, birth_date, gender, phone, email)
    SELECT DISTINCT ON (patient_id)
        $1, patient_id, pat_first_name, pat_middle_name, pat_last_name, pat_birth_date, pat_gender, pat_phone, pat_email
    FROM entry
    ORDER BY patient_id, ord DESC
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, middle_name = EXCLUDED.middle_name, last_name = EXCLUDED.last_name,
        birth_date = EXCLUDED.birth_date, gender = EXCLUDED.gender, phone = EXCLUDED.phone, email = EXCLUDED.email,
        updated_at = now()
    WHERE (p.first_name, p.middle_name, p.last_name, p.birth_date, p.gender, p.phone, p.email)
        IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.middle_name, EXCLUDED.last_name,
        EXCLUDED.birth_date, EXCLUDED.gender, EXCLUDED.phone, EXCLUDED.email)
), practitioner AS (
    INSERT INTO practitioners AS r (ehr, external_id, first_name, last_name)
    SELECT DISTINCT ON (practitioner_id) $1, practitioner_id, pra_first_name, pra_last_name
    FROM entry
    ORDER BY practitioner_id, ord DESC
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, updated_at = now()
    WHERE (r.first_name, r.last_name) IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.last_name)
), appointment AS (
    INSERT INTO appointments AS a (
        ehr, external_id, patient_external_id, practitioner_external_id, status, status_raw,
        start_time, start_date, created_time, type, duration_minutes, reason, notes,
        location_name, encounter_id, encounter_reason, department_id, content_hash, delivery_id)
    SELECT
        $1, id, patient_id, practitioner_id, status, status_raw,
        start_time, start_date, created_time, type, duration_minutes, reason, notes,
        location_name, encounter_id, encounter_reason, department_id, content_hash, (SELECT delivery_id FROM delivery)
    FROM entry
    ORDER BY id
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        patient_external_id = EXCLUDED.patient_external_id,
        practitioner_external_id = EXCLUDED.practitioner_external_id,
        status = EXCLUDED.status, status_raw = EXCLUDED.status_raw,
        start_time = EXCLUDED.start_time, start_date = EXCLUDED.start_date, created_time = EXCLUDED.created_time,
        type = EXCLUDED.type, duration_minutes = EXCLUDED.duration_minutes,
        reason = EXCLUDED.reason, notes = EXCLUDED.notes, location_name = EXCLUDED.location_name,
        encounter_id = EXCLUDED.encounter_id, encounter_reason = EXCLUDED.encounter_reason,
        department_id = EXCLUDED.department_id, content_hash = EXCLUDED.content_hash,
        delivery_id = EXCLUDED.delivery_id, updated_at = now()
    WHERE a.content_hash <> EXCLUDED.content_hash
    RETURNING external_id, status, start_time, content_hash, delivery_id
), history AS (
    INSERT INTO appointment_history (ehr, appointment_external_id, status, start_time, content_hash, delivery_id)
    SELECT $1, external_id, status, start_time, content_hash, delivery_id
    FROM appointment
    ORDER BY external_id
    ON CONFLICT DO NOTHING
), quarantine AS (
    INSERT INTO quarantined_entries (ehr, delivery_id, entry_index, raw, errors)
    SELECT $1, (SELECT delivery_id FROM delivery), q.entry_index, q.raw, q.errors
    FROM unnest($34::integer[], $35::bytea[], $36::jsonb[]) AS q(entry_index, raw, errors)
    RETURNING 1
)
SELECT (SELECT count(*) FROM appointment), (SELECT count(*) FROM quarantine)
`

// prepared is a batch turned into the statement's arguments, plus the
// advisory lock keys of every row it may touch. Built in the caller's
// goroutine, so hashing runs in parallel outside the shared transaction.
type prepared struct {
	ehr     string
	args    []any
	entries int // len(Batch.Entries): written + duplicates
	keys    []int64
}

// prepare dedupes appointments (the last entry wins, DESIGN §6), sorts them
// by key, hashes each and lays the columns out as arrays.
func prepare(b Batch) (*prepared, error) {
	d := b.Delivery
	if err := d.check(); err != nil {
		return nil, err
	}
	last := make(map[string]int, len(b.Entries))
	for i, e := range b.Entries {
		last[e.Appointment.ID] = i
	}
	idx := make([]int, 0, len(last))
	for _, i := range last {
		idx = append(idx, i)
	}
	slices.SortFunc(idx, func(i, j int) int {
		return cmp.Compare(b.Entries[i].Appointment.ID, b.Entries[j].Appointment.ID)
	})

	n := len(idx)
	var (
		ids, patIDs, praIDs, status, statusRaw, typ     = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		start, startDate, created, birth                = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		patFirst, patLast, gender, praFirst, praLast    = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		reason, notes, location, encID, encReason, dept = make([]sql.NullString, n), make([]sql.NullString, n), make([]sql.NullString, n), make([]sql.NullString, n), make([]sql.NullString, n), make([]sql.NullString, n)
		middle, phone, email                            = make([]sql.NullString, n), make([]sql.NullString, n), make([]sql.NullString, n)
		duration                                        = make([]sql.NullInt64, n)
		hashes                                          = make([][]byte, n)
		keys                                            = make([]int64, 0, 3*n)
	)
	for k, i := range idx {
		e := b.Entries[i]
		a, p, r := e.Appointment, e.Patient, e.Practitioner
		h, err := ContentHash(e)
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		hashes[k] = h[:]
		ids[k], patIDs[k], praIDs[k] = a.ID, p.ID, r.ID
		status[k], statusRaw[k], typ[k] = a.Status, a.StatusRaw, a.Type
		start[k], created[k] = timestamp(a.Start), timestamp(a.Created)
		startDate[k], birth[k] = date(a.StartDate), date(p.BirthDate)
		duration[k] = nullInt(a.DurationMinutes)
		reason[k], notes[k] = nullString(a.Reason), nullString(a.Notes)
		location[k], encID[k], encReason[k], dept[k] = nullString(e.LocationName), nullString(e.EncounterID), nullString(e.EncounterReason), nullString(e.DepartmentID)
		patFirst[k], patLast[k], gender[k] = p.FirstName, p.LastName, p.Gender
		middle[k], phone[k], email[k] = nullString(p.MiddleName), nullString(p.Phone), nullString(p.Email)
		praFirst[k], praLast[k] = r.FirstName, r.LastName
		keys = append(keys, lockKey(d.EHR, "patient", p.ID), lockKey(d.EHR, "practitioner", r.ID), lockKey(d.EHR, "appointment", a.ID))
	}

	qIndex := make([]int64, len(b.Quarantined))
	qRaw := make([][]byte, len(b.Quarantined))
	qErrors := make([]string, len(b.Quarantined))
	for i, q := range b.Quarantined {
		qIndex[i], qRaw[i] = int64(q.Index), []byte(q.Raw)
		if qRaw[i] == nil {
			qRaw[i] = []byte{}
		}
		errs := q.Errors
		if errs == nil {
			errs = []payload.FieldError{}
		}
		j, err := json.Marshal(errs)
		if err != nil {
			return nil, fmt.Errorf("quarantined entry %d: while encoding its errors: %w", q.Index, err)
		}
		qErrors[i] = string(j)
	}

	return &prepared{
		ehr:     d.EHR,
		entries: len(b.Entries),
		keys:    keys,
		args: []any{
			d.EHR, d.RequestID, d.ReceivedAt, d.BodySHA256[:], d.ItemCount, d.Outcome, d.StatusCode,
			pq.StringArray(ids), pq.ByteaArray(hashes), pq.StringArray(patIDs), pq.StringArray(praIDs),
			pq.StringArray(status), pq.StringArray(statusRaw),
			pq.StringArray(start), pq.StringArray(startDate), pq.StringArray(created), pq.StringArray(typ),
			pq.Array(duration), pq.Array(reason), pq.Array(notes), pq.Array(location),
			pq.Array(encID), pq.Array(encReason), pq.Array(dept),
			pq.StringArray(patFirst), pq.Array(middle), pq.StringArray(patLast), pq.StringArray(birth),
			pq.StringArray(gender), pq.Array(phone), pq.Array(email),
			pq.StringArray(praFirst), pq.StringArray(praLast),
			pq.Int64Array(qIndex), pq.ByteaArray(qRaw), pq.StringArray(qErrors),
		},
	}, nil
}

// timestamp keeps the instant exactly: the zone offset travels with it.
func timestamp(t time.Time) string { return t.Format(time.RFC3339Nano) }

// date is the calendar date of a midnight-UTC time (payload's convention).
func date(t time.Time) string { return t.UTC().Format(time.DateOnly) }

func nullString(s *string) sql.NullString {
	if s == nil {
		return sql.NullString{}
	}
	return sql.NullString{String: *s, Valid: true}
}

func nullInt(n *int) sql.NullInt64 {
	if n == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: int64(*n), Valid: true}
}

// lockKey maps a row's natural key to a transaction-level advisory lock
// key. A collision only makes two writes wait for each other.
func lockKey(ehr, kind, id string) int64 {
	h := fnv.New64a()
	for _, s := range []string{kind, ehr, id} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return int64(h.Sum64())
}
