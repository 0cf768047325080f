package pgtest

// StartCluster starts a throwaway cluster outside of tests (hack/devrun,
// `make run`). The caller must call Destroy.
func StartCluster() (*Cluster, error) { return startCluster() }

// Destroy stops the cluster and removes its directory.
func (c *Cluster) Destroy() { c.destroy() }
