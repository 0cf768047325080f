// Package sizing holds the receiver's memory rules: how much of a
// container's memory the Go runtime may use, how many bytes of request
// bodies may be in flight at once, and whether a body limit fits at all.
// The receiver applies them at start and the operator refuses the same
// limits before it makes a Deployment, so both agree. The constants come
// from measurements of a real receiver (docs/decisions.md, "Bounded
// memory").
package sizing

import "fmt"

const (
	// Baseline is the memory of a receiver with no body in flight: the
	// process at rest (33 MiB resident, measured), the connections of a
	// few hundred senders, the delivery-log queue.
	Baseline = 40 << 20
	// PerBodyByte is the memory one byte of a request body costs while
	// the request is in flight: its decoded entries, the rows and the
	// statement's arguments. Measured at most 8.8 (batches of the smallest
	// valid entries), 6 for typical entries.
	PerBodyByte = 10
	// DefaultMemoryLimit is the operator's default memory limit of a
	// receiver container.
	DefaultMemoryLimit = 256 << 20
	// DefaultInflight is the in-flight budget when the memory limit is
	// unknown: InflightBudget(DefaultMemoryLimit).
	DefaultInflight = (DefaultMemoryLimit*9/10 - Baseline) / PerBodyByte
)

// GoMemoryLimit is the Go runtime's soft memory limit for a container
// limited to memoryLimit bytes: 90%, leaving the rest for what the runtime
// does not count (the binary's pages, thread stacks of the OS). 0 when the
// limit is unknown (memoryLimit <= 0).
func GoMemoryLimit(memoryLimit int64) int64 {
	if memoryLimit <= 0 {
		return 0
	}
	return memoryLimit/10*9 + memoryLimit%10*9/10 // 9/10, without overflow
}

// InflightBudget is how many bytes of request bodies a receiver in a
// container limited to memoryLimit bytes may hold at once: what the Go
// memory limit leaves after the baseline, at PerBodyByte a byte. It is
// DefaultInflight when the limit is unknown (memoryLimit <= 0) and 0 when
// the limit is below the baseline.
func InflightBudget(memoryLimit int64) int64 {
	if memoryLimit <= 0 {
		return DefaultInflight
	}
	return max(GoMemoryLimit(memoryLimit)-Baseline, 0) / PerBodyByte
}

// MinMemoryLimit is the smallest container memory limit whose in-flight
// budget holds one body of maxBodyBytes.
func MinMemoryLimit(maxBodyBytes int64) int64 {
	need := Baseline + PerBodyByte*max(maxBodyBytes, 0)
	// The least limit whose nine tenths (rounded down) cover need.
	return (need*10 + 8) / 9
}

// CheckLimits reports an error when a container limited to memoryLimit
// bytes cannot hold even one request body of maxBodyBytes in flight: such a
// receiver would answer every body near the limit 503 for ever. Nothing is
// checked when the limit is unknown (memoryLimit <= 0).
func CheckLimits(memoryLimit, maxBodyBytes int64) error {
	if memoryLimit <= 0 || InflightBudget(memoryLimit) >= maxBodyBytes {
		return nil
	}
	return fmt.Errorf("a memory limit of %s cannot hold one request body of maxBodyBytes %d in flight: "+
		"a receiver needs %s plus %d bytes per body byte, so at least %s; raise the memory limit or lower maxBodyBytes",
		quantity(memoryLimit), maxBodyBytes, mibUp(Baseline), PerBodyByte, mibUp(MinMemoryLimit(maxBodyBytes)))
}

// quantity writes n bytes as Kubernetes would: in Mi when whole.
func quantity(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%dMi", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// mibUp writes n bytes in Mi, rounded up.
func mibUp(n int64) string {
	return fmt.Sprintf("%dMi", (n+(1<<20)-1)>>20)
}
