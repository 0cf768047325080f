package chart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
