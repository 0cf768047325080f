package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPU accounting: where each side's processor time goes, so that a ratio
// below target can be explained by measurement (docs/performance.md). Both
// sides share the machine's cores; the figures are CPU milliseconds per 100
// appointments written inside the measured windows.

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTick = 100

// CPU is one side's CPU milliseconds per 100 appointments.
type CPU struct {
	// Postgres is the cluster's processes (postmaster and backends).
	Postgres float64 `json:"postgres_ms_per_100"`
	// Receiver is the receiver process (0 for the limit).
	Receiver float64 `json:"receiver_ms_per_100"`
	// Bench is this process: the senders for the receiver side, the Go
	// client (building arrays) for the limit.
	Bench float64 `json:"bench_ms_per_100"`
}

// cpuMeter samples the CPU time of PostgreSQL, of the receiver (pid 0:
// none) and of this process at a window's begin and end.
type cpuMeter struct {
	postmaster int
	receiver   int
	ticks      [3]int64 // postgres, receiver, bench over the windows so far
}

// watch samples at begin and at end, in the background; wait returns when
// the end sample is taken.
func (m *cpuMeter) watch(begin, end time.Time) (wait func()) {
	if m == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(time.Until(begin))
		a, pgA := m.sample()
		time.Sleep(time.Until(end))
		b, pgB := m.sample()
		for i := range m.ticks {
			m.ticks[i] += b[i] - a[i]
		}
		// Per backend: one that exits inside the window (the other
		// side's connections closing) must not take its whole lifetime's
		// time off the sum; one that starts inside it counts from zero.
		for pid, t := range pgB {
			m.ticks[0] += t - pgA[pid]
		}
	}()
	return func() { <-done }
}

// sample returns the receiver's and this process's ticks (index 1, 2) and
// the PostgreSQL processes' ticks by pid.
func (m *cpuMeter) sample() ([3]int64, map[int]int64) {
	pg := map[int]int64{}
	// The postmaster's children are found by their parent pid.
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, t, ok := procTimes(pid)
		if ok && (pid == m.postmaster || ppid == m.postmaster) {
			pg[pid] = t
		}
	}
	var rcv int64
	if m.receiver != 0 {
		_, rcv, _ = procTimes(m.receiver)
	}
	_, self, _ := procTimes(os.Getpid())
	return [3]int64{0, rcv, self}, pg
}

// per100 turns the ticks counted into milliseconds per 100 appointments.
func (m *cpuMeter) per100(appointments float64) CPU {
	if appointments == 0 {
		return CPU{}
	}
	f := func(t int64) float64 { return float64(t) * 1000 / clockTick / appointments * 100 }
	return CPU{Postgres: f(m.ticks[0]), Receiver: f(m.ticks[1]), Bench: f(m.ticks[2])}
}

// procTimes reads a process's parent pid and user+system CPU ticks from
// /proc/<pid>/stat; ok is false if it has gone.
func procTimes(pid int) (ppid int, ticks int64, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, false
	}
	// The command name, in parentheses, may hold spaces: fields start after
	// its closing parenthesis with field 3 (state).
	_, rest, found := strings.Cut(string(b), ") ")
	if !found {
		return 0, 0, false
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return ppid, utime + stime, true
}

func (c CPU) String() string {
	return fmt.Sprintf("%6.1f %6.1f %6.1f", c.Postgres, c.Receiver, c.Bench)
}
