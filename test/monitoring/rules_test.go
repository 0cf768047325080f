// Package monitoring tests what the chart ships for Prometheus and Grafana:
// the alert rules with promtool, and the dashboard's queries against the
// series the binaries really export.
package monitoring

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	shipped "github.com/insighthealth/ehr-operator/internal/monitoring"
)

const rulesFile = "../../charts/ehr-operator/files/prometheus-rules.yaml"

// promtool is the binary `make test` builds and passes in PROMTOOL.
func promtool(t *testing.T) string {
	t.Helper()
	p := os.Getenv("PROMTOOL")
	if p == "" {
		t.Fatal("PROMTOOL is not set: run `make test`, or `make promtool` and set PROMTOOL to the path it prints")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("promtool: %v: run `make promtool` to build it", err)
	}
	return p
}

// TestAlertRules checks the rule file and runs its unit tests: each alert
// fires on its series after its `for`, with its labels and annotations,
// and not on the healthy series beside them.
func TestAlertRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{
		{"check", "rules", rulesFile},
		{"test", "rules", "testdata/rules_test.yaml"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		t.Logf("promtool %v:\n%s", args, out)
		if err != nil {
			t.Errorf("promtool %v: %v", args, err)
		}
	}
}

// TestOperationsDocumentsEveryAlert: docs/operations.md has a row for each
// shipped alert in its table and a paragraph in "When an alert fires", so
// an alert added to the rules cannot page someone with nothing to read.
func TestOperationsDocumentsEveryAlert(t *testing.T) {
	names, err := shipped.AlertNames("../..")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("no alert in the rule file: the check below would check nothing")
	}
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if !strings.Contains(string(doc), "| `"+n+"` |") {
			t.Errorf("docs/operations.md has no row for alert %s in its table", n)
		}
		if !strings.Contains(string(doc), "**`"+n+"`**") {
			t.Errorf("docs/operations.md says nothing of what to do when %s fires (\"When an alert fires\")", n)
		}
	}
}
