// Command chart-docs writes the values table of a chart's README.md from the
// comments in its values.yaml (`make chart-docs`); with -check it only reports
// whether the README is current.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/insighthealth/ehr-operator/internal/chartdocs"
)

func main() {
	check := flag.Bool("check", false, "exit 1 when README.md is not current instead of writing it")
	flag.Parse()
	dir := "charts/ehr-operator"
	if flag.NArg() > 0 {
		dir = flag.Arg(0)
	}
	if err := run(dir, *check); err != nil {
		fmt.Fprintln(os.Stderr, "chart-docs:", err)
		os.Exit(1)
	}
}

func run(dir string, check bool) error {
	values, err := os.ReadFile(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return err
	}
	readmePath := filepath.Join(dir, "README.md")
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		return err
	}
	out, err := chartdocs.Render(values, readme)
	if err != nil {
		return fmt.Errorf("while rendering %s: %w", readmePath, err)
	}
	if bytes.Equal(out, readme) {
		return nil
	}
	if check {
		return fmt.Errorf("%s is stale: run `make chart-docs`", readmePath)
	}
	return os.WriteFile(readmePath, out, 0o644)
}
