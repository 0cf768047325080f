package framework

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Registry is the private OCI registry of the e2e tests (hack/registry):
// TLS with its own CA, basic authentication, listening at the node address
// only. containerd pulls from it with the pods' pull secrets; nothing of it
// outlives the cluster (down.sh stops it by its PID file).
type Registry struct {
	Host     string // NODE_IP:REGISTRY_PORT
	CA       string // PEM file of its CA
	User     string
	Password string
	// DockerConfig is a directory with config.json holding the
	// credentials, for the image push ($DOCKER_CONFIG) and helm
	// ($HELM_REGISTRY_CONFIG); kept in the cluster's state directory.
	DockerConfig string
	pidFile      string
}

// StartRegistry builds and starts hack/registry, tells containerd to trust
// its CA (certs.d/<host>/hosts.toml, read at each pull), and waits until it
// refuses an anonymous request with 401.
func (e *Env) StartRegistry(ctx context.Context) (*Registry, error) {
	vars, err := e.envVars(ctx, "REGISTRY_PORT", "CONTAINERD_CERTS_D")
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(vars[0])
	if err != nil {
		return nil, fmt.Errorf("hack/local-cluster/env.sh: REGISTRY_PORT %q: %w", vars[0], err)
	}
	pw := make([]byte, 16)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	r := &Registry{
		Host: fmt.Sprintf("%s:%d", e.NodeIP, port), User: "e2e", Password: hex.EncodeToString(pw),
		DockerConfig: filepath.Join(e.State, "registry-client"), pidFile: filepath.Join(e.State, "pids", "registry.pid"),
	}
	dir := filepath.Join(e.State, "registry")
	r.CA = filepath.Join(dir, "ca.crt")
	r.stopPrevious()
	_ = os.RemoveAll(dir)
	bin := filepath.Join(e.State, "bin", "registry")
	build := exec.CommandContext(ctx, "go", "-C", filepath.Join(e.Root, "hack"), "build", "-o", bin, "./registry")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("while building hack/registry: %w\n%s", err, out)
	}
	logf, err := os.OpenFile(filepath.Join(e.State, "logs", "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// Its own session, like the cluster's components: it lives until
	// Stop or down.sh, whatever happens to this process.
	cmd := exec.Command(bin, "--addr", r.Host, "--dir", dir, "--user", r.User)
	cmd.Env = append(os.Environ(), "REGISTRY_PASSWORD="+r.Password)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("while starting the registry: %w", err)
	}
	if err := os.WriteFile(r.pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return nil, err
	}
	go func() { _ = cmd.Wait() }()

	err = Eventually(ctx, "the registry to answer at "+r.Host, 30*time.Second, func(context.Context) error {
		code, err := r.AnonymousStatus()
		if err != nil {
			return err
		}
		if code != http.StatusUnauthorized {
			return fmt.Errorf("anonymous GET /v2/ answered %d, want 401", code)
		}
		return nil
	})
	if err != nil {
		r.Stop()
		return nil, err
	}
	if err := r.writeClientConfig(); err != nil {
		r.Stop()
		return nil, err
	}
	hosts := filepath.Join(vars[1], r.Host)
	if err := os.MkdirAll(hosts, 0o755); err != nil {
		return nil, err
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n",
		"https://"+r.Host, "https://"+r.Host, r.CA)
	if err := os.WriteFile(filepath.Join(hosts, "hosts.toml"), []byte(toml), 0o644); err != nil {
		return nil, err
	}
	return r, nil
}

// AnonymousStatus is the registry's answer to GET /v2/ without
// credentials: 401 when authentication is on.
func (r *Registry) AnonymousStatus() (int, error) {
	c, err := r.client()
	if err != nil {
		return 0, err
	}
	resp, err := c.Get("https://" + r.Host + "/v2/")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// ManifestDigest is the digest of the manifest (or index) the registry
// serves for repo:ref, asked with its credentials (HEAD, the
// Docker-Content-Digest header): what a pull of that tag gets now, whatever
// a release's output said. It is an error if the registry has no such tag.
func (r *Registry) ManifestDigest(ctx context.Context, repo, ref string) (string, error) {
	c, err := r.client()
	if err != nil {
		return "", err
	}
	u := "https://" + r.Host + "/v2/" + repo + "/manifests/" + ref
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(r.User, r.Password)
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HEAD %s: %s", u, resp.Status)
	}
	d := resp.Header.Get("Docker-Content-Digest")
	if !strings.HasPrefix(d, "sha256:") {
		return "", fmt.Errorf("HEAD %s: no digest in the answer (Docker-Content-Digest %q)", u, d)
	}
	return d, nil
}

// client is an HTTP client that trusts the registry's CA.
func (r *Registry) client() (*http.Client, error) {
	pem, err := os.ReadFile(r.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}, nil
}

func (r *Registry) writeClientConfig() error {
	if err := os.MkdirAll(r.DockerConfig, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(r.dockerConfig())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(r.DockerConfig, "config.json"), b, 0o600)
}

func (r *Registry) dockerConfig() map[string]any {
	auth := base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Password))
	return map[string]any{"auths": map[string]any{r.Host: map[string]string{
		"username": r.User, "password": r.Password, "auth": auth}}}
}

// PullSecretYAML is a kubernetes.io/dockerconfigjson Secret with the
// registry's credentials, for a pod's imagePullSecrets.
func (r *Registry) PullSecretYAML(namespace, name string) string {
	b, _ := json.Marshal(r.dockerConfig())
	return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: %s, namespace: %s}
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: %s
`, name, namespace, base64.StdEncoding.EncodeToString(b))
}

// Env is what hack/release.sh and helm need to reach the registry.
func (r *Registry) Env() []string {
	return []string{"DOCKER_CONFIG=" + r.DockerConfig, "HELM_REGISTRY_CONFIG=" + filepath.Join(r.DockerConfig, "config.json"),
		"REGISTRY_CA=" + r.CA}
}

// Stop ends the registry process this Registry started.
func (r *Registry) Stop() { r.stopPrevious() }

// stopPrevious ends the process of the PID file if it still runs the
// registry (a previous run on a kept cluster), like down.sh does.
func (r *Registry) stopPrevious() {
	b, err := os.ReadFile(r.pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return
	}
	if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), "registry") {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	_ = os.Remove(r.pidFile)
}

// Pushed is one version pushed by hack/release.sh.
type Pushed struct {
	Version      string            // vX.Y.Z
	ChartVersion string            // X.Y.Z
	Image        string            // HOST/REPO/ehr-operator:vX.Y.Z
	Index        string            // the image index's digest
	Platforms    map[string]string // linux/ARCH -> the image manifest's digest
	SBOMs        map[string]string // linux/ARCH -> the SBOM artifact's digest
	ChartDigest  string
	Output       string // hack/release.sh's output
}

var (
	reIndex = regexp.MustCompile(`(?m)^pushed index \S+@(sha256:[0-9a-f]{64})`)
	reImage = regexp.MustCompile(`(?m)^pushed image (linux/\S+) (sha256:[0-9a-f]{64})`)
	reSBOM  = regexp.MustCompile(`(?m)^pushed sbom  (linux/\S+) (sha256:[0-9a-f]{64})`)
	reChart = regexp.MustCompile(`(?m)^Digest: (sha256:[0-9a-f]{64})`)
)

// Release runs hack/release.sh (what `make release` runs) for version to
// REGISTRY/path, with the extra environment variables env (e.g.
// CHART_DIR=…), and returns what it pushed. On failure, the Pushed holds
// its output still.
func (e *Env) Release(ctx context.Context, r *Registry, path, version string, env ...string) (*Pushed, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.Root, "hack/release.sh"))
	cmd.Dir = e.Root
	cmd.Env = append(append(append(os.Environ(), r.Env()...), "VERSION="+version, "REGISTRY="+r.Host+"/"+path, "HELM="+e.Helm), env...)
	out, err := cmd.CombinedOutput()
	rel := &Pushed{Version: version, ChartVersion: strings.TrimPrefix(version, "v"),
		Image: r.Host + "/" + path + "/ehr-operator:" + version, Output: string(out),
		Platforms: map[string]string{}, SBOMs: map[string]string{}}
	if err != nil {
		return rel, fmt.Errorf("hack/release.sh %s: %w\n%s", version, err, out)
	}
	if m := reIndex.FindStringSubmatch(rel.Output); m != nil {
		rel.Index = m[1]
	}
	for _, m := range reImage.FindAllStringSubmatch(rel.Output, -1) {
		rel.Platforms[m[1]] = m[2]
	}
	for _, m := range reSBOM.FindAllStringSubmatch(rel.Output, -1) {
		rel.SBOMs[m[1]] = m[2]
	}
	if m := reChart.FindStringSubmatch(rel.Output); m != nil {
		rel.ChartDigest = m[1]
	}
	if rel.Index == "" || len(rel.Platforms) != 2 || len(rel.SBOMs) != 2 || rel.ChartDigest == "" {
		return rel, fmt.Errorf("hack/release.sh %s did not report an index, two platforms with SBOMs and a chart digest:\n%s", version, out)
	}
	return rel, nil
}

// InstallRelease installs or upgrades release Release in namespace ns from
// the chart rel pushed (oci://…, --version), whose default image is rel's,
// pulled by the cluster with the pull secrets set names; it waits for the
// manager to be Ready.
func (e *Env) InstallRelease(ctx context.Context, r *Registry, path string, rel *Pushed, ns string, set ...string) (cmdline, out string, err error) {
	args := []string{"upgrade", "--install", Release, "oci://" + r.Host + "/" + path + "/charts/ehr-operator",
		"--version", rel.ChartVersion, "--ca-file", r.CA,
		"--namespace", ns, "--create-namespace", "--wait", "--timeout", "3m"}
	for _, s := range append(append([]string(nil), e.ChartSets...), set...) {
		args = append(args, "--set", s)
	}
	cmdline = "helm " + strings.Join(args, " ")
	start := time.Now()
	out, err = runEnv(ctx, r.Env(), "", e.Helm, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	if err != nil {
		return cmdline, out, fmt.Errorf("while installing the chart from the registry: %w", err)
	}
	return cmdline, fmt.Sprintf("%s(helm took %s)", out, time.Since(start).Round(time.Second)), nil
}
