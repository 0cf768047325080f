// Package harness is what the contract and fault tests (test/contract,
// test/faults) and the benchmark and load tools (hack/bench, hack/load)
// share: generated appointments, a real receiver process, signed requests,
// fresh databases and a few statistics. It is test support, so it lives
// under internal/; the hack module may import it because its module path
// lies under this one's.
package harness

import (
	"crypto/sha256"
	"strconv"
	"time"
)

// Gen makes synthetic appointments (the spec example's fake person, never
// real data). Entry n of a generator tagged Tag is appointment
// "apt-<Tag>-<n>" of patient "pat-<Tag>-<n>", seen by one of Practitioners
// practitioners. The JSON the receiver gets and the rows the limit writes
// both come from it, so both sides write the same rows.
type Gen struct {
	Tag           string
	Practitioners int
}

// NewGen returns a generator with 500 practitioners: patients are unique
// (every entry is a real write), practitioners recur as in a clinic.
func NewGen(tag string) Gen { return Gen{Tag: tag, Practitioners: 500} }

// AppointmentID is the id of entry n.
func (g Gen) AppointmentID(n int64) string { return "apt-" + g.Tag + "-" + strconv.FormatInt(n, 10) }

func (g Gen) patientID(n int64) string { return "pat-" + g.Tag + "-" + strconv.FormatInt(n, 10) }

func (g Gen) practitionerID(n int64) string {
	return "prov-" + strconv.FormatInt(n%int64(g.Practitioners), 10)
}

// AppendEntry appends entry n as JSON, in the spec example's shape.
func (g Gen) AppendEntry(b []byte, n int64) []byte {
	b = append(b, `{"appointment":{"id":"`...)
	b = append(b, g.AppointmentID(n)...)
	b = append(b, `","status":"booked","start_time":"03/10/2026 14:30","start_date":"03/10/2026","created_time":"03/01/2026 09:00","duration":"30","type":"Follow-up","reason":"Post-surgery check","notes":""},"patient":{"id":"`...)
	b = append(b, g.patientID(n)...)
	b = append(b, `","first_name":"Jane","middle_name":"Marie","last_name":"Doe","birth_date":"05/15/1990","gender":"Female","phone":"555-123-4567","email":"jane.doe@example.com"},"practitioner":{"id":"`...)
	b = append(b, g.practitionerID(n)...)
	b = append(b, `","first_name":"John","last_name":"Smith"},"location":{"name":"Main Clinic"},"encounter":{"id":"enc-`...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, `","reason":"Post-surgery follow-up"},"department_id":"dept-01"}`...)
	return b
}

// Body is a batch of entries first … first+count-1.
func (g Gen) Body(first int64, count int) []byte {
	b := make([]byte, 0, 64+count*720)
	b = append(b, `{"appointments":[`...)
	for i := range count {
		if i > 0 {
			b = append(b, ',')
		}
		b = g.AppendEntry(b, first+int64(i))
	}
	return append(b, "]}"...)
}

// Row is entry n as the limit writes it: already typed, no JSON, no
// validation. Optional fields the entry leaves blank (notes) are absent.
type Row struct {
	ID, PatientID, PractitionerID, Status, StatusRaw string
	Start, StartDate, Created                        time.Time
	Type                                             string
	Duration                                         int
	Reason, LocationName, EncounterID                string
	EncounterReason, DepartmentID                    string
	PatFirst, PatMiddle, PatLast                     string
	PatBirth                                         time.Time
	PatGender, PatPhone, PatEmail                    string
	PraFirst, PraLast                                string
	ContentHash                                      [32]byte
}

var (
	rowStart   = time.Date(2026, 3, 10, 14, 30, 0, 0, time.UTC)
	rowDate    = time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	rowCreated = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	rowBirth   = time.Date(1990, 5, 15, 0, 0, 0, 0, time.UTC)
)

// Row returns entry n's row.
func (g Gen) Row(n int64) Row {
	id := g.AppointmentID(n)
	return Row{
		ID: id, PatientID: g.patientID(n), PractitionerID: g.practitionerID(n),
		Status: "booked", StatusRaw: "booked",
		Start: rowStart, StartDate: rowDate, Created: rowCreated,
		Type: "Follow-up", Duration: 30, Reason: "Post-surgery check",
		LocationName: "Main Clinic", EncounterID: "enc-" + strconv.FormatInt(n, 10),
		EncounterReason: "Post-surgery follow-up", DepartmentID: "dept-01",
		PatFirst: "Jane", PatMiddle: "Marie", PatLast: "Doe", PatBirth: rowBirth, PatGender: "Female",
		PatPhone: "555-123-4567", PatEmail: "jane.doe@example.com",
		PraFirst: "John", PraLast: "Smith",
		// The schema needs a 32-byte content hash; any unique one will do.
		ContentHash: sha256.Sum256([]byte(id)),
	}
}
