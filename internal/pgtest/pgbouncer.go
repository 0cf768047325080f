package pgtest

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// NewPgBouncer starts a throwaway PgBouncer on 127.0.0.1 in front of the
// database of dbURL (a URL of this package, user postgres, no password)
// with pool_mode mode ("session", "transaction") and PgBouncer's other
// defaults, and returns the URL of that database through it. It is
// stopped when the test ends. It needs the pgbouncer binary (Debian and
// Ubuntu: apt-get install pgbouncer; hack/setup.sh postgres installs it);
// without it the test fails saying so.
func NewPgBouncer(t testing.TB, dbURL, mode string) string {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil && isFile("/usr/sbin/pgbouncer") {
		bin, err = "/usr/sbin/pgbouncer", nil
	}
	if err != nil {
		t.Fatal("pgtest: pgbouncer is not installed (Debian/Ubuntu: apt-get install pgbouncer, or hack/setup.sh postgres)")
	}
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	var cred *syscall.Credential
	if os.Geteuid() == 0 { // PgBouncer refuses to run as root
		if cred, err = unprivileged(); err != nil {
			t.Fatalf("pgtest: %v", err)
		}
	}
	// A free port can be taken between choosing and binding it (another
	// test's listener): PgBouncer then exits at start, and is started again
	// on another port.
	for attempt := 1; ; attempt++ {
		pooled, log, err := startPgBouncer(t, bin, cred, u, db, mode)
		if err == nil {
			return pooled
		}
		if attempt < 3 && strings.Contains(log, "already in use") {
			continue
		}
		t.Fatalf("pgtest: %v; its log:\n%s", err, log)
	}
}

// pgBouncerPort chooses PgBouncer's port: a variable, so that a test can
// hand it a port already taken.
var pgBouncerPort = freePort

// startPgBouncer makes one attempt: on a fresh port, in a directory of its
// own, removed when the test ends. It returns PgBouncer's log with an error.
func startPgBouncer(t testing.TB, bin string, cred *syscall.Credential, u *url.URL, db, mode string) (string, string, error) {
	t.Helper()
	dir, err := os.MkdirTemp(tempParent(cred), "pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	port, err := pgBouncerPort()
	if err != nil {
		t.Fatal(err)
	}
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%s dbname=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
`, db, u.Hostname(), u.Port(), db, port, filepath.Join(dir, "users.txt"), mode)
	files := map[string]string{"pgbouncer.ini": ini, "users.txt": `"postgres" ""` + "\n"}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(filepath.Join(dir, "pgbouncer.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatalf("pgtest: starting pgbouncer: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	pooled := *u
	pooled.Host = "127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-done:
			log, _ := os.ReadFile(logf.Name())
			return "", string(log), fmt.Errorf("pgbouncer exited at start")
		default:
		}
		if ping(pooled.String()) == nil {
			return pooled.String(), "", nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			return "", string(log), fmt.Errorf("pgbouncer did not accept connections within 30s")
		}
	}
}
