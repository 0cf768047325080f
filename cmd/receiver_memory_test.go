package cmd

import (
	"bytes"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/sizing"
)

// The in-flight budget comes from the memory limit unless it is given.
func TestMemorySettings(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		memoryLimit, inflight int64
		want                  int64
	}{
		{"derived", 128 << 20, 0, sizing.InflightBudget(128 << 20)},
		{"given", 128 << 20, 6 << 20, 6 << 20},
		{"unknown memory", 0, 0, 0}, // the receiver's default
	} {
		cfg := receiver.Config{MaxBodyBytes: 4 << 20}
		if err := memorySettings(receiverFlags{memoryLimit: tc.memoryLimit, maxInflightBodyBytes: tc.inflight}, &cfg); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if cfg.MaxInflightBodyBytes != tc.want {
			t.Errorf("%s: budget %d, want %d", tc.name, cfg.MaxInflightBodyBytes, tc.want)
		}
	}
	cfg := receiver.Config{MaxBodyBytes: 4 << 20}
	if err := memorySettings(receiverFlags{memoryLimit: -1}, &cfg); err == nil || !strings.Contains(err.Error(), "--memory-limit must not be negative") {
		t.Errorf("a negative memory limit: %v", err)
	}
}

// A memory limit too small for one body of the largest size is refused at
// start, with the configuration's other mistakes; MEMORY_LIMIT sets it.
func TestReceiverRefusesMemoryTooSmall(t *testing.T) {
	clearFlagEnv(t, "receiver")
	t.Setenv("MEMORY_LIMIT", "67108864")
	err := runRoot(t, "receiver", "--max-body-bytes", "8388608")
	if err == nil {
		t.Fatal("receiver started without a configuration")
	}
	for _, want := range []string{
		"--memory-limit and --max-body-bytes: a memory limit of 64Mi cannot hold one request body of maxBodyBytes 8388608",
		"at least 134Mi",
		"ehr is required",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%s", want, err)
		}
	}
}

// The Go memory limit follows the container's, unless GOMEMLIMIT was set
// (the runtime read it at start); GOGC is the receiver's own under a
// memory limit, unless set.
func TestSetGoMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	prevGC := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prevGC) })
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	f := receiverFlags{memoryLimit: 128 << 20}

	t.Setenv("GOMEMLIMIT", "1GiB")
	t.Setenv("GOGC", "150")
	debug.SetMemoryLimit(1 << 30)
	debug.SetGCPercent(150)
	setGoMemoryLimit(f, receiver.Config{}, log)
	if got := debug.SetMemoryLimit(-1); got != 1<<30 {
		t.Errorf("with GOMEMLIMIT set: Go memory limit %d, want it left at 1 GiB", got)
	}
	if got := debug.SetGCPercent(150); got != 150 {
		t.Errorf("with GOGC set: GC percent %d, want it left at 150", got)
	}

	os.Unsetenv("GOMEMLIMIT")
	os.Unsetenv("GOGC")
	debug.SetMemoryLimit(math.MaxInt64)
	debug.SetGCPercent(100)
	setGoMemoryLimit(receiverFlags{}, receiver.Config{}, log)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("without a memory limit: GC percent %d, want Go's default 100", got)
	}

	setGoMemoryLimit(f, receiver.Config{MaxBodyBytes: 4 << 20}, log)
	if got := debug.SetMemoryLimit(-1); got != sizing.GoMemoryLimit(128<<20) {
		t.Errorf("Go memory limit %d, want %d", got, sizing.GoMemoryLimit(128<<20))
	}
	if got := debug.SetGCPercent(-1); got != receiverGCPercent {
		t.Errorf("GC percent %d, want %d", got, receiverGCPercent)
	}
	debug.SetGCPercent(receiverGCPercent) // -1 above turned collection off
	if !strings.Contains(buf.String(), `"msg":"Memory limits","memory_limit":134217728,"max_inflight_body_bytes":19964887,"go_memory_limit":120795955,"gc_percent":400`) {
		t.Errorf("log:\n%s", &buf)
	}
}
