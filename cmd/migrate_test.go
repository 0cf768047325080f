package cmd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// TestMain gives the package's tests pgtest's shared PostgreSQL.
func TestMain(m *testing.M) { pgtest.Main(m) }

func TestMigrateCommand(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{name: "flag", args: []string{"migrate", "--database-url", "{url}"}},
		{name: "environment", args: []string{"migrate"}, env: map[string]string{"DATABASE_URL": "{url}"}},
		{name: "file", args: []string{"migrate", "--database-url-file", "{file}"}},
		{name: "file from environment", args: []string{"migrate"}, env: map[string]string{"DATABASE_URL_FILE": "{file}"}},
		{name: "none", args: []string{"migrate"}, wantErr: "--database-url (DATABASE_URL) or --database-url-file"},
		{name: "both", args: []string{"migrate", "--database-url", "{url}", "--database-url-file", "{file}"}, wantErr: "set only one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Each case migrates a database of its own, so a case that
			// migrates nothing cannot pass on an earlier case's work.
			u := pgtest.NewEmptyDatabase(t)
			urlFile := filepath.Join(t.TempDir(), "uri")
			if err := os.WriteFile(urlFile, []byte(u+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			fill := strings.NewReplacer("{url}", u, "{file}", urlFile).Replace
			for _, k := range []string{"DATABASE_URL", "DATABASE_URL_FILE", "TIMEOUT"} {
				t.Setenv(k, "") // restored after the test
				os.Unsetenv(k)
			}
			for k, v := range tc.env {
				t.Setenv(k, fill(v))
			}
			args := make([]string, len(tc.args))
			for i, a := range tc.args {
				args[i] = fill(a)
			}
			st, err := store.Open(context.Background(), u)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.Ready(context.Background()); err == nil {
				t.Fatal("Ready before migrate")
			}

			err = runRoot(t, args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Ready(context.Background()); err != nil {
				t.Errorf("Ready after migrate: %v", err)
			}
		})
	}
}

// runRoot runs the command line on a fresh root command, its output
// discarded.
func runRoot(t *testing.T, args ...string) error {
	t.Helper()
	_, err := runOut(t, args...)
	return err
}
