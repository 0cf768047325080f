// Package framework drives the local single-node cluster of
// hack/local-cluster for the end-to-end tests and `make dev`: it brings the
// cluster up, loads the image, runs a throwaway PostgreSQL that pods reach at
// the node address, installs the chart with Helm and gathers diagnostics.
// Everything goes through the real tools (the scripts, kubectl, helm), so a
// failure here is one a person would hit too.
package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Env is a running local cluster and the tools to talk to it.
type Env struct {
	Root       string // repository root
	State      string // the cluster's state directory
	KubeBin    string // directory of kubectl and the other Kubernetes binaries
	Kubeconfig string
	NodeIP     string
	PGDir      string
	Helm       string // helm binary
	// ChartSets are `--set key=value` pairs every InstallOperator passes,
	// before its own (e.g. the receivers' database in their NetworkPolicy).
	ChartSets []string
	// The edge (Traefik): its namespace and HTTPS port at NodeIP.
	EdgeNamespace string
	EdgeHTTPSPort int
	// StartedHere is true when Setup brought the cluster up (so the caller
	// should tear it down), false when it was already running.
	StartedHere bool
}

// Setup brings the local cluster up unless it already runs (up.sh is
// idempotent) and returns its settings, read from hack/local-cluster/env.sh
// so the scripts and the tests cannot disagree.
func Setup(ctx context.Context) (*Env, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the local cluster needs root (network namespaces, mounts, iptables): run as root")
	}
	e := &Env{Root: root, Helm: os.Getenv("HELM")}
	if e.Helm == "" {
		e.Helm = filepath.Join(root, "bin", "helm")
	}
	if _, err := os.Stat(e.Helm); err != nil {
		return nil, fmt.Errorf("helm not found at %s (set HELM or run `make helm`): %w", e.Helm, err)
	}
	vars, err := e.envVars(ctx, "STATE", "K8S_BIN", "KUBECONFIG_PATH", "NODE_IP", "PG_DIR", "EDGE_NS", "EDGE_HTTPS_PORT")
	if err != nil {
		return nil, err
	}
	e.State, e.KubeBin, e.Kubeconfig, e.NodeIP, e.PGDir, e.EdgeNamespace = vars[0], vars[1], vars[2], vars[3], vars[4], vars[5]
	if e.EdgeHTTPSPort, err = strconv.Atoi(vars[6]); err != nil {
		return nil, fmt.Errorf("hack/local-cluster/env.sh: EDGE_HTTPS_PORT %q: %w", vars[6], err)
	}
	wasUp := e.healthy(ctx)
	if !wasUp {
		start := time.Now()
		cmd := exec.CommandContext(ctx, filepath.Join(root, "hack/local-cluster/up.sh"))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			// A half-up cluster would outlive the caller's lock otherwise.
			down := exec.CommandContext(ctx, filepath.Join(root, "hack/local-cluster/down.sh"))
			down.Stdout, down.Stderr = os.Stderr, os.Stderr
			_ = down.Run()
			return nil, fmt.Errorf("while bringing the local cluster up (hack/local-cluster/up.sh; torn down again): %w", err)
		}
		fmt.Fprintf(os.Stderr, "e2e: cluster up in %s\n", time.Since(start).Round(time.Second))
	}
	e.StartedHere = !wasUp
	return e, nil
}

// Teardown runs down.sh and check-clean.sh.
func (e *Env) Teardown(ctx context.Context) error {
	for _, s := range []string{"down.sh", "check-clean.sh"} {
		cmd := exec.CommandContext(ctx, filepath.Join(e.Root, "hack/local-cluster", s))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("while running hack/local-cluster/%s: %w", s, err)
		}
	}
	return nil
}

// LoadImages imports image tars into the cluster's containerd.
func (e *Env) LoadImages(ctx context.Context, tars ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(e.Root, "hack/local-cluster/load-images.sh"), tars...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("while loading images %v: %w\n%s", tars, err, out)
	}
	return nil
}

func (e *Env) envVars(ctx context.Context, names ...string) ([]string, error) {
	script := ". hack/local-cluster/env.sh"
	for _, n := range names {
		script += "; echo \"$" + n + "\""
	}
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = e.Root
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("while reading hack/local-cluster/env.sh: %w", err)
	}
	vals := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(vals) != len(names) {
		return nil, fmt.Errorf("hack/local-cluster/env.sh gave %d values for %v", len(vals), names)
	}
	return vals, nil
}

func (e *Env) healthy(ctx context.Context) bool {
	if _, err := os.Stat(e.Kubeconfig); err != nil {
		return false
	}
	out, err := e.Kubectl(ctx, "", "get", "nodes", "-o", `jsonpath={.items[*].status.conditions[?(@.type=="Ready")].status}`)
	return err == nil && strings.TrimSpace(out) == "True"
}

// Kubectl runs kubectl against the cluster with stdin (may be empty) and
// returns its standard output; the error carries standard error.
func (e *Env) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	return run(ctx, stdin, filepath.Join(e.KubeBin, "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
}

// HelmCmd runs helm against the cluster.
func (e *Env) HelmCmd(ctx context.Context, args ...string) (string, error) {
	return run(ctx, "", e.Helm, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
}

func run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	return runEnv(ctx, nil, stdin, name, args...)
}

// runEnv is run with env added to this process's environment.
func runEnv(ctx context.Context, env []string, stdin, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Eventually polls check every interval until it returns nil or timeout
// passes; the error names what was awaited and the last failure.
func Eventually(ctx context.Context, what string, timeout time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s: %w", timeout, what, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("while waiting for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("while finding the repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "hack/local-cluster/up.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root (with hack/local-cluster/up.sh) not found above the working directory")
		}
		dir = parent
	}
}
