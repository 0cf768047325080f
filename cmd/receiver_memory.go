package cmd

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/sizing"
)

// memorySettings fills cfg's in-flight budget from the flags: the one given,
// or the one receiver/sizing derives from the container's memory limit. It
// refuses a memory limit that cannot hold one body of the largest size.
func memorySettings(f receiverFlags, cfg *receiver.Config) error {
	if f.memoryLimit < 0 {
		return fmt.Errorf("--memory-limit must not be negative, not %d", f.memoryLimit)
	}
	if err := sizing.CheckLimits(f.memoryLimit, cfg.MaxBodyBytes); err != nil {
		return fmt.Errorf("--memory-limit and --max-body-bytes: %w", err)
	}
	cfg.MaxInflightBodyBytes = f.maxInflightBodyBytes
	if cfg.MaxInflightBodyBytes == 0 && f.memoryLimit > 0 {
		cfg.MaxInflightBodyBytes = sizing.InflightBudget(f.memoryLimit)
	}
	return nil
}

// receiverGCPercent is the receiver's GOGC under a Go memory limit, unless
// the environment sets one. Its live heap is a few MiB, so at Go's default
// of 100 it collects after every few MiB allocated, a dozen 100-entry
// requests: 400 spends about a fifth less CPU per appointment for about
// 10 MiB more at peak. Without a memory limit nothing would bound a heap
// five times the live one, so the default stays (docs/decisions.md, "The
// receiver runs at GOGC 400 under a Go memory limit").
const receiverGCPercent = 400

// setGoMemoryLimit gives the Go runtime its share of the container's memory
// limit, unless GOMEMLIMIT says otherwise, and then, under a memory limit,
// receiverGCPercent, unless GOGC says otherwise (the runtime read both at
// start), and logs the limits in force.
func setGoMemoryLimit(f receiverFlags, cfg receiver.Config, log *slog.Logger) {
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set && f.memoryLimit > 0 {
		debug.SetMemoryLimit(sizing.GoMemoryLimit(f.memoryLimit))
	}
	goLimit := debug.SetMemoryLimit(-1) // reads it
	if _, set := os.LookupEnv("GOGC"); !set && goLimit != maxInt64 {
		debug.SetGCPercent(receiverGCPercent)
	}
	gcPercent := debug.SetGCPercent(-1) // reads it, and turns collection off…
	debug.SetGCPercent(gcPercent)       // …until this puts it back
	attrs := []any{"memory_limit", f.memoryLimit, "max_inflight_body_bytes", cfg.InflightLimit()}
	if goLimit != maxInt64 {
		attrs = append(attrs, "go_memory_limit", goLimit)
	}
	log.Info("Memory limits", append(attrs, "gc_percent", gcPercent)...)
}

const maxInt64 = 1<<63 - 1
