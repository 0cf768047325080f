package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildBinary builds the ehr-operator command of the module at moduleRoot
// into os.TempDir()/<dirName>/ehr-operator and returns its path. The place
// is fixed and overwritten each run (go build is incremental): test mains
// end in pgtest.Main, which exits the process, so nothing could remove a
// directory of their own. Give each test package its own dirName, since
// packages are tested in parallel.
func BuildBinary(moduleRoot, dirName string) (string, error) {
	dir := filepath.Join(os.TempDir(), dirName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("while creating %s: %w", dir, err)
	}
	binary := filepath.Join(dir, "ehr-operator")
	build := exec.Command("go", "build", "-o", binary, moduleRoot)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building ehr-operator failed: %w", err)
	}
	return binary, nil
}
