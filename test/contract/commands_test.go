package contract

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/auth"
)

func run(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestSendCommand(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t))
	dir := t.TempDir()
	file := filepath.Join(dir, "example.json")
	body := specExample(t)
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := run(t, []string{"API_KEY=" + apiKey}, "send", "--url", r.url, "--ehr", ehr, "--secret-file", filepath.Join(dir, "secret"), file)
	if err != nil || !strings.Contains(out, "200 OK") || !strings.Contains(out, successBody) {
		t.Fatalf("send: %v\n%s", err, out)
	}
	// The full endpoint as --url, a wrong secret: the 401 is printed and the exit code is not 0.
	out, err = run(t, nil, "send", "--url", r.url+"/v2/webhooks/nexus/sync-appointments", "--api-key", apiKey, "--secret", "wrong", file)
	if err == nil || !strings.Contains(out, "401 Unauthorized") || !strings.Contains(out, `"success":false`) {
		t.Fatalf("send with a wrong secret: %v\n%s", err, out)
	}
	out, err = run(t, nil, "send", "--dry-run", "--url", r.url, "--ehr", ehr, "--api-key", apiKey, "--secret", secret, file)
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	containsAll(t, out, "X-Webhook-Signature: "+auth.Sign([]byte(secret), body),
		"curl -sS -X POST '"+r.url+"/v2/webhooks/nexus/sync-appointments'",
		"--data-binary '@"+file+"'", "'Content-Type: application/json'")
}

func TestReceiverConfigErrors(t *testing.T) {
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "api-key"), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// EHR and ON_INVALID come from the environment: the fallback of every flag.
	out, err := run(t, []string{"EHR=Not_A_Label", "ON_INVALID=Maybe", "DATABASE_URL=postgres://127.0.0.1:1/x"},
		"receiver", "--credentials-dir", empty, "--time-zone", "Nowhere/City")
	if err == nil {
		t.Fatalf("receiver started with a bad configuration:\n%s", out)
	}
	containsAll(t, out, "api-key: is empty", "webhook-secret: no such file", "DNS label", `on-invalid must be Reject or Quarantine, not "Maybe"`, "Nowhere/City")
}
