package store

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const ehr = "nexus"

var newYork = mustZone("America/New_York")

func mustZone(name string) *time.Location {
	l, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return l
}

func ptr[T any](v T) *T { return &v }

// newStore opens a Store on a fresh migrated database, and a plain sqlx
// handle to inspect it.
func newStore(t testing.TB) (*Store, *sqlx.DB) {
	t.Helper()
	u := pgtest.NewDatabase(t)
	return openStore(t, u)
}

func openStore(t testing.TB, u string) (*Store, *sqlx.DB) {
	t.Helper()
	s, err := Open(context.Background(), withApplicationName(t, u, storeSessions)) // see deadlocks
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	db, err := sqlx.Open("postgres", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return s, db
}

// specEntry is the spec's full request example, as payload decodes it for
// a tenant in America/New_York.
func specEntry() payload.Entry {
	return payload.Entry{
		Appointment: payload.Appointment{
			ID:              "apt-12345",
			Status:          "booked",
			StatusRaw:       "booked",
			Start:           time.Date(2026, 3, 10, 14, 30, 0, 0, newYork),
			StartDate:       time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC),
			Created:         time.Date(2026, 3, 1, 9, 0, 0, 0, newYork),
			Type:            "Follow-up",
			DurationMinutes: ptr(30),
			Reason:          ptr("Post-surgery check"),
			Notes:           nil, // "" in the example: payload normalises empty optionals to nil
		},
		Patient: payload.Patient{
			ID:         "pat-67890",
			FirstName:  "Jane",
			MiddleName: ptr("Marie"),
			LastName:   "Doe",
			BirthDate:  time.Date(1990, 5, 15, 0, 0, 0, 0, time.UTC),
			Gender:     "Female",
			Phone:      ptr("555-123-4567"),
			Email:      ptr("jane.doe@example.com"),
		},
		Practitioner:    payload.Practitioner{ID: "prov-111", FirstName: "John", LastName: "Smith"},
		LocationName:    ptr("Main Clinic"),
		EncounterID:     ptr("enc-999"),
		EncounterReason: ptr("Post-surgery follow-up"),
		DepartmentID:    ptr("dept-01"),
	}
}

// minimalEntry has every optional field absent.
func minimalEntry(id string) payload.Entry {
	return payload.Entry{
		Appointment: payload.Appointment{
			ID: id, Status: "booked", StatusRaw: "Scheduled",
			Start:     time.Date(2026, 4, 2, 8, 15, 0, 0, newYork),
			StartDate: time.Date(2026, 4, 2, 0, 0, 0, 0, time.UTC),
			Created:   time.Date(2026, 3, 20, 17, 5, 0, 0, newYork),
			Type:      "New Patient",
		},
		Patient: payload.Patient{
			ID: "pat-" + id, FirstName: "Ann", LastName: "Lee",
			BirthDate: time.Date(1971, 12, 31, 0, 0, 0, 0, time.UTC), Gender: "Other",
		},
		Practitioner: payload.Practitioner{ID: "prov-1", FirstName: "Ada", LastName: "Ng"},
	}
}

var deliverySeq atomic.Int64

func batch(entries ...payload.Entry) Batch {
	n := deliverySeq.Add(1)
	return Batch{
		Delivery: Delivery{
			EHR:        ehr,
			RequestID:  fmt.Sprintf("req-%d", n),
			ReceivedAt: time.Now(),
			BodySHA256: sha256.Sum256(fmt.Appendf(nil, "body %d", n)),
			ItemCount:  len(entries),
			Outcome:    "stored",
			StatusCode: 200,
		},
		Entries: entries,
	}
}

func mustWrite(t testing.TB, s *Store, b Batch) Result {
	t.Helper()
	res, err := s.Write(context.Background(), b)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return res
}

// appointmentRow is a row of appointments as stored.
type appointmentRow struct {
	EHR             string    `db:"ehr"`
	ExternalID      string    `db:"external_id"`
	PatientID       string    `db:"patient_external_id"`
	PractitionerID  string    `db:"practitioner_external_id"`
	Status          string    `db:"status"`
	StatusRaw       string    `db:"status_raw"`
	StartTime       time.Time `db:"start_time"`
	StartDate       string    `db:"start_date"`
	CreatedTime     time.Time `db:"created_time"`
	Type            string    `db:"type"`
	DurationMinutes *int      `db:"duration_minutes"`
	Reason          *string   `db:"reason"`
	Notes           *string   `db:"notes"`
	LocationName    *string   `db:"location_name"`
	EncounterID     *string   `db:"encounter_id"`
	EncounterReason *string   `db:"encounter_reason"`
	DepartmentID    *string   `db:"department_id"`
	ContentHash     []byte    `db:"content_hash"`
}

const appointmentCols = `ehr, external_id, patient_external_id, practitioner_external_id, status, status_raw,
	start_time, to_char(start_date, 'YYYY-MM-DD') AS start_date, created_time, type, duration_minutes,
	reason, notes, location_name, encounter_id, encounter_reason, department_id, content_hash`

func getAppointment(t testing.TB, db *sqlx.DB, id string) appointmentRow {
	t.Helper()
	var r appointmentRow
	if err := db.Get(&r, `SELECT `+appointmentCols+` FROM appointments WHERE ehr = $1 AND external_id = $2`, ehr, id); err != nil {
		t.Fatalf("reading appointment %s: %v", id, err)
	}
	r.StartTime, r.CreatedTime = r.StartTime.UTC(), r.CreatedTime.UTC()
	return r
}

type patientRow struct {
	EHR        string  `db:"ehr"`
	ExternalID string  `db:"external_id"`
	FirstName  string  `db:"first_name"`
	MiddleName *string `db:"middle_name"`
	LastName   string  `db:"last_name"`
	BirthDate  string  `db:"birth_date"`
	Gender     string  `db:"gender"`
	Phone      *string `db:"phone"`
	Email      *string `db:"email"`
}

func getPatient(t testing.TB, db *sqlx.DB, id string) patientRow {
	t.Helper()
	var r patientRow
	if err := db.Get(&r, `SELECT ehr, external_id, first_name, middle_name, last_name,
		to_char(birth_date, 'YYYY-MM-DD') AS birth_date, gender, phone, email
		FROM patients WHERE ehr = $1 AND external_id = $2`, ehr, id); err != nil {
		t.Fatalf("reading patient %s: %v", id, err)
	}
	return r
}

type practitionerRow struct {
	EHR        string `db:"ehr"`
	ExternalID string `db:"external_id"`
	FirstName  string `db:"first_name"`
	LastName   string `db:"last_name"`
}

func getPractitioner(t testing.TB, db *sqlx.DB, id string) practitionerRow {
	t.Helper()
	var r practitionerRow
	if err := db.Get(&r, `SELECT ehr, external_id, first_name, last_name FROM practitioners WHERE ehr = $1 AND external_id = $2`, ehr, id); err != nil {
		t.Fatalf("reading practitioner %s: %v", id, err)
	}
	return r
}

type historyRow struct {
	Status      string    `db:"status"`
	StartTime   time.Time `db:"start_time"`
	ContentHash []byte    `db:"content_hash"`
	RequestID   string    `db:"request_id"`
}

func getHistory(t testing.TB, db *sqlx.DB, id string) []historyRow {
	t.Helper()
	var rows []historyRow
	if err := db.Select(&rows, `SELECT h.status, h.start_time, h.content_hash, d.request_id
		FROM appointment_history h JOIN webhook_deliveries d ON d.id = h.delivery_id
		WHERE h.ehr = $1 AND h.appointment_external_id = $2 ORDER BY h.id`, ehr, id); err != nil {
		t.Fatalf("reading history of %s: %v", id, err)
	}
	for i := range rows {
		rows[i].StartTime = rows[i].StartTime.UTC()
	}
	return rows
}

func hashOf(t testing.TB, e payload.Entry) []byte {
	t.Helper()
	h := ContentHash(e)
	return h[:]
}

func count(t testing.TB, db *sqlx.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.Get(&n, query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// queued is b as the batcher's queue holds it, for tests that hand groups
// to commit or work themselves.
func queued(t testing.TB, b Batch) *request {
	t.Helper()
	p, err := prepare(b)
	if err != nil {
		t.Fatal(err)
	}
	return &request{ctx: context.Background(), p: p, done: make(chan outcome, 1)}
}

// transactions is how many transactions wrote delivery rows: a write
// statement is one transaction and writes a delivery row per request, so
// in a database only Write wrote to, it is the number of statements
// committed (xmin is the inserting transaction's id).
func transactions(t testing.TB, db *sqlx.DB) int {
	t.Helper()
	return count(t, db, `SELECT count(DISTINCT xmin::text) FROM webhook_deliveries`)
}

// withApplicationName is database URL u with its application_name set.
func withApplicationName(t testing.TB, u, name string) string {
	t.Helper()
	return withParam(t, u, "application_name", name)
}

// withParam returns database URL u with run-time parameter key set.
func withParam(t testing.TB, u, key, value string) string {
	t.Helper()
	su, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := su.Query()
	q.Set(key, value)
	su.RawQuery = q.Encode()
	return su.String()
}

// storeSessions is the application_name of a test store's sessions.
const storeSessions = "store-under-test"

// deadlocks closes s and returns how many deadlocks PostgreSQL detected in
// its database. A session reports its statistics at the latest when it
// ends, before it leaves pg_stat_activity, so this waits for the store's
// sessions to leave. Every deadlock is a statement the store runs again
// (serialization failures, its other retried error, cannot happen at READ
// COMMITTED).
func deadlocks(t testing.TB, s *Store, db *sqlx.DB) int {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); count(t, db, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, storeSessions) > 0; {
		if time.Now().After(deadline) {
			t.Fatal("the store's sessions did not end after Close")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return count(t, db, `SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()`)
}

// byPractitioner returns a maker of minimal entries seen by practitioner.
func byPractitioner(practitioner string) func(id string) payload.Entry {
	return func(id string) payload.Entry {
		e := minimalEntry(id)
		e.Practitioner.ID = practitioner
		return e
	}
}

// practitionerStored stores an appointment ("first") seen by practitioner,
// so that its row exists to be held, and returns byPractitioner's maker.
func practitionerStored(t testing.TB, s *Store, practitioner string) func(id string) payload.Entry {
	t.Helper()
	entry := byPractitioner(practitioner)
	mustWrite(t, s, batch(entry("first")))
	return entry
}

// newSessions makes the store's next writes open new sessions, which read
// the database's defaults as they are now (pgtest.AlterDatabase).
func newSessions(s *Store) {
	s.db.SetMaxIdleConns(0)
	s.db.SetMaxIdleConns(maxConns)
}
