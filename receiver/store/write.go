package store

import (
	"cmp"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// writeSQL stores a group of requests in one statement, and so in one
// round trip and one implicit transaction (DESIGN §6: the batcher's shared
// transaction). It returns, per request in group order, the appointments
// written and the entries quarantined.
//
//   - A delivery row per request. The rows are inserted in request order,
//     so their identity values ascend in that order and the n-th smallest
//     id is the n-th request's (TestWriteGroupDeliveryIDs): each request's
//     entries and quarantined entries find theirs by the request's ordinal.
//     (Drawing the ids with nextval() first would need USAGE on the
//     sequence, a privilege a least-privilege role may lack.)
//   - The entries whose content hash the appointment's history lacks
//     (older or identical content is a no-op, so a replayed old delivery
//     cannot undo a newer change) are upserted as snapshots into patients,
//     practitioners and appointments, with a history row per applied
//     change. Patients and practitioners are only written from entries
//     that apply, so a replay cannot roll a patient back either. A patient
//     or practitioner named by several entries gets the latest entry's
//     content, as writing the requests one by one would. The group's
//     requests name distinct appointments (the batcher sees to it), so no
//     appointment is upserted twice.
//   - The appointment upsert also skips a row whose current hash equals
//     the entry's: that covers a concurrent identical delivery committed
//     after this statement's snapshot was taken (ON CONFLICT sees the
//     latest row version). History rows are written after the
//     appointment's row lock is held, so their order is the order in
//     which changes were applied.
//   - OFFSET 0 keeps the history check a per-entry index probe: without it
//     the planner may turn NOT EXISTS into a hash anti-join that reads
//     every history row of the EHR for every statement, so writes slow
//     down as the history grows (BenchmarkWriteLargeHistory).
//   - The quarantined entries.
//
// Lock order: every lock is taken inside this one statement, table by table
// (patients, practitioners, appointments: the appointment insert's one-time
// filter runs the other two first; then history rows, whose appointments
// this statement already holds) and in ascending key order within each
// table. Two such statements can never wait for each other in a cycle, so
// no advisory locks are needed.
const writeSQL = `
WITH delivery AS (
    INSERT INTO webhook_deliveries (ehr, request_id, received_at, body_sha256, item_count, outcome, status_code)
    SELECT $1, request_id, received_at, body_sha256, item_count, outcome, status_code
    FROM unnest($2::text[], $3::timestamptz[], $4::bytea[], $5::integer[], $6::text[], $7::integer[])
        WITH ORDINALITY AS d(request_id, received_at, body_sha256, item_count, outcome, status_code, req)
    ORDER BY req
    RETURNING id
), delivery_in AS (
    SELECT id AS delivery_id, row_number() OVER (ORDER BY id) AS req FROM delivery
), entry AS (
    SELECT u.*, d.delivery_id
    FROM unnest(
        $8::integer[], $9::text[], $10::bytea[], $11::text[], $12::text[], $13::text[], $14::text[],
        $15::timestamptz[], $16::date[], $17::timestamptz[], $18::text[], $19::integer[],
        $20::text[], $21::text[], $22::text[], $23::text[], $24::text[], $25::text[],
        $26::text[], $27::text[], $28::text[], $29::date[], $30::text[], $31::text[], $32::text[],
        $33::text[], $34::text[]
    ) WITH ORDINALITY AS u(
        req, id, content_hash, patient_id, practitioner_id, status, status_raw,
        start_time, start_date, created_time, type, duration_minutes,
        reason, notes, location_name, encounter_id, encounter_reason, department_id,
        pat_first_name, pat_middle_name, pat_last_name, pat_birth_date, pat_gender, pat_phone, pat_email,
        pra_first_name, pra_last_name,
        ord
    )
    JOIN delivery_in d ON d.req = u.req
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
    RETURNING 1
), practitioner AS (
    INSERT INTO practitioners AS r (ehr, external_id, first_name, last_name)
    SELECT DISTINCT ON (practitioner_id) $1, practitioner_id, pra_first_name, pra_last_name
    FROM entry
    ORDER BY practitioner_id, ord DESC
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, updated_at = now()
    WHERE (r.first_name, r.last_name) IS DISTINCT FROM (EXCLUDED.first_name, EXCLUDED.last_name)
    RETURNING 1
), appointment AS (
    INSERT INTO appointments AS a (
        ehr, external_id, patient_external_id, practitioner_external_id, status, status_raw,
        start_time, start_date, created_time, type, duration_minutes, reason, notes,
        location_name, encounter_id, encounter_reason, department_id, content_hash, delivery_id)
    SELECT
        $1, id, patient_id, practitioner_id, status, status_raw,
        start_time, start_date, created_time, type, duration_minutes, reason, notes,
        location_name, encounter_id, encounter_reason, department_id, content_hash, delivery_id
    FROM entry
    WHERE (SELECT count(*) FROM patient) >= 0 AND (SELECT count(*) FROM practitioner) >= 0
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
    SELECT $1, d.delivery_id, q.entry_index, q.raw, q.errors
    FROM unnest($35::integer[], $36::integer[], $37::bytea[], $38::jsonb[]) AS q(req, entry_index, raw, errors)
    JOIN delivery_in d ON d.req = q.req
    RETURNING delivery_id
)
SELECT d.req,
    (SELECT count(*) FROM appointment a WHERE a.delivery_id = d.delivery_id),
    (SELECT count(*) FROM quarantine q WHERE q.delivery_id = d.delivery_id)
FROM delivery_in d
ORDER BY d.req
`

// prepared is one request turned into rows of the statement's arrays.
// Built in the caller's goroutine, so hashing runs in parallel outside the
// batcher.
type prepared struct {
	delivery    Delivery
	rows        []entryRow // deduped (last wins), sorted by appointment id
	quarantined []quarantineRow
	entries     int // len(Batch.Entries): written + duplicates
}

type entryRow struct {
	id, patientID, practitionerID, status, statusRaw, typ string
	hash                                                  []byte
	start, startDate, created, birth                      string
	reason, notes, location, encID, encReason, dept       sql.NullString
	duration                                              sql.NullInt64
	patFirst, patLast, gender, praFirst, praLast          string
	middle, phone, email                                  sql.NullString
}

type quarantineRow struct {
	index  int64
	raw    []byte
	errors string // JSON
}

// prepare dedupes appointments (the last entry wins, DESIGN §6), sorts them
// by id and hashes each.
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

	rows := make([]entryRow, len(idx))
	for k, i := range idx {
		e := b.Entries[i]
		a, p, r := e.Appointment, e.Patient, e.Practitioner
		h := ContentHash(e)
		rows[k] = entryRow{
			id: a.ID, patientID: p.ID, practitionerID: r.ID,
			status: a.Status, statusRaw: a.StatusRaw, typ: a.Type,
			hash:  h[:],
			start: timestamp(a.Start), startDate: date(a.StartDate), created: timestamp(a.Created), birth: date(p.BirthDate),
			reason: nullString(a.Reason), notes: nullString(a.Notes),
			location: nullString(e.LocationName), encID: nullString(e.EncounterID),
			encReason: nullString(e.EncounterReason), dept: nullString(e.DepartmentID),
			duration: nullInt(a.DurationMinutes),
			patFirst: p.FirstName, patLast: p.LastName, gender: p.Gender,
			praFirst: r.FirstName, praLast: r.LastName,
			middle: nullString(p.MiddleName), phone: nullString(p.Phone), email: nullString(p.Email),
		}
	}

	quarantined := make([]quarantineRow, len(b.Quarantined))
	for i, q := range b.Quarantined {
		raw := []byte(q.Raw)
		if raw == nil {
			raw = []byte{}
		}
		errs := q.Errors
		if errs == nil {
			errs = []payload.FieldError{}
		}
		j, err := json.Marshal(errs)
		if err != nil {
			return nil, fmt.Errorf("quarantined entry %d: while encoding its errors: %w", q.Index, err)
		}
		quarantined[i] = quarantineRow{index: int64(q.Index), raw: raw, errors: string(j)}
	}
	return &prepared{delivery: d, rows: rows, quarantined: quarantined, entries: len(b.Entries)}, nil
}

// writeArgs lays a group's requests out as writeSQL's arguments. Every
// request must be for the same EHR.
func writeArgs(group []*prepared) []any {
	var (
		nRows, nQuar int
	)
	for _, p := range group {
		nRows += len(p.rows)
		nQuar += len(p.quarantined)
	}
	g := len(group)
	var (
		dReqID, dReceived, dOutcome = make([]string, 0, g), make([]string, 0, g), make([]string, 0, g)
		dSHA                        = make([][]byte, 0, g)
		dItems, dStatus             = make([]int64, 0, g), make([]int64, 0, g)

		req                                             = make([]int64, 0, nRows)
		ids, patIDs, praIDs, status, statusRaw, typ     = make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows)
		start, startDate, created, birth                = make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows)
		patFirst, patLast, gender, praFirst, praLast    = make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows), make([]string, 0, nRows)
		reason, notes, location, encID, encReason, dept = make([]sql.NullString, 0, nRows), make([]sql.NullString, 0, nRows), make([]sql.NullString, 0, nRows), make([]sql.NullString, 0, nRows), make([]sql.NullString, 0, nRows), make([]sql.NullString, 0, nRows)
		middle, phone, email                            = make([]sql.NullString, 0, nRows), make([]sql.NullString, 0, nRows), make([]sql.NullString, 0, nRows)
		duration                                        = make([]sql.NullInt64, 0, nRows)
		hashes                                          = make([][]byte, 0, nRows)
		qReq, qIndex                                    = make([]int64, 0, nQuar), make([]int64, 0, nQuar)
		qRaw                                            = make([][]byte, 0, nQuar)
		qErrors                                         = make([]string, 0, nQuar)
	)
	for i, p := range group {
		n := int64(i + 1) // WITH ORDINALITY counts from 1
		d := p.delivery
		dReqID, dReceived, dOutcome = append(dReqID, d.RequestID), append(dReceived, timestamp(d.ReceivedAt)), append(dOutcome, string(d.Outcome))
		dSHA = append(dSHA, p.delivery.BodySHA256[:])
		dItems, dStatus = append(dItems, int64(d.ItemCount)), append(dStatus, int64(d.StatusCode))
		for _, r := range p.rows {
			req = append(req, n)
			ids, patIDs, praIDs = append(ids, r.id), append(patIDs, r.patientID), append(praIDs, r.practitionerID)
			status, statusRaw, typ = append(status, r.status), append(statusRaw, r.statusRaw), append(typ, r.typ)
			hashes = append(hashes, r.hash)
			start, startDate, created, birth = append(start, r.start), append(startDate, r.startDate), append(created, r.created), append(birth, r.birth)
			reason, notes, location = append(reason, r.reason), append(notes, r.notes), append(location, r.location)
			encID, encReason, dept = append(encID, r.encID), append(encReason, r.encReason), append(dept, r.dept)
			duration = append(duration, r.duration)
			patFirst, patLast, gender = append(patFirst, r.patFirst), append(patLast, r.patLast), append(gender, r.gender)
			middle, phone, email = append(middle, r.middle), append(phone, r.phone), append(email, r.email)
			praFirst, praLast = append(praFirst, r.praFirst), append(praLast, r.praLast)
		}
		for _, q := range p.quarantined {
			qReq, qIndex, qRaw, qErrors = append(qReq, n), append(qIndex, q.index), append(qRaw, q.raw), append(qErrors, q.errors)
		}
	}
	return []any{
		group[0].delivery.EHR,
		textArray(dReqID), textArray(dReceived), pq.ByteaArray(dSHA), pq.Int64Array(dItems), textArray(dOutcome), pq.Int64Array(dStatus),
		pq.Int64Array(req), textArray(ids), pq.ByteaArray(hashes), textArray(patIDs), textArray(praIDs),
		textArray(status), textArray(statusRaw),
		textArray(start), textArray(startDate), textArray(created), textArray(typ),
		nullIntArray(duration), nullTextArray(reason), nullTextArray(notes), nullTextArray(location),
		nullTextArray(encID), nullTextArray(encReason), nullTextArray(dept),
		textArray(patFirst), nullTextArray(middle), textArray(patLast), textArray(birth),
		textArray(gender), nullTextArray(phone), nullTextArray(email),
		textArray(praFirst), textArray(praLast),
		pq.Int64Array(qReq), pq.Int64Array(qIndex), pq.ByteaArray(qRaw), textArray(qErrors),
	}
}

// textArray and nullTextArray are text[] arguments, the second with NULL
// elements. pq.StringArray copies every element to a []byte and pq.Array
// works by reflection: together they were about a sixth of the receiver's
// CPU at 100-entry batches.
type (
	textArray     []string
	nullTextArray []sql.NullString
)

func (a textArray) Value() (driver.Value, error) {
	size := 0
	for _, s := range a {
		size += len(s) + 3
	}
	return arrayLiteral(len(a), size, func(int) bool { return true }, func(b []byte, i int) []byte {
		return appendQuoted(b, a[i])
	}), nil
}

func (a nullTextArray) Value() (driver.Value, error) {
	size := 0
	for _, s := range a {
		size += len(s.String) + 3
	}
	return arrayLiteral(len(a), size, func(i int) bool { return a[i].Valid }, func(b []byte, i int) []byte {
		return appendQuoted(b, a[i].String)
	}), nil
}

// appendQuoted appends s as a quoted array element, with every double
// quote and backslash escaped by a backslash.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	for {
		i := strings.IndexAny(s, "\"\\")
		if i < 0 {
			b = append(b, s...)
			break
		}
		b = append(b, s[:i]...)
		b = append(b, '\\', s[i])
		s = s[i+1:]
	}
	return append(b, '"')
}

// nullIntArray is an integer[] argument with NULL elements.
type nullIntArray []sql.NullInt64

func (a nullIntArray) Value() (driver.Value, error) {
	return arrayLiteral(len(a), 4*len(a), func(i int) bool { return a[i].Valid }, func(b []byte, i int) []byte {
		return strconv.AppendInt(b, a[i].Int64, 10)
	}), nil
}

// arrayLiteral is the text form of an n-element array, {e1,NULL,e3}: valid
// tells which elements are not NULL, and elem appends element i. size is a
// guess of the elements' bytes.
func arrayLiteral(n, size int, valid func(int) bool, elem func(b []byte, i int) []byte) string {
	b := make([]byte, 0, size+n+2)
	b = append(b, '{')
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		if valid(i) {
			b = elem(b, i)
		} else {
			b = append(b, "NULL"...)
		}
	}
	return string(append(b, '}'))
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
