// Command ehr-operator is the operator, the webhook receiver it provisions,
// and the tools around them, in one binary (DESIGN §2).
package main

import (
	"os"

	"github.com/insighthealth/ehr-operator/cmd"
)

func main() {
	os.Exit(cmd.Execute())
}
