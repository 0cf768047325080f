// Package cmd holds the ehr-operator subcommands: manager, receiver,
// migrate, deliveries, send and version. Each lives in its own file, built by a
// constructor that keeps its flags in a local struct.
package cmd

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// NewRootCommand builds the command line. Every call builds fresh commands
// and flags, so nothing carries over from one run to the next.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "ehr-operator",
		Short:         "Receive EHR appointment webhooks on Kubernetes",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newManagerCommand(),
		newReceiverCommand(),
		newMigrateCommand(),
		newDeliveriesCommand(),
		newSendCommand(),
		newVersionCommand(),
		newChartTestCommand(),
	)
	return root
}

// bindEnv gives every flag of fs that was not set on the command line the
// value of its environment variable, when that is set: --database-url falls
// back to DATABASE_URL, --max-body-bytes to MAX_BODY_BYTES, and so on
// (architecture.md, "Configuration and operation"). Flags win over the environment.
func bindEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
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

// envName maps a flag name to its environment variable: "database-url" →
// "DATABASE_URL".
func envName(flag string) string {
	return strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
