// Package payload decodes and validates Sync Appointments request bodies
// (architecture.md, "The request's path"). Everything here is pure: bytes in, entries and field errors
// out, so it is table-tested and fuzzed without a server or a database.
package payload

import "time"

// Entry is one valid item of a batch, normalised for storage. Optional
// fields the sender left out (or sent empty) are nil and stored as NULL.
type Entry struct {
	Appointment  Appointment  `json:"appointment"`
	Patient      Patient      `json:"patient"`
	Practitioner Practitioner `json:"practitioner"`
	// LocationName is location.name.
	LocationName *string `json:"location_name"`
	// EncounterID and EncounterReason are encounter.id and encounter.reason.
	EncounterID     *string `json:"encounter_id"`
	EncounterReason *string `json:"encounter_reason"`
	DepartmentID    *string `json:"department_id"`
}

// Appointment is the appointment object of an entry.
type Appointment struct {
	ID string `json:"id"`
	// Status is the FHIR R4 AppointmentStatus code ("booked", "noshow", …).
	Status string `json:"status"`
	// StatusRaw is the word the sender used, kept as sent.
	StatusRaw string `json:"status_raw"`
	// Start is start_time read in the tenant's time zone.
	Start time.Time `json:"start"`
	// StartDate is start_date as midnight UTC (a calendar date, no zone).
	StartDate time.Time `json:"start_date"`
	// Created is created_time read in the tenant's time zone.
	Created         time.Time `json:"created"`
	Type            string    `json:"type"`
	DurationMinutes *int      `json:"duration_minutes"`
	Reason          *string   `json:"reason"`
	Notes           *string   `json:"notes"`
}

// Patient is the patient object of an entry.
type Patient struct {
	ID         string  `json:"id"`
	FirstName  string  `json:"first_name"`
	MiddleName *string `json:"middle_name"`
	LastName   string  `json:"last_name"`
	// BirthDate is birth_date as midnight UTC (a calendar date, no zone).
	BirthDate time.Time `json:"birth_date"`
	Gender    string    `json:"gender"`
	Phone     *string   `json:"phone"`
	Email     *string   `json:"email"`
}

// Practitioner is the practitioner object of an entry.
type Practitioner struct {
	ID        string `json:"id"`
	FirstName string `json:"first_name"`
	LastName  string `json:"last_name"`
}
