package payload

import "strings"

// statusWords maps every accepted status word (lower case) to its FHIR R4
// AppointmentStatus code (architecture.md, "The request's path", status reference).
var statusWords = map[string]string{
	"proposed":         "proposed",
	"pending":          "pending",
	"booked":           "booked",
	"scheduled":        "booked",
	"confirmed":        "booked",
	"rescheduled":      "booked",
	"arrived":          "arrived",
	"checked-in":       "checked-in",
	"checkedin":        "checked-in",
	"checked_in":       "checked-in",
	"fulfilled":        "fulfilled",
	"completed":        "fulfilled",
	"complete":         "fulfilled",
	"cancelled":        "cancelled",
	"canceled":         "cancelled",
	"noshow":           "noshow",
	"no-show":          "noshow",
	"no_show":          "noshow",
	"entered-in-error": "entered-in-error",
	"deleted":          "entered-in-error",
	"waitlist":         "waitlist",
}

// StatusWords lists the accepted status words in reference order, for
// messages and documentation.
var StatusWords = []string{
	"proposed", "pending",
	"booked", "scheduled", "confirmed", "rescheduled",
	"arrived",
	"checked-in", "checkedin", "checked_in",
	"fulfilled", "completed", "complete",
	"cancelled", "canceled",
	"noshow", "no-show", "no_show",
	"entered-in-error", "deleted",
	"waitlist",
}

var statusMessage = "must be one of " + strings.Join(StatusWords, ", ") + " (case-insensitive)"

// StatusCode returns the FHIR code for a sender's status word, matched
// case-insensitively after trimming; ok is false for an unknown word.
func StatusCode(word string) (code string, ok bool) {
	code, ok = statusWords[strings.ToLower(strings.TrimSpace(word))]
	return code, ok
}
