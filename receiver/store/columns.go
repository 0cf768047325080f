package store

import (
	"encoding/hex"
	"strconv"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// The columns the write statement fills, described once: each with its
// name in its table, the name of the statement's array it comes from, and
// an encoder, which gives the array's SQL type and reads an element from a
// row. The write and RecordDelivery statements (write.go), their arguments
// and the benchmark's limit statements (hack/bench) are derived from these
// lists.

// entryRow is an entry as the statement's arrays read it.
type entryRow struct {
	*payload.Entry
	hash     [32]byte
	received time.Time // Version.FirstReceived
}

// shared marks a column whose array another column defines: both hold the
// same value (an appointment's patient is the patient's key).
var shared encoder[entryRow]

var patients = Table{name: "patients", columns: []column[entryRow]{
	{"external_id", "patient_id", text(func(r *entryRow) string { return r.Patient.ID })},
	{"first_name", "pat_first_name", text(func(r *entryRow) string { return r.Patient.FirstName })},
	{"middle_name", "pat_middle_name", optText(func(r *entryRow) *string { return r.Patient.MiddleName })},
	{"last_name", "pat_last_name", text(func(r *entryRow) string { return r.Patient.LastName })},
	{"birth_date", "pat_birth_date", date(func(r *entryRow) time.Time { return r.Patient.BirthDate })},
	{"gender", "pat_gender", text(func(r *entryRow) string { return r.Patient.Gender })},
	{"phone", "pat_phone", optText(func(r *entryRow) *string { return r.Patient.Phone })},
	{"email", "pat_email", optText(func(r *entryRow) *string { return r.Patient.Email })},
}}

var practitioners = Table{name: "practitioners", columns: []column[entryRow]{
	{"external_id", "practitioner_id", text(func(r *entryRow) string { return r.Practitioner.ID })},
	{"first_name", "pra_first_name", text(func(r *entryRow) string { return r.Practitioner.FirstName })},
	{"last_name", "pra_last_name", text(func(r *entryRow) string { return r.Practitioner.LastName })},
}}

var appointments = Table{name: "appointments", columns: []column[entryRow]{
	{"external_id", "id", text(func(r *entryRow) string { return r.Appointment.ID })},
	{"patient_external_id", "patient_id", shared},
	{"practitioner_external_id", "practitioner_id", shared},
	{"status", "status", text(func(r *entryRow) string { return r.Appointment.Status })},
	{"status_raw", "status_raw", text(func(r *entryRow) string { return r.Appointment.StatusRaw })},
	{"start_time", "start_time", timestamptz(func(r *entryRow) time.Time { return r.Appointment.Start })},
	{"start_date", "start_date", date(func(r *entryRow) time.Time { return r.Appointment.StartDate })},
	{"created_time", "created_time", timestamptz(func(r *entryRow) time.Time { return r.Appointment.Created })},
	{"type", "type", text(func(r *entryRow) string { return r.Appointment.Type })},
	{"duration_minutes", "duration_minutes", optInteger(func(r *entryRow) *int { return r.Appointment.DurationMinutes })},
	{"reason", "reason", optText(func(r *entryRow) *string { return r.Appointment.Reason })},
	{"notes", "notes", optText(func(r *entryRow) *string { return r.Appointment.Notes })},
	{"location_name", "location_name", optText(func(r *entryRow) *string { return r.LocationName })},
	{"encounter_id", "encounter_id", optText(func(r *entryRow) *string { return r.EncounterID })},
	{"encounter_reason", "encounter_reason", optText(func(r *entryRow) *string { return r.EncounterReason })},
	{"department_id", "department_id", optText(func(r *entryRow) *string { return r.DepartmentID })},
	{"content_hash", "content_hash", bytea(func(r *entryRow) []byte { return r.hash[:] })},
	{"version_received_at", "version_received_at", timestamptz(func(r *entryRow) time.Time { return r.received })},
}}

// history is written from what the appointment upsert returns, and from
// the superseded entries: its "arrays" are the appointment's columns (for a
// superseded entry, the entry's arrays of those columns).
var history = Table{name: "appointment_history", columns: []column[entryRow]{
	{"appointment_external_id", "external_id", shared},
	{"status", "status", shared},
	{"start_time", "start_time", shared},
	{"content_hash", "content_hash", shared},
	{"delivery_id", "delivery_id", shared},
	{"version_received_at", "version_received_at", shared},
}}

// deliveryColumns are webhook_deliveries' columns besides ehr, one row per
// request.
var deliveryColumns = []column[Delivery]{
	{"request_id", "request_id", text(func(d *Delivery) string { return d.RequestID })},
	{"received_at", "received_at", timestamptz(func(d *Delivery) time.Time { return d.ReceivedAt })},
	{"body_sha256", "body_sha256", bytea(func(d *Delivery) []byte { return d.BodySHA256[:] })},
	{"item_count", "item_count", integer(func(d *Delivery) int64 { return int64(d.ItemCount) })},
	{"outcome", "outcome", text(func(d *Delivery) string { return string(d.Outcome) })},
	{"status_code", "status_code", integer(func(d *Delivery) int64 { return int64(d.StatusCode) })},
}

// recordRow is a failed request's delivery as RecordDeliveries' arrays
// read it.
type recordRow struct {
	Delivery
	// errors is FieldErrors as a JSON array; nil when the answer listed
	// none (FieldErrorCount 0).
	errors *string
}

// recordColumns are the columns RecordDeliveries fills: deliveryColumns,
// and a refused request's field errors (migration 8), NULL when its answer
// listed none. The write statement leaves those NULL: a delivery it
// stores has none.
var recordColumns = append(lift(deliveryColumns, func(r *recordRow) *Delivery { return &r.Delivery }),
	column[recordRow]{"field_errors", "field_errors", optJSONB(func(r *recordRow) *string { return r.errors })},
	column[recordRow]{"field_error_count", "field_error_count", optInteger(func(r *recordRow) *int {
		if r.FieldErrorCount == 0 {
			return nil
		}
		return &r.FieldErrorCount
	})},
)

// lift makes columns of rows of type S columns of rows of type R, each of
// which holds an S (get).
func lift[R, S any](cols []column[S], get func(*R) *S) []column[R] {
	out := make([]column[R], len(cols))
	for i, c := range cols {
		out[i] = column[R]{name: c.name, array: c.array, enc: encoder[R]{typ: c.enc.typ}}
		if elem := c.enc.elem; elem != nil {
			out[i].enc.elem = func(b []byte, r *R) []byte { return elem(b, get(r)) }
		}
	}
	return out
}

// quarantineRow is a quarantined entry as the statement's arrays read it.
type quarantineRow struct {
	index  int64
	raw    []byte
	errors string // JSON
}

// quarantineColumns are quarantined_entries' columns besides ehr and
// delivery_id.
var quarantineColumns = []column[quarantineRow]{
	{"entry_index", "entry_index", integer(func(q *quarantineRow) int64 { return q.index })},
	{"raw", "raw", bytea(func(q *quarantineRow) []byte { return q.raw })},
	{"errors", "errors", jsonb(func(q *quarantineRow) string { return q.errors })},
}

// replayColumns are the quarantined_entries rows a replay marks.
var replayColumns = []column[int64]{
	{"id", "quarantine_id", bigint(func(id *int64) int64 { return *id })},
}

// Table is a table the write statement fills. Its lists are what the
// statement and the benchmark's limit (hack/bench) build their SQL from.
type Table struct {
	name    string
	columns []column[entryRow] // the key, external_id, first; ehr is implied
}

// column is one of a table's columns and the array it is written from.
type column[R any] struct {
	name  string
	array string
	enc   encoder[R]
}

// Name is the table's name.
func (t Table) Name() string { return t.name }

// Key is the array the table's external_id comes from.
func (t Table) Key() string { return t.columns[0].array }

// Columns are the table's columns, key first.
func (t Table) Columns() []string {
	return names(t.columns, func(c column[entryRow]) string { return c.name })
}

// Arrays are the arrays Columns come from, in the same order.
func (t Table) Arrays() []string {
	return names(t.columns, func(c column[entryRow]) string { return c.array })
}

// Values are the columns an upsert may change: all but the key.
func (t Table) Values() []string { return t.Columns()[1:] }

func names[C any](cols []C, name func(C) string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = name(c)
	}
	return out
}

// WriteTables are the tables the write statement fills from entries, in
// the order it locks them, and the history written from the appointments.
type WriteTables struct {
	Patients, Practitioners, Appointments, History Table
}

// Tables returns the write statement's tables.
func Tables() WriteTables {
	return WriteTables{Patients: patients, Practitioners: practitioners, Appointments: appointments, History: history}
}

// Array is one of the write statement's entry arrays: unnest() turns them
// into one row per entry, each array a column.
type Array struct {
	Name string
	Type string // of its elements, as PostgreSQL names it
}

// EntryArrays are the write statement's entry arrays, in argument order.
func EntryArrays() []Array {
	out := make([]Array, len(entryArrays.names))
	for i := range out {
		out[i] = Array{Name: entryArrays.names[i], Type: entryArrays.types[i]}
	}
	return out
}

// arrays are the array arguments of one kind of row, in argument order.
type arrays[R any] struct {
	names, types []string
	elems        []func(b []byte, r *R) []byte
}

// arraysOf lists the arrays the columns define, in their order. Each array
// is defined once; a shared column's, by another of the columns.
func arraysOf[R any](cols ...[]column[R]) arrays[R] {
	var a arrays[R]
	defined := map[string]bool{}
	for _, cs := range cols {
		for _, c := range cs {
			if c.enc.elem == nil {
				continue
			}
			if defined[c.array] {
				panic("store: array " + c.array + " is defined twice")
			}
			defined[c.array] = true
			a.names = append(a.names, c.array)
			a.types = append(a.types, c.enc.typ)
			a.elems = append(a.elems, c.enc.elem)
		}
	}
	for _, cs := range cols {
		for _, c := range cs {
			if !defined[c.array] {
				panic("store: column " + c.name + " reads array " + c.array + ", which no column defines")
			}
		}
	}
	return a
}

var (
	entryArrays      = arraysOf(appointments.columns, patients.columns, practitioners.columns)
	deliveryArrays   = arraysOf(deliveryColumns)
	recordArrays     = arraysOf(recordColumns)
	quarantineArrays = arraysOf(quarantineColumns)
	replayArrays     = arraysOf(replayColumns)
)

// elements are rows laid out for arrays, array by array, each as an array
// literal: array i is buf[ends[i-1]:ends[i]] (from 0 for i = 0), its
// elements, comma-separated, between braces. A request's rows are laid out
// in its own goroutine (prepare); a group of one request passes the
// literals as they are, a larger group joins the requests' runs.
type elements struct {
	buf  []byte
	ends []int
}

// encode lays rows out; sizeHint guesses the bytes of one row.
func (a arrays[R]) encode(rows []R, sizeHint int) elements {
	e := elements{buf: make([]byte, 0, sizeHint*len(rows)+2*len(a.elems)), ends: make([]int, len(a.elems))}
	for i, elem := range a.elems {
		e.buf = append(e.buf, '{')
		for j := range rows {
			if j > 0 {
				e.buf = append(e.buf, ',')
			}
			e.buf = elem(e.buf, &rows[j])
		}
		e.buf = append(e.buf, '}')
		e.ends[i] = len(e.buf)
	}
	return e
}

// literal is array i: its elements between braces, capped so that no
// append can write past it.
func (e *elements) literal(i int) []byte {
	start := 0
	if i > 0 {
		start = e.ends[i-1]
	}
	return e.buf[start:e.ends[i]:e.ends[i]]
}

// run is array i's elements, without the braces.
func (e *elements) run(i int) []byte {
	l := e.literal(i)
	return l[1 : len(l)-1]
}

// An encoder appends a row's element to an array literal: NULL, a number
// or a double-quoted string (quotes and backslashes escaped), which is
// what PostgreSQL reads for an element of its type.
type encoder[R any] struct {
	typ  string
	elem func(b []byte, r *R) []byte
}

func text[R any](get func(*R) string) encoder[R] {
	return encoder[R]{"text", func(b []byte, r *R) []byte { return appendQuoted(b, get(r)) }}
}

func optText[R any](get func(*R) *string) encoder[R] {
	return encoder[R]{"text", func(b []byte, r *R) []byte {
		if s := get(r); s != nil {
			return appendQuoted(b, *s)
		}
		return append(b, "NULL"...)
	}}
}

func jsonb[R any](get func(*R) string) encoder[R] {
	return encoder[R]{"jsonb", func(b []byte, r *R) []byte { return appendQuoted(b, get(r)) }}
}

func optJSONB[R any](get func(*R) *string) encoder[R] {
	return encoder[R]{"jsonb", func(b []byte, r *R) []byte {
		if s := get(r); s != nil {
			return appendQuoted(b, *s)
		}
		return append(b, "NULL"...)
	}}
}

func integer[R any](get func(*R) int64) encoder[R] {
	return encoder[R]{"integer", func(b []byte, r *R) []byte { return strconv.AppendInt(b, get(r), 10) }}
}

func bigint[R any](get func(*R) int64) encoder[R] {
	return encoder[R]{"bigint", func(b []byte, r *R) []byte { return strconv.AppendInt(b, get(r), 10) }}
}

func optInteger[R any](get func(*R) *int) encoder[R] {
	return encoder[R]{"integer", func(b []byte, r *R) []byte {
		if n := get(r); n != nil {
			return strconv.AppendInt(b, int64(*n), 10)
		}
		return append(b, "NULL"...)
	}}
}

// timestamptz is the instant in UTC: the column keeps the instant, not the
// zone, and a time in UTC is written without looking its zone up three
// times (date, clock, offset), which the EHR's zone cost per element.
func timestamptz[R any](get func(*R) time.Time) encoder[R] {
	return encoder[R]{"timestamptz", func(b []byte, r *R) []byte {
		b = append(b, '"')
		return append(appendRFC3339Nano(b, get(r).UTC()), '"')
	}}
}

// date is the calendar date of a midnight-UTC time (payload's convention).
func date[R any](get func(*R) time.Time) encoder[R] {
	return encoder[R]{"date", func(b []byte, r *R) []byte {
		b = append(b, '"')
		return append(appendDate(b, get(r).UTC()), '"')
	}}
}

// appendRFC3339Nano appends t.AppendFormat(b, time.RFC3339Nano) written
// out: the general layout interpreter was the largest part of laying out a
// row (docs/performance.md). TestAppendTime compares the two.
func appendRFC3339Nano(b []byte, t time.Time) []byte {
	if y := t.Year(); y < 1000 || y > 9999 {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	b = append(appendDate(b, t), 'T')
	hour, minute, sec := t.Clock()
	b = append(appendDigits(b, hour, 2), ':')
	b = append(appendDigits(b, minute, 2), ':')
	b = appendDigits(b, sec, 2)
	if ns := t.Nanosecond(); ns != 0 {
		// Nine digits, without the trailing zeros.
		digits := 9
		for ns%10 == 0 {
			ns /= 10
			digits--
		}
		b = appendDigits(append(b, '.'), ns, digits)
	}
	_, offset := t.Zone()
	if offset == 0 {
		return append(b, 'Z')
	}
	// Hours and minutes: like AppendFormat, seconds of an offset are dropped.
	zone := offset / 60
	if zone < 0 {
		b, zone = append(b, '-'), -zone
	} else {
		b = append(b, '+')
	}
	return appendDigits(append(appendDigits(b, zone/60, 2), ':'), zone%60, 2)
}

// appendDate appends t's date as time.DateOnly does, for years 1000-9999
// (the ones validation accepts).
func appendDate(b []byte, t time.Time) []byte {
	y, m, d := t.Date()
	if y < 1000 || y > 9999 {
		return t.AppendFormat(b, time.DateOnly)
	}
	b = append(appendDigits(b, y, 4), '-')
	b = append(appendDigits(b, int(m), 2), '-')
	return appendDigits(b, d, 2)
}

// appendDigits appends the n lowest decimal digits of v (v >= 0).
func appendDigits(b []byte, v, n int) []byte {
	start := len(b)
	b = append(b, make([]byte, n)...) // no allocation: the compiler extends b
	for i := len(b) - 1; i >= start; i-- {
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return b
}

// bytea is the hex form, "\\x…" (the backslash escaped).
func bytea[R any](get func(*R) []byte) encoder[R] {
	return encoder[R]{"bytea", func(b []byte, r *R) []byte {
		b = append(b, `"\\x`...)
		return append(hex.AppendEncode(b, get(r)), '"')
	}}
}

// appendQuoted appends s as a quoted array element, with every double
// quote and backslash escaped by a backslash. A plain loop: on short
// strings strings.IndexAny cost more than the copy (docs/performance.md).
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	from := 0
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			b = append(append(b, s[from:i]...), '\\', c)
			from = i + 1
		}
	}
	return append(append(b, s[from:]...), '"')
}
