// Command ehr-operator is the operator and the tools around it (architecture.md,
// "Parts"): the manager, chart-test, and the subcommands it shares with
// ehr-receiver (cmd/ehr-receiver), the binary the receiver pods run.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/insighthealth/ehr-operator/cmd"
	"github.com/insighthealth/ehr-operator/cmd/managercmd"
)

func main() {
	if err := cmd.NewRootCommand(managercmd.Commands()...).ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
