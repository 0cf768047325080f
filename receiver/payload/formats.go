package payload

import "time"

// The formats of dates, times and durations, as pure functions of the
// trimmed string: msg says what is wrong, "" when nothing is.

const (
	msgDate     = "must be a date MM/DD/YYYY"
	msgDateTime = "must be a date and time MM/DD/YYYY HH:MM (24-hour)"
	msgRealDate = "must be a real calendar date"
	msgYear     = "year must be from 1800 to 9999"
	msgDuration = "must be a whole number of minutes from 0 to 1440"
	msgFuture   = "must not be in the future"
	msgUTF8     = "must be valid UTF-8 (no invalid bytes, no unpaired \\u surrogate escapes)"
)

// calendarDate parses MM/DD/YYYY as midnight UTC; msg says what is wrong,
// "" when nothing is.
func calendarDate(s string) (time.Time, string) {
	y, m, d, msg := parseDate(s)
	if msg != "" {
		return time.Time{}, msg
	}
	return time.Date(y, time.Month(m), d, 0, 0, 0, 0, time.UTC), ""
}

// wallTime parses MM/DD/YYYY HH:MM as a wall time in loc. A wall time that
// does not exist in loc (the hour skipped when clocks go forward) is moved
// forward by the gap (02:30 on New York's spring-forward day is 03:30 EDT),
// in every zone: time.Date moves it back in zones west of UTC (01:30 EST),
// and in a zone whose clocks skip midnight (Santiago) onto the day before,
// which start_date would then contradict. An ambiguous one (clocks going
// back) is taken as time.Date takes it.
func wallTime(s string, loc *time.Location) (time.Time, string) {
	if len(s) != 16 || s[10] != ' ' || s[13] != ':' {
		return time.Time{}, msgDateTime
	}
	y, m, d, msg := parseDate(s[:10])
	if msg == msgDate {
		msg = msgDateTime
	}
	hh, okH := digits(s[11:13])
	mm, okM := digits(s[14:16])
	if msg == "" && (!okH || !okM || hh > 23 || mm > 59) {
		msg = msgDateTime
	}
	if msg != "" {
		return time.Time{}, msg
	}
	t := time.Date(y, time.Month(m), d, hh, mm, 0, 0, loc)
	if ty, tm, td := t.Date(); ty == y && int(tm) == m && td == d && t.Hour() == hh && t.Minute() == mm {
		return t, ""
	}
	// In the gap: read it with the offset in force before the clocks went
	// forward (a day earlier; no zone changes twice in a day), which after
	// them shows the wall time plus the gap.
	_, before := t.Add(-24 * time.Hour).Zone()
	return time.Date(y, time.Month(m), d, hh, mm, 0, 0, time.UTC).Add(-time.Duration(before) * time.Second).In(loc), ""
}

// inFuture reports whether the calendar date d (midnight UTC) is after
// today's date in loc.
func inFuture(d time.Time, loc *time.Location, now time.Time) bool {
	today := now.In(loc)
	return d.After(time.Date(today.Year(), today.Month(), today.Day(), 0, 0, 0, 0, time.UTC))
}

// minutes parses a duration given as decimal digits (from a string or a
// JSON number): a whole number of minutes from 0 to MaxDuration.
func minutes(s string) (int, bool) {
	n, ok := digits(s)
	return n, ok && len(s) <= 5 && n <= MaxDuration
}

// parseDate parses exactly MM/DD/YYYY (two-digit month and day) and checks
// the date exists; msg says what is wrong, "" when nothing is.
func parseDate(s string) (y, m, d int, msg string) {
	if len(s) != 10 || s[2] != '/' || s[5] != '/' {
		return 0, 0, 0, msgDate
	}
	m, okM := digits(s[0:2])
	d, okD := digits(s[3:5])
	y, okY := digits(s[6:10])
	switch {
	case !okM || !okD || !okY:
		return 0, 0, 0, msgDate
	case y < MinYear || y > MaxYear:
		return 0, 0, 0, msgYear
	case m < 1 || m > 12 || d < 1 || d > daysIn(time.Month(m), y):
		return 0, 0, 0, msgRealDate
	}
	return y, m, d, ""
}

func digits(s string) (int, bool) {
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, len(s) > 0
}

func daysIn(m time.Month, y int) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// sameDate reports whether date (midnight UTC) is the wall-clock date of t.
func sameDate(date, t time.Time) bool {
	y, m, d := t.Date()
	return date.Year() == y && date.Month() == m && date.Day() == d
}
