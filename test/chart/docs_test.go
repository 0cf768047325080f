package chart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/internal/chartdocs"
)

// The README's values table is what `make chart-docs` makes of values.yaml
// now, and so lists every value with its default.
func TestChartReadmeListsEveryValue(t *testing.T) {
	values, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented, err := chartdocs.Parse(values)
	if err != nil {
		t.Fatalf("values.yaml: %v", err)
	}
	want, err := chartdocs.Update(readme, chartdocs.Table(documented))
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(readme) {
		t.Error("charts/ehr-operator/README.md is not current: run `make chart-docs`")
	}
	for _, v := range documented {
		if !strings.Contains(string(readme), "| `"+v.Key+"` | "+v.Type+" | `"+v.Default+"` |") {
			t.Errorf("README does not list %s with its default %s", v.Key, v.Default)
		}
	}
	if len(documented) < 40 {
		t.Errorf("only %d documented values: the parser lost some", len(documented))
	}
}

// The example Secrets' credentials are placeholders too short to be served
// (CredentialTooShort): an example applied as it is must not put publicly
// known credentials in front of patient data.
func TestExampleCredentialsAreRefused(t *testing.T) {
	for _, path := range []string{
		filepath.Join(chartDir, "examples/onboard-nexus.yaml"),
		filepath.Join(repoRoot, "config/samples/nexus-webhook_secret.yaml"),
	} {
		found := 0
		for _, o := range readObjects(t, path) {
			if o.GetKind() != "Secret" {
				continue
			}
			data, _, _ := unstructured.NestedStringMap(o.Object, "stringData")
			for _, key := range []string{"api-key", "webhook-secret"} {
				v, ok := data[key]
				if !ok {
					continue
				}
				found++
				if len(v) >= v1alpha1.MinCredentialBytes {
					t.Errorf("%s: Secret %s's %s is %d bytes, long enough to be served; an example's must be a placeholder under %d",
						path, o.GetName(), key, len(v), v1alpha1.MinCredentialBytes)
				}
			}
		}
		if found != 2 {
			t.Errorf("%s: %d credentials found, want the api-key and the webhook-secret", path, found)
		}
	}
}
