package chart

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The flags the chart and config/manager pass are flags of the real
// `ehr-operator manager`: cobra refuses an unknown flag before it handles
// --help, so `manager <args> --help` succeeds only when every flag exists.
func TestDeployedArgsAreManagerFlags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ehr-operator")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("while building ehr-operator: %v\n%s", err, out)
	}
	sources := map[string][]string{
		"chart default values":     stringsOf(managerContainer(t, find(t, helmTemplate(t, "flags", "ops"), "Deployment", "flags-ehr-operator"))["args"]),
		"chart every option":       stringsOf(managerContainer(t, find(t, helmTemplate(t, "flags", "ops", "-f", allOnValues), "Deployment", "all-on"))["args"]),
		"kustomize config/default": stringsOf(managerContainer(t, find(t, kustomize(t, filepath.Join(repoRoot, "config/default")), "Deployment", "ehr-operator-controller-manager"))["args"]),
	}
	for name, args := range sources {
		t.Run(name, func(t *testing.T) {
			if len(args) == 0 || args[0] != "manager" {
				t.Fatalf("args %q do not start with the manager subcommand", args)
			}
			out, err := run(bin, append(args, "--help")...)
			if err != nil {
				t.Fatalf("ehr-operator refused the deployed args: %v", err)
			}
			if !strings.Contains(out, "--receiver-image") {
				t.Errorf("`ehr-operator manager --help` did not print the manager's flags:\n%s", out)
			}
		})
	}
	// The check can fail: an unknown flag is refused.
	if _, err := run(bin, "manager", "--no-such-flag", "--help"); err == nil {
		t.Error("ehr-operator manager accepted an unknown flag")
	}
}
