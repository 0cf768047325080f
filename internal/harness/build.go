package harness

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildReceiver builds the ehr-receiver command (cmd/ehr-receiver, what
// receiver pods run) of the module at moduleRoot into
// os.TempDir()/<dirName>-<hash of moduleRoot's absolute path>/ehr-receiver
// and returns its path. The place is fixed per checkout and overwritten each
// run (go build is incremental): test mains end in pgtest.Main, which exits
// the process, so nothing could remove a directory of their own. Give each
// test package its own dirName, since packages are tested in parallel; the
// hash keeps two checkouts tested at once (a CI clone beside a working
// tree) from running each other's binary.
func BuildReceiver(moduleRoot, dirName string) (string, error) {
	root, err := filepath.Abs(moduleRoot)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), dirName+"-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("while creating %s: %w", dir, err)
	}
	binary := filepath.Join(dir, "ehr-receiver")
	build := exec.Command("go", "build", "-o", binary, "./cmd/ehr-receiver")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building ehr-receiver failed: %w", err)
	}
	return binary, nil
}
