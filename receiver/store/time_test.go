package store

import (
	"math/rand/v2"
	"testing"
	"time"
)

// The row encoders' timestamps and dates are AppendFormat's, byte for
// byte, whatever the zone (offsets with seconds included) and the year.
func TestAppendTime(t *testing.T) {
	var zones []*time.Location
	for _, name := range []string{"UTC", "America/New_York", "Asia/Kolkata", "Australia/Eucla", "Pacific/Chatham", "Europe/Amsterdam", "Africa/Monrovia"} {
		loc, err := time.LoadLocation(name)
		if err != nil {
			t.Fatal(err)
		}
		zones = append(zones, loc)
	}
	zones = append(zones, time.FixedZone("", -(4*3600+56*60+2)), time.FixedZone("", 30), time.FixedZone("", -59))
	times := []time.Time{
		{},
		time.Date(1800, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(999, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(2026, 3, 8, 2, 30, 0, 0, zones[1]),
		time.Date(2026, 11, 1, 1, 30, 0, 120000000, zones[1]),
		time.Date(-1, 6, 1, 0, 0, 0, 0, time.UTC),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		sec := rng.Int64N(time.Date(10100, 1, 1, 0, 0, 0, 0, time.UTC).Unix()-time.Date(900, 1, 1, 0, 0, 0, 0, time.UTC).Unix()) +
			time.Date(900, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
		var ns int64
		switch rng.IntN(4) {
		case 1:
			ns = rng.Int64N(1e9)
		case 2:
			ns = rng.Int64N(1000) * 1e6
		}
		times = append(times, time.Unix(sec, ns))
	}
	for _, tm := range times {
		for _, loc := range zones {
			tl := tm.In(loc)
			if got, want := string(appendRFC3339Nano([]byte("x"), tl)), "x"+tl.Format(time.RFC3339Nano); got != want {
				t.Fatalf("appendRFC3339Nano(%v) = %q, want %q", tl, got, want)
			}
			if got, want := string(appendDate([]byte("x"), tl)), "x"+tl.Format(time.DateOnly); got != want {
				t.Fatalf("appendDate(%v) = %q, want %q", tl, got, want)
			}
		}
	}
}
