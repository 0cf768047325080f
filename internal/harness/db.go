package harness

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	_ "github.com/lib/pq" // the driver the product uses

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/store/migrations"
)

// NewDatabase creates database name on the server of adminURL, applies the
// receiver's migrations and returns its URL.
func NewDatabase(ctx context.Context, adminURL, name string) (string, error) {
	admin, err := sql.Open("postgres", adminURL)
	if err != nil {
		return "", err
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		return "", fmt.Errorf("while creating database %s: %w", name, err)
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", fmt.Errorf("while parsing the server URL: %w", err)
	}
	u.Path = "/" + name
	db, err := sql.Open("postgres", u.String())
	if err != nil {
		return "", err
	}
	defer db.Close()
	if err := migrations.Up(ctx, db, nil); err != nil {
		return "", fmt.Errorf("while migrating database %s: %w", name, err)
	}
	return u.String(), nil
}

// Percentile is the p-th percentile (0..100) of d, nearest rank; d is
// sorted in place. Zero when d is empty.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	if !slices.IsSorted(d) {
		slices.Sort(d)
	}
	i := int(float64(len(d))*p/100+0.5) - 1
	return d[min(max(i, 0), len(d)-1)]
}

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Start is how the bench and load programs begin: it checks that binary
// exists, starts a throwaway PostgreSQL and returns a context that Ctrl-C
// or SIGTERM cancels. done stops both.
func Start(binary string) (ctx context.Context, cluster *pgtest.Cluster, done func(), err error) {
	return StartMode(binary, false)
}

// StartMode is Start with a durable PostgreSQL (pgtest.StartDurableCluster)
// when durable is set.
func StartMode(binary string, durable bool) (ctx context.Context, cluster *pgtest.Cluster, done func(), err error) {
	if _, err := os.Stat(binary); err != nil {
		return nil, nil, nil, fmt.Errorf("no receiver binary (build it with `make build`): %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	start := pgtest.StartCluster
	if durable {
		start = pgtest.StartDurableCluster
	}
	fmt.Println("Starting a throwaway PostgreSQL…")
	cluster, err = start()
	if err != nil {
		stop()
		return nil, nil, nil, fmt.Errorf("while starting PostgreSQL: %w", err)
	}
	return ctx, cluster, func() { cluster.Destroy(); stop() }, nil
}
