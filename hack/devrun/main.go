// Command devrun is `make run`: a receiver for EHR nexus on a throwaway
// PostgreSQL, with development credentials, the spec's full example in a
// file, and ready commands to send it and to look at the rows. Ctrl-C
// stops everything and removes the database.
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver"
	"github.com/insighthealth/ehr-operator/receiver/auth"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// example is the spec's "Full request example", byte for byte.
//
//go:embed example.json
var example []byte

const (
	ehr    = "nexus"
	apiKey = "dev-api-key"
	secret = "dev-webhook-secret"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "webhook address")
	metricsListen := flag.String("metrics-listen", "127.0.0.1:9090", "metrics and probes address")
	zone := flag.String("time-zone", "America/New_York", "the EHR's time zone")
	flag.Parse()
	if err := run(*listen, *metricsListen, *zone); err != nil {
		fmt.Fprintln(os.Stderr, "devrun:", err)
		os.Exit(1)
	}
}

func run(listen, metricsListen, zone string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Fprintln(os.Stderr, "Starting a throwaway PostgreSQL…")
	cluster, err := pgtest.StartCluster()
	if err != nil {
		return fmt.Errorf("while starting PostgreSQL: %w", err)
	}
	defer cluster.Destroy()

	dir, err := os.MkdirTemp("", "ehr-devrun-")
	if err != nil {
		return fmt.Errorf("while creating the work directory: %w", err)
	}
	defer os.RemoveAll(dir)
	for name, content := range map[string][]byte{
		"api-key": []byte(apiKey + "\n"), "webhook-secret": []byte(secret + "\n"), "example.json": example,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o600); err != nil {
			return fmt.Errorf("while writing %s: %w", name, err)
		}
	}

	loc, err := time.LoadLocation(zone)
	if err != nil {
		return fmt.Errorf("while loading the time zone: %w", err)
	}
	st, err := store.Open(ctx, cluster.URL())
	if err != nil {
		return fmt.Errorf("while opening the store: %w", err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		return fmt.Errorf("while migrating: %w", err)
	}
	srv, err := receiver.New(receiver.Config{
		EHR: ehr, Location: loc, APIKey: apiKey, Secret: []byte(secret),
		MaxBodyBytes: 4194304, MaxBatchSize: 1000, RequestsPerSecond: 50, Burst: 100,
		OnInvalid: receiver.Reject, Listen: listen, MetricsListen: metricsListen,
	}, st, slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	examplePath := filepath.Join(dir, "example.json")
	psql := "psql"
	if p, err := exec.LookPath("psql"); err == nil {
		psql = p
	} else if matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql"); len(matches) > 0 {
		psql = matches[len(matches)-1]
	}
	endpoint := "http://" + listen + "/v2/webhooks/" + ehr + "/sync-appointments"
	fmt.Printf(`
Receiver for EHR %q (time zone %s) on http://%s, probes and metrics on http://%s

Send the spec's full example (signed with the development secret):

  go run . send --url http://%s --ehr %s --api-key-file %s --secret-file %s %s

or with curl:

  curl -sS -X POST '%s' -H 'Content-Type: application/json' -H 'X-API-Key: %s' \
    -H 'X-Webhook-Signature: %s' --data-binary @%s

Look at the rows:

  %s '%s' -c 'SELECT external_id, status, start_time, patient_external_id FROM appointments'

Ctrl-C stops the receiver and removes the database.
`, ehr, zone, listen, metricsListen,
		listen, ehr, filepath.Join(dir, "api-key"), filepath.Join(dir, "webhook-secret"), examplePath,
		endpoint, apiKey, auth.Sign([]byte(secret), example), examplePath,
		psql, cluster.URL())
	return <-done
}
