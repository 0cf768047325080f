package monitoring

import (
	"fmt"
	"os"
	"testing"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// binary is the ehr-operator built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	var err error
	if binary, err = harness.BuildReceiver("../..", "ehr-operator-monitoring-test"); err != nil {
		fmt.Fprintln(os.Stderr, "monitoring:", err)
		os.Exit(1)
	}
	pgtest.Main(m)
}
