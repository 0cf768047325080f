// Package store persists validated batches to PostgreSQL with sqlx and
// lib/pq (DESIGN §6): embedded goose migrations, set-based snapshot upserts,
// history, the delivery log and the quarantine table.
package store

import (
	"encoding/json"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// Delivery describes one authenticated request, for the webhook_deliveries
// table. It holds no patient data.
type Delivery struct {
	EHR        string
	RequestID  string
	ReceivedAt time.Time
	BodySHA256 [32]byte
	ItemCount  int
	// Outcome is a short word: "stored", "rejected", "quarantined", "error".
	Outcome    string
	StatusCode int
}

// Quarantined is an invalid entry kept under onInvalid: Quarantine.
type Quarantined struct {
	Index int
	// Raw is the entry exactly as sent.
	Raw    json.RawMessage
	Errors []payload.FieldError
}

// Batch is everything one request writes, in one all-or-nothing unit.
type Batch struct {
	Delivery    Delivery
	Entries     []payload.Entry
	Quarantined []Quarantined
}

// Result counts what a committed batch did.
type Result struct {
	// Written is the number of entries that changed an appointment.
	Written int
	// Duplicates is the number of entries whose content was already applied.
	Duplicates  int
	Quarantined int
}
