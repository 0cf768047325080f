package store

import (
	"flag"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/write.sql.golden from the column lists")

// The statements as columns.go and write.go build them, kept beside the
// code for review: a change of the column lists shows up there as SQL.
// After such a change: go test ./receiver/store -run TestStatementsGolden -update
func TestStatementsGolden(t *testing.T) {
	t.Parallel()
	const path = "testdata/write.sql.golden"
	got := "-- writeSQL (built by receiver/store/write.go from columns.go)\n" + writeSQL +
		"\n-- writeSimpleSQL (a group with no quarantined, replayed or older versions)\n" + writeSimpleSQL +
		"\n-- recordSQL\n" + recordSQL
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("statements differ from %s (-file +built); run with -update if the change is meant:\n%s", path, diff)
	}
}
