// Package store persists validated batches to PostgreSQL with sqlx and
// lib/pq (architecture.md, "Schema and write path"): embedded goose migrations, set-based snapshot upserts,
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
	Outcome    Outcome
	StatusCode int
	// FieldErrorCount is how many errors the answer to a refused request
	// listed (a 400 or 422 with an errors list: outcome rejected or
	// invalid_body), and FieldErrors the first of them, at most
	// MaxFieldErrors. Their messages name fields and rules, never a value
	// (payload.FieldError). Only RecordDeliveries writes them; Write
	// refuses them (a stored delivery has none). Both zero: the answer
	// listed none (the columns are NULL). FieldErrors may hold fewer than
	// both bounds allow: the receiver leaves them out when its delivery
	// log's queue holds too many already.
	FieldErrorCount int
	FieldErrors     []payload.FieldError
}

// MaxFieldErrors is how many of a refused request's field errors its row
// of webhook_deliveries keeps: the first, as the receiver's log line.
const MaxFieldErrors = 10

// Outcome is what a request to the webhook came to, in one word: the
// receiver's log line ("outcome") and webhook_deliveries.outcome carry it.
// The words are stored and grepped for: add new ones, never rename one.
// docs/operations.md lists the same words.
type Outcome string

// The outcomes, in the order of the checks (docs/architecture.md, "The
// request's path"), with the status each is answered with. The first four
// come before the API key matches: the caller may be anyone, so they are only
// logged, as are rate_limited and overloaded (a row each would turn a flood
// into database writes); every other one is also a row of
// webhook_deliveries (Recorded).
const (
	// OutcomeNotFound: the path is not this EHR's sync route. 404.
	OutcomeNotFound Outcome = "not_found"
	// OutcomeMethodNotAllowed: the method is not POST. 405.
	OutcomeMethodNotAllowed Outcome = "method_not_allowed"
	// OutcomeUnsupportedMediaType: the Content-Type is not application/json. 415.
	OutcomeUnsupportedMediaType Outcome = "unsupported_media_type"
	// OutcomeUnauthorized: X-API-Key is missing or wrong. 401.
	OutcomeUnauthorized Outcome = "unauthorized"

	// OutcomeRateLimited: over the EHR's request rate. 429 with Retry-After.
	OutcomeRateLimited Outcome = "rate_limited"
	// OutcomeTooLarge: the body is over the byte limit. 413.
	OutcomeTooLarge Outcome = "too_large"
	// OutcomeOverloaded: the receiver already holds as many bytes of
	// bodies as its memory allows; the body was not read. 503 with
	// Retry-After.
	OutcomeOverloaded Outcome = "overloaded"
	// OutcomeUnreadable: reading the body failed (the sender hung up). 400.
	OutcomeUnreadable Outcome = "unreadable"
	// OutcomeBadSignature: X-Webhook-Signature is malformed or does not
	// match the body. 401.
	OutcomeBadSignature Outcome = "bad_signature"
	// OutcomeInvalidBody: the body is not a batch: malformed JSON (400), too
	// many entries (413) or neither accepted form (422).
	OutcomeInvalidBody Outcome = "invalid_body"
	// OutcomeRejected: some entries are invalid under onInvalid: Reject;
	// nothing was stored. 422.
	OutcomeRejected Outcome = "rejected"
	// OutcomeStored: every entry was valid and the batch committed. 200.
	OutcomeStored Outcome = "stored"
	// OutcomeQuarantined: under onInvalid: Quarantine, the valid entries
	// committed and the invalid ones are in quarantined_entries. 200.
	OutcomeQuarantined Outcome = "quarantined"
	// OutcomeUnavailable: the database could not be reached (IsUnavailable);
	// nothing was stored. 503 with Retry-After.
	OutcomeUnavailable Outcome = "unavailable"
	// OutcomeError: the database failed the batch for any other reason;
	// nothing was stored. 500.
	OutcomeError Outcome = "error"

	// OutcomeReplayed: not a request but `ehr-operator deliveries replay`
	// storing quarantined entries of an earlier delivery (whose request id
	// it carries) that are valid now. Status 200.
	OutcomeReplayed Outcome = "replayed"
)

// Recorded are the outcomes webhook_deliveries holds.
var Recorded = []Outcome{OutcomeTooLarge, OutcomeUnreadable, OutcomeBadSignature, OutcomeInvalidBody,
	OutcomeRejected, OutcomeStored, OutcomeQuarantined, OutcomeUnavailable, OutcomeError, OutcomeReplayed}

// Quarantined is an invalid entry kept under onInvalid: Quarantine.
type Quarantined struct {
	Index int
	// Raw is the entry exactly as sent.
	Raw    json.RawMessage
	Errors []payload.FieldError
}

// Batch is everything one request writes, in one all-or-nothing unit.
type Batch struct {
	Delivery Delivery
	Entries  []payload.Entry
	// Versions, when not nil, holds one Version per entry, in order. When
	// nil, Write hashes the entries and takes each as first received with
	// the delivery.
	Versions    []Version
	Quarantined []Quarantined
	// Replayed are ids of quarantined_entries rows this batch stores again
	// (a replay): the same statement marks them replayed, so an entry is
	// marked exactly when its content was handled.
	Replayed []int64
	// Release, when not nil, is called once the store holds none of the
	// batch's data: when Write returns, or later for a request its caller
	// gave up on while it waited in the queue. The receiver's in-flight
	// memory budget is given back by it, so bodies held by the queue stay
	// counted.
	Release func()
}

// Version is an entry's content as the receiver knows it.
type Version struct {
	// Hash is ContentHash of the entry.
	Hash [32]byte
	// FirstReceived is when this receiver first received this content:
	// Delivery.ReceivedAt, or earlier for a retry it remembers. A retry
	// (earlier than Delivery.ReceivedAt) first received before the
	// appointment's stored version is superseded: written to the history
	// as such, not applied (docs/architecture.md, "Schema and write path").
	FirstReceived time.Time
}

// Result counts what a committed batch did.
type Result struct {
	// Written is the number of entries that changed an appointment.
	Written int
	// Duplicates is the number of entries not applied: their content was
	// already applied to the appointment at some time (a redelivery or a
	// replay of an older version), or a later entry of the same batch names
	// the same appointment; and of quarantined entries not kept again:
	// their content was already pending in the EHR's quarantine (a retried
	// delivery), or an identical entry of the same batch or group was kept.
	Duplicates int
	// Superseded is the number of retried versions not applied because the
	// appointment holds a version first received after them; each is in the
	// history, marked superseded.
	Superseded int
	// Quarantined is the number of quarantined entries kept: rows added to
	// quarantined_entries. Written + Duplicates + Superseded + Quarantined
	// == len(Batch.Entries) + len(Batch.Quarantined), the batch's items.
	Quarantined int
}

// The Store's API, used by the receiver (implemented in this package):
//
//	Open(ctx context.Context, databaseURL string) (*Store, error)
//	    sets up the pool (sqlx + lib/pq, sized for the batcher) and starts the
//	    batcher; does not contact the database (Ping tells when it answers)
//	    and does not migrate. A URL without connect_timeout gets 10s.
//	(*Store).Migrate(ctx context.Context) error
//	    applies the embedded goose migrations under a Postgres advisory lock.
//	(*Store).Write(ctx context.Context, b Batch) (Result, error)
//	    stores b all-or-nothing and returns only after COMMIT. Concurrent calls
//	    share one statement (one transaction) through the batcher; a request
//	    that makes it fail is retried alone, so it fails alone.
//	    The Delivery row (outcome/status given by the caller) is written in
//	    the same transaction and history rows refer to it.
//	(*Store).RecordDeliveries(ctx context.Context, ds []Delivery) error
//	    logs authenticated requests that were answered with an error, in one
//	    statement.
//	(*Store).Ping(ctx context.Context) error
//	    nil when the database answers (the receiver's database monitor).
//	(*Store).Ready(ctx context.Context) error
//	    nil when the database answers and every migration is applied.
//	(*Store).Close() error
//	    stops the batcher after in-flight writes finish, then closes the pool.
//	IsUnavailable(err error) bool
//	    true when err means the database could not be reached or is shutting
//	    down (answer 503 + Retry-After); false for anything unexpected (500).
