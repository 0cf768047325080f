package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Freeze stops the cluster's postmaster and every backend with SIGSTOP:
// the kernel still accepts connections and takes the bytes sent on open
// ones, but nothing answers, as with a database behind a network that drops
// packets (without sending any off this machine). thaw (SIGCONT) undoes
// it; the test's cleanup thaws too, before the cluster is removed.
func (c *Cluster) Freeze(t testing.TB) (thaw func()) {
	t.Helper()
	pm, err := c.PostmasterPID()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	// The postmaster first: it forks no backend once stopped.
	pids := []int{pm}
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		t.Fatalf("pgtest: SIGSTOP the postmaster: %v", err)
	}
	children, err := childrenOf(pm)
	if err != nil {
		_ = syscall.Kill(pm, syscall.SIGCONT)
		t.Fatalf("pgtest: %v", err)
	}
	for _, pid := range children {
		if syscall.Kill(pid, syscall.SIGSTOP) == nil {
			pids = append(pids, pid)
		}
	}
	var once sync.Once
	thaw = func() {
		once.Do(func() {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		})
	}
	t.Cleanup(thaw)
	return thaw
}

// childrenOf lists the processes whose parent is ppid, from /proc.
func childrenOf(ppid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("while listing processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
