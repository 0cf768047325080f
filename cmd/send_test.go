package cmd

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insighthealth/ehr-operator/receiver/auth"
)

// runSendDry runs `send --dry-run` on a fresh root command and returns its
// output.
func runSendDry(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"send", "--dry-run", "--url", "http://127.0.0.1:1", "--ehr", "nexus"}, args...))
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// --api-key and --secret go through the same flag-or-file helper as
// --database-url: a flag, a file, or their environment variables, the flag
// winning, and errors that name the flags but never the value.
func TestSendSecretFlags(t *testing.T) {
	dir := t.TempDir()
	body := filepath.Join(dir, "body.json")
	secretFile := filepath.Join(dir, "secret")
	keyFile := filepath.Join(dir, "key")
	for path, content := range map[string]string{body: `{"appointments":[]}`, secretFile: "file-secret\n", keyFile: "file-key\n"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sig := func(secret string) string {
		return "X-Webhook-Signature: " + auth.Sign([]byte(secret), []byte(`{"appointments":[]}`))
	}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		want     []string
		wantErr  string
		notInErr string
	}{
		{name: "flags", args: []string{"--api-key", "flag-key", "--secret", "flag-secret"},
			want: []string{"X-API-Key: flag-key", sig("flag-secret")}},
		{name: "files", args: []string{"--api-key-file", keyFile, "--secret-file", secretFile},
			want: []string{"X-API-Key: file-key", sig("file-secret")}},
		{name: "environment", env: map[string]string{"API_KEY": "env-key", "SECRET_FILE": secretFile},
			want: []string{"X-API-Key: env-key", sig("file-secret")}},
		{name: "flag wins over environment", args: []string{"--api-key", "flag-key"}, env: map[string]string{"API_KEY": "env-key", "SECRET": "env-secret"},
			want: []string{"X-API-Key: flag-key", sig("env-secret")}},
		{name: "both", args: []string{"--api-key", "flag-key", "--api-key-file", keyFile, "--secret", "s"},
			wantErr: "set only one of --api-key (API_KEY) and --api-key-file (API_KEY_FILE)", notInErr: "flag-key"},
		{name: "none", args: []string{"--api-key", "k"},
			wantErr: "--secret (SECRET) or --secret-file (SECRET_FILE) is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clearFlagEnv(t, "send")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			out, err := runSendDry(t, append(tc.args, body)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				if tc.notInErr != "" && strings.Contains(err.Error(), tc.notInErr) {
					t.Errorf("error holds the value %q: %v", tc.notInErr, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not hold %q:\n%s", w, out)
				}
			}
		})
	}
}
