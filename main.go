// Command ehr-operator is the operator, the webhook receiver it provisions,
// and the tools around them, in one binary (architecture.md, "Parts").
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/insighthealth/ehr-operator/cmd"
)

func main() {
	if err := cmd.NewRootCommand().ExecuteContext(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
