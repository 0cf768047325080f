package payload

import "strings"

// statusWords maps every accepted status word (lower case, words joined
// by -) to its FHIR R4 AppointmentStatus code (architecture.md, "The
// request's path", status reference).
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
	"fulfilled":        "fulfilled",
	"completed":        "fulfilled",
	"complete":         "fulfilled",
	"cancelled":        "cancelled",
	"canceled":         "cancelled",
	"noshow":           "noshow",
	"no-show":          "noshow",
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
	"checked-in", "checkedin",
	"fulfilled", "completed", "complete",
	"cancelled", "canceled",
	"noshow", "no-show",
	"entered-in-error", "deleted",
	"waitlist",
}

var statusMessage = "must be one of " + strings.Join(StatusWords, ", ") + " (case-insensitive; a space or _ may stand for -)"

// StatusCode returns the FHIR code for a sender's status word, matched
// case-insensitively after trimming, with a space or _ between words read
// as - (EHRs show "No Show" and "Checked In" to their users, and some send
// that text); ok is false for an unknown word.
func StatusCode(word string) (code string, ok bool) {
	code, ok = statusWords[strings.Map(joiner, strings.ToLower(strings.TrimSpace(word)))]
	return code, ok
}

func joiner(r rune) rune {
	if r == ' ' || r == '_' {
		return '-'
	}
	return r
}
