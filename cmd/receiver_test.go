package cmd

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/receiver/auth"
)

// clearFlagEnv unsets, for this test, the environment variable of every flag
// of the subcommand sub, so that only the test's own values count.
func clearFlagEnv(t *testing.T, sub string) {
	t.Helper()
	c, _, err := NewRootCommand().Find([]string{sub})
	if err != nil {
		t.Fatal(err)
	}
	c.Flags().VisitAll(func(f *pflag.Flag) {
		t.Setenv(envName(f.Name), "") // restored after the test
		os.Unsetenv(envName(f.Name))
	})
}

// The receiver reports each mistake once: its own words for what it reads
// (the time zone, the files), Config.ValidateSettings' for the rest.
func TestReceiverConfigReportsEachMistakeOnce(t *testing.T) {
	clearFlagEnv(t, "receiver")
	err := runRoot(t, "receiver", "--time-zone", "Nowhere/City", "--on-invalid", "Maybe")
	if err == nil {
		t.Fatal("receiver started without a configuration")
	}
	msg := err.Error()
	for _, want := range []string{
		"ehr is required",
		`--time-zone "Nowhere/City" is not an IANA time zone name`,
		"--database-url (DATABASE_URL) or --database-url-file (DATABASE_URL_FILE) is required",
		"--credentials-dir (CREDENTIALS_DIR) is required",
		`on-invalid must be Reject or Quarantine, not "Maybe"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not say %q:\n%s", want, msg)
		}
	}
	for _, dup := range []string{"time zone is not set", "API key is empty", "webhook secret is empty"} {
		if strings.Contains(msg, dup) {
			t.Errorf("error repeats %q:\n%s", dup, msg)
		}
	}
	if n := strings.Count(msg, "DNS label"); n != 1 {
		t.Errorf("the EHR is reported %d times, want once:\n%s", n, msg)
	}
}

func TestReceiverConfigKeepsSecretsOutOfErrors(t *testing.T) {
	clearFlagEnv(t, "receiver")
	dir := t.TempDir()
	for name, content := range map[string]string{"api-key": "\n", "webhook-secret": "s3cret-value\n", "url": "postgres://u:hunter2@127.0.0.1:1/x\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("DATABASE_URL", "postgres://u:hunter2@127.0.0.1:1/x")
	err := runRoot(t, "receiver", "--ehr", "nexus", "--credentials-dir", dir, "--database-url-file", filepath.Join(dir, "url"),
		"--listen", ":8080", "--metrics-listen", ":8080")
	if err == nil {
		t.Fatal("receiver started with a bad configuration")
	}
	msg := err.Error()
	// Every mistake is found before the store is opened.
	if !strings.HasPrefix(msg, "while reading the receiver configuration") {
		t.Errorf("error does not come from the configuration:\n%s", msg)
	}
	for _, want := range []string{
		"set only one of --database-url (DATABASE_URL) and --database-url-file (DATABASE_URL_FILE)",
		"api-key: is empty", "listen and metrics-listen must differ",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not say %q:\n%s", want, msg)
		}
	}
	// Neither a secret nor Validate's repeat of the empty key.
	for _, unwanted := range []string{"hunter2", "s3cret-value", "API key is empty"} {
		if strings.Contains(msg, unwanted) {
			t.Errorf("error holds %q:\n%s", unwanted, msg)
		}
	}
}

// The retention flags, and their environment variables, reach the
// receiver's configuration and its checks.
func TestReceiverRetentionFlags(t *testing.T) {
	clearFlagEnv(t, "receiver")
	t.Setenv("RETAIN_QUARANTINE", "24h")
	err := runRoot(t, "receiver", "--ehr", "nexus", "--retain-quarantine-content", "48h", "--retention-interval", "-1s")
	if err == nil {
		t.Fatal("receiver started with a bad configuration")
	}
	for _, want := range []string{
		"retention of the quarantine content (48h0m0s) must not exceed the quarantine's (24h0m0s)",
		"retention-interval must not be negative",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%s", want, err)
		}
	}
}

// The previous API key and webhook secret are read when their files are
// there (trailing newline dropped), and are optional.
func TestReceiverConfigReadsThePreviousCredentials(t *testing.T) {
	dir := t.TempDir()
	const (
		keyNew    = "key-new-of-at-least-thirty-two-bytes"
		secretNew = "secret-new-of-at-least-thirty-two-bytes"
		keyOld    = "key-old-of-at-least-thirty-two-bytes"
		secretOld = "secret-old-of-at-least-thirty-two-bytes"
	)
	files := map[string]string{"api-key": keyNew + "\n", "webhook-secret": secretNew + "\n"}
	write := func() {
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	write()
	f := receiverFlags{ehr: "nexus", credentialsDir: dir, timeZone: "UTC", maxBodyBytes: 1 << 20, maxBatchSize: 10,
		requestsPerSecond: 1, burst: 1, onInvalid: "Reject", listen: ":8080", metricsListen: ":9090",
		databaseURL: &secretFlag{name: "database-url", value: "postgres://x"}}
	cfg, _, err := receiverConfig(f)
	if err != nil || cfg.APIKey != keyNew || cfg.PreviousAPIKey != "" || cfg.PreviousSecret != nil {
		t.Fatalf("without previous ones: %+v, %v", cfg, err)
	}
	files["api-key-previous"], files["webhook-secret-previous"] = keyOld+"\n", secretOld
	write()
	cfg, _, err = receiverConfig(f)
	if err != nil || cfg.PreviousAPIKey != keyOld || string(cfg.PreviousSecret) != secretOld {
		t.Fatalf("with previous ones: previous key %q, previous secret %q, %v", cfg.PreviousAPIKey, cfg.PreviousSecret, err)
	}
}

// A credential shorter than auth.MinCredentialBytes is refused at start,
// as the operator refuses it in the Secret: the kubelet hands a running
// pod the Secret's new files whatever the operator said, and a restarted
// receiver would otherwise serve with them. An empty previous one is none.
func TestReceiverRefusesShortCredentials(t *testing.T) {
	if auth.MinCredentialBytes != v1alpha1.MinCredentialBytes {
		t.Fatalf("auth.MinCredentialBytes %d, v1alpha1.MinCredentialBytes %d: the receiver and the operator must agree",
			auth.MinCredentialBytes, v1alpha1.MinCredentialBytes)
	}
	long := strings.Repeat("k", auth.MinCredentialBytes)
	short := long[1:] // one byte short, newline dropped first
	for _, tt := range []struct {
		name  string
		files map[string]string
		want  []string // the files named; empty: accepted
	}{
		{"long enough, with a newline", map[string]string{"api-key": long + "\n", "webhook-secret": long + "\r\n", "webhook-secret-previous": "\n"}, nil},
		{"short key and secret", map[string]string{"api-key": short + "\n", "webhook-secret": short}, []string{"api-key", "webhook-secret"}},
		{"short previous ones", map[string]string{"api-key": long, "webhook-secret": long, "api-key-previous": short, "webhook-secret-previous": "x"},
			[]string{"api-key-previous", "webhook-secret-previous"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			f := receiverFlags{ehr: "nexus", credentialsDir: dir, timeZone: "UTC", maxBodyBytes: 1 << 20, maxBatchSize: 10,
				requestsPerSecond: 1, burst: 1, onInvalid: "Reject", listen: ":8080", metricsListen: ":9090",
				databaseURL: &secretFlag{name: "database-url", value: "postgres://x"}}
			_, _, err := receiverConfig(f)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, name := range tt.want {
				want := filepath.Join(dir, name) + ": shorter than 32 bytes; use a random one, e.g. `openssl rand -hex 32`"
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q:\n%v", want, err)
				}
			}
			if strings.Contains(err.Error(), short) || strings.Contains(err.Error(), "31 bytes") {
				t.Errorf("error holds the value or its length:\n%v", err)
			}
		})
	}
}

func TestParseLogLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		if got, err := ParseLogLevel(in); err != nil || got != want {
			t.Errorf("ParseLogLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "INFO", "warning", "trace"} {
		if _, err := ParseLogLevel(bad); err == nil {
			t.Errorf("ParseLogLevel(%q) accepted", bad)
		}
	}
}
