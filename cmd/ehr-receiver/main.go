// Command ehr-receiver is what the receiver pods run: ehr-operator's
// receiver, migrate, deliveries, send and version subcommands, without the
// manager. It links neither the Kubernetes client nor controller-runtime,
// so a receiver maps a third of the code and starts with a smaller heap
// (docs/decisions.md, "The receiver's own binary").
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/insighthealth/ehr-operator/cmd"
)

func main() {
	root := cmd.NewRootCommand()
	root.Use = "ehr-receiver"
	if err := root.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
