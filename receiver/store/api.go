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
	// Duplicates is the number of entries not applied: their content was
	// already applied to the appointment at some time (a redelivery or a
	// replay of an older version), or a later entry of the same batch names
	// the same appointment. Written + Duplicates == len(Batch.Entries).
	Duplicates  int
	Quarantined int
}

// The Store's API, used by the receiver (implemented in this package):
//
//	Open(ctx context.Context, databaseURL string) (*Store, error)
//	    sets up the pool (sqlx + lib/pq, sized for the batcher) and starts the
//	    batcher; does not contact the database (Ready tells when it answers)
//	    and does not migrate. A URL without connect_timeout gets 10s.
//	(*Store).Migrate(ctx context.Context) error
//	    applies the embedded goose migrations under a Postgres advisory lock.
//	(*Store).Write(ctx context.Context, b Batch) (Result, error)
//	    stores b all-or-nothing and returns only after COMMIT. Concurrent calls
//	    share one statement (one transaction) through the batcher; a request
//	    that makes it fail is retried alone, so it fails alone.
//	    The Delivery row (outcome/status given by the caller) is written in
//	    the same transaction and history rows refer to it.
//	(*Store).RecordDelivery(ctx context.Context, d Delivery) error
//	    logs an authenticated request that was answered with an error.
//	(*Store).Ready(ctx context.Context) error
//	    nil when the database answers and every migration is applied.
//	(*Store).Close() error
//	    stops the batcher after in-flight writes finish, then closes the pool.
//	IsUnavailable(err error) bool
//	    true when err means the database could not be reached or is shutting
//	    down (answer 503 + Retry-After); false for anything unexpected (500).
