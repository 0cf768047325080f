package chart

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Paths relative to this package's directory, where go test runs it.
const (
	repoRoot = "../.."
	chartDir = "../../charts/ehr-operator"
)

// helmBin returns the helm binary named by HELM, failing the test with the
// way to get one when it is missing.
func helmBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("HELM")
	if p == "" {
		t.Fatal("HELM is not set: run `make helm` (installs bin/helm), then `HELM=$PWD/bin/helm go test ./test/chart/`, or run `make test`")
	}
	if _, err := exec.LookPath(p); err != nil {
		t.Fatalf("HELM=%s is not an executable: run `make helm`: %v", p, err)
	}
	return p
}

// kubectlBin returns kubectl (for `kubectl kustomize`): KUBECTL, else the
// one `make setup-envtest` put beside the envtest binaries (a fresh machine
// has none on PATH), else the one on PATH.
func kubectlBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv("KUBECTL")
	if p == "" {
		p = "kubectl"
		if assets := os.Getenv("KUBEBUILDER_ASSETS"); assets != "" {
			if _, err := os.Stat(filepath.Join(assets, "kubectl")); err == nil {
				p = filepath.Join(assets, "kubectl")
			}
		}
	}
	path, err := exec.LookPath(p)
	if err != nil {
		t.Fatalf("kubectl not found (needed for `kubectl kustomize config/default`): run `make setup-envtest` and set KUBEBUILDER_ASSETS as `make test` does, or set KUBECTL: %v", err)
	}
	return path
}

// run runs a command and returns its stdout; stderr is part of the error.
func run(name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(name), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// helmTemplate renders the chart as release in namespace with the given extra
// helm arguments (-f file, --set k=v).
func helmTemplate(t *testing.T, release, namespace string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	// Without the `helm test` hook, which `helm install` does not create
	// either (helmTestHook renders and checks it).
	out, err := run(helmBin(t), append([]string{"template", release, chartDir, "--namespace", namespace, "--skip-tests"}, args...)...)
	if err != nil {
		t.Fatalf("helm template failed: %v", err)
	}
	objs, err := decodeObjects([]byte(out))
	if err != nil {
		t.Fatalf("helm template output: %v", err)
	}
	return objs
}

// kustomize renders a kustomize directory with kubectl.
func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	out, err := run(kubectlBin(t), "kustomize", dir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s failed: %v", dir, err)
	}
	objs, err := decodeObjects([]byte(out))
	if err != nil {
		t.Fatalf("kubectl kustomize %s output: %v", dir, err)
	}
	return objs
}

// readObjects decodes every object in a YAML file.
func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeObjects(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return objs
}

// decodeObjects splits a multi-document YAML stream into objects, skipping
// empty documents.
func decodeObjects(b []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var objs []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("while decoding YAML document %d: %w", len(objs)+1, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || string(raw) == "null" {
			continue
		}
		// Unstructured's JSON decoding keeps integers as int64, as the API machinery does.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("while decoding YAML document %d: %w", len(objs)+1, err)
		}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("document %d has no kind or apiVersion", len(objs)+1)
		}
		objs = append(objs, u)
	}
}

// find returns the one object of kind and name, failing the test otherwise.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			if found != nil {
				t.Fatalf("two %s objects named %s", kind, name)
			}
			found = o
		}
	}
	if found == nil {
		t.Fatalf("no %s named %s among %s", kind, name, describe(objs))
	}
	return found
}

// ofKind returns the objects of one kind.
func ofKind(objs []*unstructured.Unstructured, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			out = append(out, o)
		}
	}
	return out
}

func describe(objs []*unstructured.Unstructured) string {
	var s []string
	for _, o := range objs {
		s = append(s, o.GetKind()+"/"+o.GetName())
	}
	return "[" + strings.Join(s, " ") + "]"
}

// managerContainer returns the container named manager of a Deployment.
func managerContainer(t *testing.T, deploy *unstructured.Unstructured) map[string]any {
	t.Helper()
	containers, _, err := unstructured.NestedSlice(deploy.Object, "spec", "template", "spec", "containers")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range containers {
		if m, ok := c.(map[string]any); ok && m["name"] == "manager" {
			return m
		}
	}
	t.Fatalf("Deployment %s has no container named manager", deploy.GetName())
	return nil
}

// stringsOf returns a []any of strings as []string.
func stringsOf(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// envValue returns the value of an env var of a container and whether it is set.
func envValue(c map[string]any, name string) (string, bool) {
	env, _ := c["env"].([]any)
	for _, e := range env {
		m, _ := e.(map[string]any)
		if m["name"] == name {
			v, _ := m["value"].(string)
			return v, true
		}
	}
	return "", false
}
