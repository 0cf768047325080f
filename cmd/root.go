// Package cmd holds the subcommands both binaries have: receiver, migrate,
// deliveries, send and version. Each lives in its own file, built by a
// constructor that keeps its flags in a local struct. The manager's
// commands are in cmd/managercmd, which only ehr-operator links: the
// receiver pods run ehr-receiver (cmd/ehr-receiver), the same code without
// the Kubernetes client, controller-runtime and what they pull in.
package cmd

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// NewRootCommand builds the command line: the shared subcommands and extra
// (ehr-operator's manager and chart-test). Every call builds fresh commands
// and flags, so nothing carries over from one run to the next.
func NewRootCommand(extra ...*cobra.Command) *cobra.Command {
	root := &cobra.Command{
		Use:           "ehr-operator",
		Short:         "Receive EHR appointment webhooks on Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newReceiverCommand(),
		newMigrateCommand(),
		newDeliveriesCommand(),
		newSendCommand(),
		newVersionCommand(),
	)
	root.AddCommand(extra...)
	return root
}

// BindEnv gives every flag of fs that was not set on the command line the
// value of its environment variable, when that is set: --database-url falls
// back to DATABASE_URL, --max-body-bytes to MAX_BODY_BYTES, and so on
// (architecture.md, "Configuration and operation"). Flags win over the environment.
func BindEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if _, commandLineOnly := f.Annotations[commandLineOnly]; err != nil || f.Changed || commandLineOnly {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("environment variable %s: %w", name, serr)
			}
		}
	})
	return err
}

// commandLineOnly marks a flag BindEnv leaves alone: one that must be asked
// for each time (--include-patient-data), not switched on for every command
// of a shell by a variable set once.
const commandLineOnly = "ehr-operator/command-line-only"

// envName maps a flag name to its environment variable: "database-url" →
// "DATABASE_URL".
func envName(flag string) string {
	return strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
