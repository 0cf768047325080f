package sizing

import (
	"strings"
	"testing"
)

func TestGoMemoryLimit(t *testing.T) {
	for _, tc := range []struct{ in, want int64 }{
		{0, 0}, {-1, 0}, {128 << 20, 120795955}, {1 << 30, 966367641}, {19, 17},
	} {
		if got := GoMemoryLimit(tc.in); got != tc.want {
			t.Errorf("GoMemoryLimit(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestInflightBudget(t *testing.T) {
	for _, tc := range []struct{ in, want int64 }{
		{0, DefaultInflight},
		{-5, DefaultInflight},
		{DefaultMemoryLimit, DefaultInflight},
		{128 << 20, (120795955 - 40<<20) / 10}, // 7.5 MiB: one 4 MiB body and small ones
		{40 << 20, 0},                          // below the baseline
		{1 << 30, (966367641 - 40<<20) / 10},
	} {
		if got := InflightBudget(tc.in); got != tc.want {
			t.Errorf("InflightBudget(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
	if DefaultInflight < 4<<20 {
		t.Errorf("DefaultInflight %d holds not even one body of the default 4 MiB", DefaultInflight)
	}
	// More memory never means a smaller budget.
	prev := int64(0)
	for m := int64(1 << 20); m <= 4<<30; m += 7 << 20 {
		b := InflightBudget(m)
		if b < prev {
			t.Fatalf("InflightBudget(%d) = %d < %d for less memory", m, b, prev)
		}
		prev = b
	}
}

// MinMemoryLimit is exact: CheckLimits takes it and refuses a byte less.
func TestMinMemoryLimitIsTight(t *testing.T) {
	for _, body := range []int64{1024, 1 << 20, 4 << 20, 4<<20 + 1, 10_000_019, 64 << 20} {
		m := MinMemoryLimit(body)
		if err := CheckLimits(m, body); err != nil {
			t.Errorf("body %d: CheckLimits(MinMemoryLimit = %d) = %v", body, m, err)
		}
		if err := CheckLimits(m-1, body); err == nil {
			t.Errorf("body %d: CheckLimits(%d) accepted a byte less than MinMemoryLimit", body, m-1)
		}
	}
}

func TestCheckLimits(t *testing.T) {
	// The defaults fit, and so does the default body in 128 MiB.
	for _, m := range []int64{DefaultMemoryLimit, 128 << 20, 0} {
		if err := CheckLimits(m, 4<<20); err != nil {
			t.Errorf("CheckLimits(%d, 4 MiB) = %v", m, err)
		}
	}
	err := CheckLimits(DefaultMemoryLimit, 64<<20)
	if err == nil {
		t.Fatal("a 64 MiB body was accepted in 256 MiB")
	}
	for _, want := range []string{"256Mi", "67108864", "40Mi plus 10 bytes per body byte", "at least 756Mi"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	if err := CheckLimits(64<<20, 4<<20); err == nil || !strings.Contains(err.Error(), "at least 89Mi") {
		t.Errorf("4 MiB bodies in 64 MiB: %v, want an error asking for 89Mi", err)
	}
}
