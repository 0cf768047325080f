// Command devrun is `make run`: bin/ehr-receiver, as receiver pods run it, for EHR
// nexus on a throwaway PostgreSQL, with development credentials, the spec's
// full example in a file, and ready commands to send it and to look at the
// rows. Ctrl-C stops the receiver, then removes the database.
//
// It runs the binary that `make build` made rather than the receiver's
// packages, so the printed `send` command needs no compilation either.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/auth"
)

// example is the spec's "Full request example", byte for byte.
//
//go:embed example.json
var example []byte

const (
	ehr    = "nexus"
	apiKey = "dev-api-key-for-make-run-not-production"
	secret = "dev-webhook-secret-for-make-run-not-production"
)

func main() {
	binary := flag.String("binary", "bin/ehr-receiver", "the receiver binary (make build)")
	listen := flag.String("listen", "127.0.0.1:8080", "webhook address")
	metricsListen := flag.String("metrics-listen", "127.0.0.1:9090", "metrics and probes address")
	zone := flag.String("time-zone", "America/New_York", "the EHR's time zone")
	flag.Parse()
	if err := run(*binary, *listen, *metricsListen, *zone); err != nil {
		fmt.Fprintln(os.Stderr, "devrun:", err)
		os.Exit(1)
	}
}

func run(binary, listen, metricsListen, zone string) error {
	if _, err := os.Stat(binary); err != nil {
		return fmt.Errorf("no receiver binary (build it with `make build`): %w", err)
	}
	// Caught until the end: a second Ctrl-C must not leave PostgreSQL behind.
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

	// The binary's defaults are the settings (4 MiB bodies, 1000 entries,
	// 50 requests/s, burst 100, Reject); a minimal environment keeps the
	// developer's variables (EHR, LISTEN, …) from changing them.
	cmd := exec.Command(binary, "receiver", "--ehr", ehr, "--time-zone", zone,
		"--listen", listen, "--metrics-listen", metricsListen, "--credentials-dir", dir)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "DATABASE_URL=" + cluster.URL()}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Its own process group, so Ctrl-C reaches it only as the one SIGTERM
	// below (a second signal would end it without draining); it dies with us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("while starting the receiver: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	if err := waitReady(ctx, "http://"+metricsListen+"/readyz", exited); err != nil {
		_ = cmd.Process.Kill()
		return err
	}
	printReady(binary, listen, metricsListen, zone, dir, cluster.URL())

	select {
	case err := <-exited:
		return fmt.Errorf("the receiver exited: %w", errOrStatus(err))
	case <-ctx.Done():
	}
	fmt.Fprintln(os.Stderr, "Stopping the receiver…")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := <-exited; err != nil {
		return fmt.Errorf("the receiver did not stop cleanly: %w", err)
	}
	return nil
}

// waitReady polls url until it answers 200, the receiver exits or ctx ends.
func waitReady(ctx context.Context, url string, exited <-chan error) error {
	deadline := time.After(2 * time.Minute)
	for {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("the receiver exited at start: %w", errOrStatus(err))
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errors.New("the receiver was not ready within 2 minutes")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func errOrStatus(err error) error {
	if err == nil {
		return errors.New("exit status 0")
	}
	return err
}

func printReady(binary, listen, metricsListen, zone, dir, dbURL string) {
	// The path as the developer would type it from here (bin/ehr-receiver).
	if wd, err := os.Getwd(); err == nil {
		if abs, err := filepath.Abs(binary); err == nil {
			if rel, err := filepath.Rel(wd, abs); err == nil && !strings.HasPrefix(rel, "..") {
				binary = rel
			}
		}
	}
	psql := "psql"
	if p, err := exec.LookPath("psql"); err == nil {
		psql = p
	} else if matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql"); len(matches) > 0 {
		psql = matches[len(matches)-1]
	}
	examplePath := filepath.Join(dir, "example.json")
	endpoint := "http://" + listen + "/v2/webhooks/" + ehr + "/sync-appointments"
	fmt.Printf(`
Receiver for EHR %q (time zone %s) on http://%s, probes and metrics on http://%s

Send the spec's full example (signed with the development secret):

  %s send --url http://%s --ehr %s --api-key-file %s --secret-file %s %s

or with curl:

  curl -sS -X POST '%s' -H 'Content-Type: application/json' -H 'X-API-Key: %s' \
    -H 'X-Webhook-Signature: %s' --data-binary @%s

Look at the rows:

  %s '%s' -c 'SELECT external_id, status, start_time, patient_external_id FROM appointments'

Ctrl-C stops the receiver and removes the database.
`, ehr, zone, listen, metricsListen,
		binary, listen, ehr, filepath.Join(dir, "api-key"), filepath.Join(dir, "webhook-secret"), examplePath,
		endpoint, apiKey, auth.Sign([]byte(secret), example), examplePath,
		psql, dbURL)
}
