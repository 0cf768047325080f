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
func StartCluster() (*Cluster, error) { return startCluster(nil, false) }

// StartDurableCluster is StartCluster with PostgreSQL's production defaults
// for durability (fsync, full_page_writes and synchronous_commit on), the
// data directory and its WAL on the disk of the temporary directory: the
// bench's durable table.
func StartDurableCluster() (*Cluster, error) { return startCluster(nil, true) }

// DataDir is the cluster's data directory (its WAL is in pg_wal inside it).
func (c *Cluster) DataDir() string { return c.dataDir() }

// BinDir is the directory of the cluster's PostgreSQL binaries.
func (c *Cluster) BinDir() string { return c.bin }

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
