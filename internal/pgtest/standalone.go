package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// StartCluster starts a throwaway cluster outside of tests (hack/devrun,
// `make run`). The caller must call Destroy.
func StartCluster() (*Cluster, error) { return startCluster(nil) }

// Destroy stops the cluster and removes its directory.
func (c *Cluster) Destroy() { c.destroy() }

// PostmasterPID is the pid of the cluster's postmaster (the first line of
// postmaster.pid), whose children are the backends: the bench counts their
// CPU time.
func (c *Cluster) PostmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dataDir(), "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("while reading postmaster.pid: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}
