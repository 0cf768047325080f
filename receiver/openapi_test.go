package receiver

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestOpenAPIListsEveryAnswer keeps docs/openapi.yaml honest: it is
// OpenAPI 3.1, has the server's one route, and lists exactly the statuses
// the handler can answer.
func TestOpenAPIListsEveryAnswer(t *testing.T) {
	raw, err := os.ReadFile("../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string `json:"openapi"`
		Paths   map[string]map[string]struct {
			Responses map[string]any `json:"responses"`
		} `json:"paths"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Errorf("openapi %q, want 3.1.x", doc.OpenAPI)
	}
	path := strings.Replace(SyncPath, ":ehr", "{ehr}", 1)
	if len(doc.Paths) != 1 || len(doc.Paths[path]) != 1 {
		t.Fatalf("paths %v, want only %s", doc.Paths, path)
	}
	op, ok := doc.Paths[path]["post"]
	if !ok {
		t.Fatalf("%s has no post operation", path)
	}
	var got []int
	for code := range op.Responses {
		n, err := strconv.Atoi(code)
		if err != nil {
			t.Fatalf("response %q is not a status code", code)
		}
		got = append(got, n)
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(Statuses))
	if !slices.Equal(got, want) {
		t.Errorf("openapi responses %v, handler statuses %v", got, want)
	}
}
