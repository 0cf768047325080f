package store

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// hashScheme prefixes the hashed bytes, so a change of what is hashed is a
// deliberate, visible step (it makes one redelivery of each appointment
// apply once more, harmlessly). v1 hashed the entry's JSON encoding; v2
// frames the fields directly: 0.3 µs per entry instead of 2.8 µs, no
// allocation (measured with go test -bench, docs/performance.md).
const hashScheme = "ehr-operator/entry/v2\n"

// ContentHash identifies what an entry says: the SHA-256 of every field in
// a fixed order, each framed (absent, or present with its length), times as
// instants (the same instant read in any zone hashes alike). Two entries
// with equal hashes store identical rows. TestContentHashCoversEveryField
// fails if a field of payload.Entry is left out.
func ContentHash(e payload.Entry) [32]byte {
	a, p, r := &e.Appointment, &e.Patient, &e.Practitioner
	b := make([]byte, 0, 512)
	b = append(b, hashScheme...)
	b = str(b, a.ID)
	b = str(b, a.Status)
	b = str(b, a.StatusRaw)
	b = instant(b, a.Start)
	b = instant(b, a.StartDate)
	b = instant(b, a.Created)
	b = str(b, a.Type)
	if a.DurationMinutes == nil {
		b = append(b, 0)
	} else {
		b = binary.AppendVarint(append(b, 1), int64(*a.DurationMinutes))
	}
	b = optStr(b, a.Reason)
	b = optStr(b, a.Notes)
	b = str(b, p.ID)
	b = str(b, p.FirstName)
	b = optStr(b, p.MiddleName)
	b = str(b, p.LastName)
	b = instant(b, p.BirthDate)
	b = str(b, p.Gender)
	b = optStr(b, p.Phone)
	b = optStr(b, p.Email)
	b = str(b, r.ID)
	b = str(b, r.FirstName)
	b = str(b, r.LastName)
	b = optStr(b, e.LocationName)
	b = optStr(b, e.EncounterID)
	b = optStr(b, e.EncounterReason)
	b = optStr(b, e.DepartmentID)
	return sha256.Sum256(b)
}

// str frames s by its length, so ("ab", "c") and ("a", "bc") differ.
func str(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// optStr tells an absent value from an empty one.
func optStr(b []byte, s *string) []byte {
	if s == nil {
		return append(b, 0)
	}
	return str(append(b, 1), *s)
}

// instant is t's place on the time line, whatever its zone: seconds and
// nanoseconds, so every year validation accepts fits.
func instant(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}
