package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// writeSQL stores a group of requests in one statement, and so in one
// round trip and one implicit transaction (architecture.md, "Schema and write path": the batcher's shared
// transaction). It returns, per request in group order, the appointments
// written, the entries superseded and the entries quarantined. Its column
// lists come from columns.go; testdata/write.sql.golden is the statement as built.
//
//   - A delivery row per request. The rows are inserted in request order,
//     so their identity values ascend in that order and the n-th smallest
//     id is the n-th request's (TestWriteGroupDeliveryIDs): each request's
//     entries and quarantined entries find theirs by the request's ordinal.
//     (Drawing the ids with nextval() first would need USAGE on the
//     sequence, a privilege a least-privilege role may lack.)
//   - An entry whose content hash the appointment's history lacks is
//     superseded when it is a retry the receiver remembers (its version
//     was first received before its request) and the appointment's stored
//     version was first received after it. It gets a history row
//     marked superseded, so its redelivery is a no-op, and changes nothing
//     else. A version first received with its request is never superseded:
//     such an entry is applied as before, so the receivers' clocks decide
//     nothing for versions arriving the first time. The check reads the
//     statement's snapshot: a newer version committed while this statement
//     runs is not seen, as before (concurrent deliveries are not ordered).
//     AND evaluates left to right, so a first delivery skips the probe.
//   - The other entries whose content hash the appointment's history lacks
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
//     which changes were applied. A superseded entry's history row is
//     written with them (the sort reads every appointment row first).
//   - OFFSET 0 keeps the history check a per-entry index probe: without it
//     the planner may turn NOT EXISTS into a hash anti-join that reads
//     every history row of the EHR for every statement, so writes slow
//     down as the history grows (BenchmarkWriteLargeHistory).
//   - The quarantined entries, each once while its content is pending in
//     the EHR's quarantine (quarantineTemplate).
//   - A replay's quarantined entries are marked replayed (once: a
//     concurrent replay of the same entry marks nothing).
//
// Lock order: every lock is taken inside this one statement, table by table
// (patients, practitioners, appointments: the appointment insert's one-time
// filter runs the other two first; then quarantined entries, in ascending
// content order; then history rows, whose appointments this statement
// already holds or, for superseded entries, does not touch) and in
// ascending key order within each table. Two such statements can
// never wait for each other in a cycle, so no advisory locks are needed.
const writeTemplate = `
WITH delivery AS (
    INSERT INTO webhook_deliveries (ehr, {{delivery}})
    SELECT $1, {{delivery}}
    FROM unnest({{delivery params}})
        WITH ORDINALITY AS d({{delivery}}, req)
    ORDER BY req
    RETURNING id, received_at
), delivery_in AS (
    SELECT id AS delivery_id, received_at, row_number() OVER (ORDER BY id) AS req FROM delivery
), entry AS (
    SELECT u.*, d.delivery_id, d.received_at AS delivery_received_at,
        {{superseded}} AS superseded
    FROM unnest(
        {{entry req}}, {{entry params}}
    ) WITH ORDINALITY AS u(
        req, {{entry}},
        ord
    )
    JOIN delivery_in d ON d.req = u.req
    WHERE NOT EXISTS (
        SELECT 1 FROM appointment_history h
        WHERE h.ehr = $1 AND h.appointment_external_id = u.{{appointments key}} AND h.content_hash = u.content_hash
        OFFSET 0
    )
){{patient}}{{practitioner}}, appointment AS (
    INSERT INTO appointments AS a (
        ehr, {{appointments columns}}, delivery_id)
    SELECT
        $1, {{appointments arrays}}, delivery_id
    FROM entry
    WHERE {{applies}}(SELECT count(*) FROM patient) >= 0 AND (SELECT count(*) FROM practitioner) >= 0
    ORDER BY {{appointments key}}
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        {{appointments set}},
        delivery_id = EXCLUDED.delivery_id, updated_at = now()
    WHERE a.content_hash <> EXCLUDED.content_hash{{appointment recheck}}
    RETURNING {{history arrays}}
), history AS (
    INSERT INTO appointment_history (ehr, {{history columns}}, superseded)
    SELECT $1, {{history arrays}}, false
    FROM appointment{{superseded history}}
    ORDER BY {{history key}}
    ON CONFLICT DO NOTHING
){{quarantine ctes}}
SELECT d.req,
    (SELECT count(*) FROM appointment a WHERE a.delivery_id = d.delivery_id),
    {{superseded count}},
    {{quarantine count}}
FROM delivery_in d
ORDER BY d.req
`

// quarantineTemplate is the quarantined entries and the replay's marks.
// An entry whose content (raw_sha256, the SHA-256 of the entry as sent) is
// already pending in the EHR's quarantine, or earlier in the statement,
// is not kept again (migration 7's partial unique index): a retried
// delivery whose 200 was lost keeps its invalid entries once. ON CONFLICT
// sees rows committed after the statement's snapshot, and waits for one
// another statement is inserting, so two retries written at once keep one
// row. The rows go in ascending content order, as every other table's
// (the lock order above), so two such statements cannot wait for each
// other in a cycle; of identical entries, the first request's, lowest
// index is kept. RETURNING answers only the rows inserted: an entry not
// kept again is counted with the duplicates (writeGroup).
const quarantineTemplate = `, quarantine AS (
    INSERT INTO quarantined_entries (ehr, delivery_id, {{quarantine}}, raw_sha256)
    SELECT $1, d.delivery_id, {{q.quarantine}}, sha256(q.raw) AS raw_sha256
    FROM unnest({{quarantine req}}, {{quarantine params}}) AS q(req, {{quarantine}})
    JOIN delivery_in d ON d.req = q.req
    ORDER BY raw_sha256, q.req, q.entry_index
    ON CONFLICT (ehr, raw_sha256) WHERE replayed_at IS NULL AND raw IS NOT NULL DO NOTHING
    RETURNING delivery_id
), replayed AS (
    UPDATE quarantined_entries q SET replayed_at = d.received_at
    FROM unnest({{replay req}}, {{replay params}}) AS r(req, {{replay}})
    JOIN delivery_in d ON d.req = r.req
    WHERE q.id = r.quarantine_id AND q.ehr = $1 AND q.replayed_at IS NULL
)`

// fullParts are the parts of writeTemplate that a simple group does
// without (writeSimpleSQL), and simpleParts what it has in their place.
var fullParts = map[string]string{
	"superseded": `COALESCE(u.version_received_at < d.received_at AND u.version_received_at < (
            SELECT a.version_received_at FROM appointments a
            WHERE a.ehr = $1 AND a.external_id = u.{{appointments key}}
        ), false)`,
	"applies": "NOT superseded AND ",
	"superseded history": `
    UNION ALL
    SELECT $1, {{history entry arrays}}, true
    FROM entry
    WHERE superseded`,
	"superseded count": "(SELECT count(*) FROM entry e WHERE e.superseded AND e.delivery_id = d.delivery_id)",
	"quarantine count": "(SELECT count(*) FROM quarantine q WHERE q.delivery_id = d.delivery_id)",
	"quarantine ctes":  quarantineTemplate,
	// The superseded checks again, on the row as the upsert locked it: the
	// statement's snapshot misses a newer version committed while it ran
	// (waiting for a row lock, say), and ON CONFLICT DO UPDATE would
	// overwrite it with the retried one. Such an entry then counts as a
	// duplicate, without a history row.
	"appointment recheck": `
        AND NOT COALESCE(EXCLUDED.version_received_at < a.version_received_at AND EXCLUDED.version_received_at < (
            SELECT d.received_at FROM delivery_in d WHERE d.delivery_id = EXCLUDED.delivery_id
        ), false)`,
	// snapshotTemplate's
	"recheck": `
        AND NOT COALESCE(EXCLUDED.version_received_at < {{alias}}.version_received_at AND EXISTS (
            SELECT 1 FROM entry e WHERE e.{{key}} = EXCLUDED.external_id
                AND e.version_received_at = EXCLUDED.version_received_at AND e.version_received_at < e.delivery_received_at
        ), false)`,
	"where": `
    WHERE NOT superseded AND NOT COALESCE(version_received_at < delivery_received_at AND version_received_at < (
        SELECT t.version_received_at FROM {{table}} t WHERE t.ehr = $1 AND t.external_id = entry.{{key}}
    ), false)`,
}

var simpleParts = map[string]string{
	"superseded": "false", "applies": "", "superseded history": "",
	"superseded count": "0::bigint", "quarantine count": "0::bigint", "quarantine ctes": "", "where": "",
	"appointment recheck": "", "recheck": "",
}

// snapshotTemplate is the patient and the practitioner upsert: one row
// per patient (practitioner), the latest entry's. A retried or replayed
// entry (its version first received before its request) is left out when
// the row was changed since by a version first received after it, as an
// appointment's is superseded: it would roll back what a newer delivery,
// naming another appointment, wrote. A row is still made from it when
// missing (the appointment refers to it). version_received_at moves with
// the content only, so an unchanged snapshot writes nothing.
const snapshotTemplate = `, {{cte}} AS (
    INSERT INTO {{table}} AS {{alias}} (ehr, {{columns}}, version_received_at)
    SELECT DISTINCT ON ({{key}})
        $1, {{arrays}}, version_received_at
    FROM entry{{where}}
    ORDER BY {{key}}, ord DESC
    ON CONFLICT (ehr, external_id) DO UPDATE SET
        {{set}},
        version_received_at = EXCLUDED.version_received_at,
        updated_at = now()
    WHERE ({{alias.values}})
        IS DISTINCT FROM ({{EXCLUDED.values}}){{recheck}}
    RETURNING 1
)`

// recordTemplate is RecordDeliveries' statement: delivery rows of one EHR,
// with their field errors (recordColumns).
const recordTemplate = `
INSERT INTO webhook_deliveries (ehr, {{record}})
SELECT $1, {{record}}
FROM unnest({{record params}}) AS d({{record}})
`

var (
	writeSQL = fill(writeTemplate, writeVars(false))
	// writeSimpleSQL is writeSQL for a group with no quarantined or
	// replayed entries whose entries were all first received with their
	// requests (simple): no entry can be superseded or roll a patient or
	// practitioner back, so the statement leaves those checks, the
	// superseded history rows and the quarantine's parts out, and takes
	// writeSQL's arguments up to the entries' arrays. It answers as
	// writeSQL would (no superseded or quarantined entries). Counted with
	// callgrind, a group of four one-appointment requests takes 2.92 M
	// instructions of the backend instead of 3.25 M (-10 %); one request
	// 1.44 M instead of 1.72 M.
	writeSimpleSQL = fill(writeTemplate, writeVars(true))
	recordSQL      = fill(recordTemplate, recordVars())
)

// writeVars are the templates' {{names}}. The arguments are writeArgs':
// the EHR, then the deliveries' arrays, the entries' request ordinals and
// arrays, the quarantined entries' ordinals and arrays, the replayed
// entries' ordinals and ids.
func writeVars(simple bool) map[string]string {
	v := map[string]string{}
	addArrays := arrayParams(v)
	addArrays("delivery", deliveryArrays.names, deliveryArrays.types, false)
	addArrays("entry", entryArrays.names, entryArrays.types, true)
	addArrays("quarantine", quarantineArrays.names, quarantineArrays.types, true)
	addArrays("replay", replayArrays.names, replayArrays.types, true)
	for name, t := range map[string]Table{"appointments": appointments, "history": history} {
		v[name+" columns"], v[name+" arrays"], v[name+" key"] = list(t.Columns()), list(t.Arrays()), t.Key()
		v[name+" set"] = list(set(t.Values()))
	}
	v["history entry arrays"] = list(historyFromEntry())
	parts := fullParts
	if simple {
		parts = simpleParts
	}
	for name, part := range parts {
		if name != "where" && name != "recheck" {
			v[name] = fill(part, v)
		}
	}
	for _, s := range []struct {
		cte, alias string
		t          Table
	}{{"patient", "p", patients}, {"practitioner", "r", practitioners}} {
		snapshot := map[string]string{
			"cte": s.cte, "table": s.t.name, "alias": s.alias,
			"columns": list(s.t.Columns()), "arrays": list(s.t.Arrays()), "key": s.t.Key(),
			"set":             list(set(s.t.Values())),
			"alias.values":    list(qualify(s.alias, s.t.Values())),
			"EXCLUDED.values": list(qualify("EXCLUDED", s.t.Values())),
		}
		snapshot["where"] = fill(parts["where"], snapshot)
		snapshot["recheck"] = fill(parts["recheck"], snapshot)
		v[s.cte] = fill(snapshotTemplate, snapshot)
	}
	return v
}

// recordVars are recordTemplate's {{names}}: the EHR, then the arrays of
// recordColumns.
func recordVars() map[string]string {
	v := map[string]string{}
	arrayParams(v)("record", recordArrays.names, recordArrays.types, false)
	return v
}

// arrayParams returns a function that numbers a statement's array
// parameters, after $1 (the EHR), in the order it is called: each call
// sets v[name] (the arrays' names), v[name+" params"] (the parameters,
// cast to arrays of their types), v["q."+name] (the names qualified by q)
// and, with req, v[name+" req"] (a request ordinal's integer[] first).
func arrayParams(v map[string]string) func(name string, names, types []string, req bool) {
	n := 2 // $1 is the EHR
	return func(name string, names, types []string, req bool) {
		if req {
			v[name+" req"] = "$" + strconv.Itoa(n) + "::integer[]"
			n++
		}
		ps := make([]string, len(types))
		for i, t := range types {
			ps[i] = "$" + strconv.Itoa(n) + "::" + t + "[]"
			n++
		}
		v[name], v[name+" params"], v["q."+name] = list(names), list(ps), list(qualify("q", names))
	}
}

// fill replaces each {{name}} in src by vars[name]; a name without a value
// is a mistake in this file, caught when the package starts.
func fill(src string, vars map[string]string) string {
	var b strings.Builder
	for {
		i := strings.Index(src, "{{")
		if i < 0 {
			b.WriteString(src)
			return b.String()
		}
		j := strings.Index(src[i:], "}}")
		if j < 0 {
			panic("store: unterminated {{ in a statement template")
		}
		val, ok := vars[src[i+2:i+j]]
		if !ok {
			panic("store: no value for " + src[i:i+j+2] + " in a statement template")
		}
		b.WriteString(src[:i])
		b.WriteString(val)
		src = src[i+j+2:]
	}
}

// historyFromEntry is a superseded entry's history row: for each history
// column, the entry's array of the appointment column it is returned as.
func historyFromEntry() []string {
	arrayOf := map[string]string{"delivery_id": "delivery_id"} // not an entry array
	for _, c := range appointments.columns {
		arrayOf[c.name] = c.array
	}
	out := make([]string, len(history.columns))
	for i, c := range history.columns {
		a, ok := arrayOf[c.array]
		if !ok {
			panic("store: history column " + c.name + " is not an appointment column")
		}
		out[i] = a
	}
	return out
}

func set(cols []string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = c + " = EXCLUDED." + c
	}
	return out
}

func qualify(alias string, cols []string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = alias + "." + c
	}
	return out
}

// list joins items with commas, starting a new, indented line before one
// would pass 100 columns, so the statement stays readable.
func list(items []string) string {
	const width, indent = 100, "        "
	var b strings.Builder
	col := len(indent)
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
			if col+2+len(it) > width {
				b.WriteString("\n" + indent)
				col = len(indent)
			} else {
				b.WriteByte(' ')
				col += 2
			}
		}
		b.WriteString(it)
		col += len(it)
	}
	return b.String()
}

// prepared is one request laid out as rows of the statement's arrays.
// Built in the caller's goroutine, so hashing and encoding run in parallel
// outside the batcher.
type prepared struct {
	delivery    Delivery
	ids         []string // the appointments written: deduped (last wins), in batch order
	entries     int      // len(Batch.Entries): written + duplicates
	quarantined int
	replayed    int
	// patients and practitioners named by those entries (repeats kept):
	// with ids, the rows the statement upserts (held.go).
	patients, practitioners []string
	// simple: no quarantined or replayed entries, and every entry first
	// received with this request (not before it), so none can be
	// superseded: a group of such requests is written with writeSimpleSQL.
	simple bool

	deliveryRow, entryRows, quarantineRows, replayRows elements
}

// prepare dedupes appointments (the last entry wins, architecture.md,
// "Schema and write path"), keeps them in batch order (each entry's
// ordinality in the statement is its place, so the last entry naming a
// patient or practitioner is the one written; the statement orders its
// locks by key itself), hashes each (unless b.Versions did) and lays the
// request out for writeArgs.
func prepare(b Batch) (*prepared, error) {
	d := b.Delivery
	if err := d.check(); err != nil {
		return nil, err
	}
	if d.FieldErrorCount != 0 || d.FieldErrors != nil {
		return nil, errors.New("a delivery Write stores has no field errors: RecordDeliveries records a refused request's")
	}
	if b.Versions != nil && len(b.Versions) != len(b.Entries) {
		return nil, fmt.Errorf("%d versions for %d entries", len(b.Versions), len(b.Entries))
	}
	for i, v := range b.Versions {
		if v.FirstReceived.IsZero() {
			return nil, fmt.Errorf("entry %d: version without a received time", i)
		}
	}
	last := make(map[string]int, len(b.Entries))
	for i, e := range b.Entries {
		last[e.Appointment.ID] = i
	}
	idx := make([]int, 0, len(last))
	for _, i := range last {
		idx = append(idx, i)
	}
	slices.Sort(idx)

	rows := make([]entryRow, len(idx))
	ids := make([]string, len(idx))
	pats, pracs := make([]string, len(idx)), make([]string, len(idx))
	for k, i := range idx {
		e := &b.Entries[i]
		if b.Versions != nil {
			rows[k] = entryRow{Entry: e, hash: b.Versions[i].Hash, received: b.Versions[i].FirstReceived}
		} else {
			rows[k] = entryRow{Entry: e, hash: ContentHash(*e), received: d.ReceivedAt}
		}
		ids[k] = e.Appointment.ID
		pats[k], pracs[k] = e.Patient.ID, e.Practitioner.ID
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
	simple := len(quarantined) == 0 && len(b.Replayed) == 0
	for i := range rows {
		// Not before, in nanoseconds, is not before in PostgreSQL's
		// microseconds either: rounding keeps the order.
		simple = simple && !rows[i].received.Before(d.ReceivedAt)
	}
	return &prepared{
		delivery: d, ids: ids, patients: pats, practitioners: pracs, entries: len(b.Entries), quarantined: len(quarantined), replayed: len(b.Replayed),
		simple:         simple,
		deliveryRow:    deliveryArrays.encode([]Delivery{d}, 128),
		entryRows:      entryArrays.encode(rows, 512),
		quarantineRows: quarantineArrays.encode(quarantined, 256),
		replayRows:     replayArrays.encode(b.Replayed, 12),
	}, nil
}

// simpleGroup reports whether writeSimpleSQL may write the group.
func simpleGroup(group []*prepared) bool {
	for _, p := range group {
		if !p.simple {
			return false
		}
	}
	return true
}

// writeArgs lays a group's requests out as writeSQL's arguments, each array
// the text of an array literal; with simple, writeSimpleSQL's (the same,
// without the quarantined and replayed entries' arrays). Every request must
// be for the same EHR.
func writeArgs(group []*prepared, simple bool) []any {
	args := make([]any, 0, 4+len(deliveryArrays.names)+len(entryArrays.names)+len(quarantineArrays.names)+len(replayArrays.names))
	args = append(args, group[0].delivery.EHR)
	args = appendArrays(args, group, len(deliveryArrays.names), func(p *prepared) *elements { return &p.deliveryRow })
	args = append(args, ordinals(group, func(p *prepared) int { return len(p.ids) }))
	args = appendArrays(args, group, len(entryArrays.names), func(p *prepared) *elements { return &p.entryRows })
	if simple {
		return args
	}
	args = append(args, ordinals(group, func(p *prepared) int { return p.quarantined }))
	args = appendArrays(args, group, len(quarantineArrays.names), func(p *prepared) *elements { return &p.quarantineRows })
	args = append(args, ordinals(group, func(p *prepared) int { return p.replayed }))
	return appendArrays(args, group, len(replayArrays.names), func(p *prepared) *elements { return &p.replayRows })
}

// appendArrays appends n arrays, each the group's requests' elements one
// request after the other. The arrays are passed as []byte: lib/pq sends a
// []byte argument as it is, but copies a string. A group of one request
// passes its own literals; a larger one, slices of one new buffer.
func appendArrays(args []any, group []*prepared, n int, rows func(*prepared) *elements) []any {
	if len(group) == 1 {
		e := rows(group[0])
		for i := range n {
			args = append(args, e.literal(i))
		}
		return args
	}
	size := n * (len(group) + 2) // the braces and the commas between runs
	for _, p := range group {
		size += len(rows(p).buf)
	}
	buf := make([]byte, 0, size) // never grows: the slices stay in it
	for i := range n {
		start := len(buf)
		buf = append(buf, '{')
		empty := true
		for _, p := range group {
			run := rows(p).run(i)
			if len(run) == 0 { // no rows: an element is never empty
				continue
			}
			if !empty {
				buf = append(buf, ',')
			}
			buf = append(buf, run...)
			empty = false
		}
		buf = append(buf, '}')
		args = append(args, buf[start:len(buf):len(buf)])
	}
	return args
}

// ordinals is the integer[] of each row's request: n(p) times p's ordinal,
// counted from 1 as WITH ORDINALITY does.
func ordinals(group []*prepared, n func(*prepared) int) []byte {
	b := make([]byte, 0, 64)
	b = append(b, '{')
	for i, p := range group {
		for range n(p) {
			if len(b) > 1 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(i+1), 10)
		}
	}
	return append(b, '}')
}
