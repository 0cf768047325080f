package store

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// hashScheme prefixes the hashed bytes, so a future change of what is hashed
// is a deliberate, visible step (it makes one redelivery of each appointment
// apply once more, harmlessly).
const hashScheme = "ehr-operator/entry/v1\n"

// ContentHash identifies what an entry says: the SHA-256 of its JSON
// encoding, with every time in UTC so the same instant read in any zone
// hashes alike. Two entries with equal hashes store identical rows.
func ContentHash(e payload.Entry) ([32]byte, error) {
	a, p := &e.Appointment, &e.Patient
	a.Start, a.StartDate, a.Created = a.Start.UTC(), a.StartDate.UTC(), a.Created.UTC()
	p.BirthDate = p.BirthDate.UTC()
	b, err := json.Marshal(e)
	if err != nil {
		// Only a time outside years 0..9999 gets here; validation prevents it.
		return [32]byte{}, fmt.Errorf("while encoding an entry for its content hash: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(hashScheme))
	h.Write(b)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nil
}
