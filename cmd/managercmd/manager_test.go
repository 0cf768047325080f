package managercmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insighthealth/ehr-operator/cmd"
)

// A typo in the receivers' pod defaults stops the manager at start, before
// it connects anywhere, and the message names the file and the field.
func TestManagerRefusesBadPodDefaults(t *testing.T) {
	for name, tc := range map[string]struct{ file, want string }{
		"unknown field":  {"nodeSelecter:\n  pool: receivers\n", `unknown field "nodeSelecter"`},
		"operator label": {"labels:\n  app.kubernetes.io/instance: x\n", "labels[app.kubernetes.io/instance]"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pod-defaults.yaml")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			c := cmd.NewRootCommand(Commands()...)
			c.SetArgs([]string{"manager", "--receiver-pod-defaults=" + path})
			err := c.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("manager --receiver-pod-defaults with %q: %v, want an error naming %s and %q", tc.file, err, path, tc.want)
			}
		})
	}
}

// The manager checks --receiver-log-level as the receiver would, by name.
func TestManagerRefusesBadReceiverLogLevel(t *testing.T) {
	c := cmd.NewRootCommand(Commands()...)
	c.SetArgs([]string{"manager", "--receiver-log-level=loud"})
	if err := c.Execute(); err == nil || !strings.Contains(err.Error(), "--receiver-log-level") {
		t.Errorf("manager --receiver-log-level=loud: %v, want it refused by name", err)
	}
}
