package contract

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// TestDatabaseTLSVerifyFull runs the receiver against a PostgreSQL that
// serves TLS with a certificate from a throwaway CA: given that CA
// (--database-ca-file, as the operator mounts spec.database.ca), it stores
// over verified TLS; given another CA, it refuses the server, answers 503
// and says why in its log, without the URL's password.
func TestDatabaseTLSVerifyFull(t *testing.T) {
	cluster, caPEM := pgtest.NewTLSCluster(t)
	other, err := pgtest.NewCA("not the database's CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rightCA, wrongCA := filepath.Join(dir, "right-ca.crt"), filepath.Join(dir, "wrong-ca.crt")
	for p, b := range map[string][]byte{rightCA: caPEM, wrongCA: other.CertPEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	plain := cluster.NewDatabase(t)
	// The server trusts every local user; the password is there to show
	// that no log line carries it.
	const password = "tls-test-db-password"
	verifyFull := strings.Replace(strings.Replace(plain, "sslmode=disable", "sslmode=verify-full", 1),
		"postgres://postgres@", "postgres://postgres:"+password+"@", 1)

	t.Run("the database's CA", func(t *testing.T) {
		r := startReceiver(t, verifyFull, "--database-ca-file", rightCA)
		expect(t, r.post(batch(t, entry(t, "over-tls", nil))), 200)
		d := db(t, plain)
		if n := queryInt(t, d, `SELECT count(*) FROM appointments WHERE external_id = 'over-tls'`); n != 1 {
			t.Errorf("appointments over TLS: %d, want 1", n)
		}
		// Every connection of the receiver is encrypted: ours is the one without.
		if n := queryInt(t, d, `SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
			WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND s.ssl`); n == 0 {
			t.Error("the receiver holds no TLS connection to the database")
		}
		if n := queryInt(t, d, `SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
			WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND NOT s.ssl`); n != 0 {
			t.Errorf("the receiver holds %d connections without TLS", n)
		}
	})

	t.Run("another CA", func(t *testing.T) {
		r := startReceiver(t, verifyFull, "--database-ca-file", wrongCA)
		// Not ready: a certificate that does not verify is a setting to
		// fix, not an outage, so a rollout carrying it stops.
		if code, err := probe(r.MetricsURL + "/readyz"); err != nil || code != 503 {
			t.Errorf("/readyz with the wrong CA: %d %v, want 503", code, err)
		}
		a := r.post(batch(t, entry(t, "refused", nil)))
		expect(t, a, 503)
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if dbz := get(t, r.MetricsURL+"/dbz"); strings.Contains(dbz, `"database":"unreachable"`) {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("/dbz with the wrong CA: %s", dbz)
			}
		}
		logs := r.Log()
		if line := grep(logs, `"msg":"Database unreachable"`); !strings.Contains(line, "certificate signed by unknown authority") {
			t.Errorf("the log does not say the server's certificate was refused:\n%s", logs)
		}
		if strings.Contains(logs, password) {
			t.Errorf("the log holds the database password:\n%s", logs)
		}
		if n := queryInt(t, db(t, plain), `SELECT count(*) FROM appointments WHERE external_id = 'refused'`); n != 0 {
			t.Error("an entry answered 503 was stored")
		}
	})
}
