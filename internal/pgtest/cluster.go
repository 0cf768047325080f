package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is a throwaway PostgreSQL server in a temporary directory,
// listening on 127.0.0.1 only.
type Cluster struct {
	bin  string // directory holding initdb and postgres
	dir  string // temporary directory: data/, socket, log
	port int
	cred *syscall.Credential // nil unless running as root
	tls  bool                // ssl=on with server.crt/server.key in the data directory
	// durable keeps PostgreSQL's production defaults for durability
	// (fsync, full_page_writes, synchronous_commit on) instead of the
	// tests' fast settings.
	durable bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited

	srv *server
}

// NewCluster starts a cluster of the test's own, for tests that stop and
// start the database. It is removed when the test ends. It always needs the
// installed binaries, TEST_DATABASE_URL or not.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	c, err := startCluster(nil, false)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(c.destroy)
	return c
}

// URL is the superuser URL of the cluster's "postgres" database.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// NewDatabase returns the URL of a new database on this cluster with every
// migration applied.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	return c.srv.newDatabase(t)
}

// NewEmptyDatabase returns the URL of a new database on this cluster with
// no migration applied.
func (c *Cluster) NewEmptyDatabase(t testing.TB) string {
	t.Helper()
	return c.srv.newEmptyDatabase(t)
}

// Stop shuts the server down (fast mode: sessions are ended) and waits until
// it has exited.
func (c *Cluster) Stop() error { return c.signalStop(syscall.SIGINT) } // PostgreSQL's "fast" shutdown

// Crash ends the server as a crash would (an immediate shutdown, SIGQUIT:
// every process exits at once, nothing is written out, the next start runs
// crash recovery) and waits until it has exited. What a commit had written
// to the WAL survives, as it would the server process's death; what was
// still in its buffers does not.
func (c *Cluster) Crash() error { return c.signalStop(syscall.SIGQUIT) }

// signalStop sends the postmaster sig and waits for it to exit, killing it
// after 30 s.
func (c *Cluster) signalStop(sig syscall.Signal) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
	return nil
}

// Start starts a stopped cluster again on the same port and waits until it
// accepts connections.
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return nil
	}
	return c.startLocked()
}

// startCluster makes and starts a cluster; with a CA, it also serves TLS
// with a server certificate that CA signs.
func startCluster(ca *CA, durable bool) (*Cluster, error) {
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin, durable: durable}
	if os.Geteuid() == 0 {
		if c.cred, err = unprivileged(); err != nil {
			return nil, err
		}
	}
	if c.dir, err = os.MkdirTemp(tempParent(c.cred), "pgtest-"); err != nil {
		return nil, fmt.Errorf("while creating the cluster directory: %w", err)
	}
	if c.cred != nil {
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			c.destroy()
			return nil, fmt.Errorf("while giving the cluster directory to uid %d: %w", c.cred.Uid, err)
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"),
		"-D", c.dataDir(), "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--no-locale", "--no-sync")
	initdb.Dir = c.dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		c.destroy()
		return nil, fmt.Errorf("initdb failed: %w\n%s", err, out)
	}
	if ca != nil {
		if err := c.writeServerCert(ca); err != nil {
			c.destroy()
			return nil, err
		}
	}
	srv := &server{cluster: c}
	c.srv = srv
	// A free port can be taken between choosing and binding it: try again.
	for attempt := 0; ; attempt++ {
		if c.port, err = freePort(); err != nil {
			c.destroy()
			return nil, err
		}
		c.mu.Lock()
		err = c.startLocked()
		c.mu.Unlock()
		if err == nil {
			break
		}
		if attempt == 2 {
			c.destroy()
			return nil, err
		}
	}
	srv.adminURL = c.URL()
	return c, nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }
func (c *Cluster) logPath() string { return filepath.Join(c.dir, "postgres.log") }

func (c *Cluster) startLocked() error {
	logf, err := os.OpenFile(c.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("while opening the server log: %w", err)
	}
	defer logf.Close()
	args := []string{
		"-D", c.dataDir(),
		"-p", strconv.Itoa(c.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + c.dir,
		"-c", "max_connections=200",
		"-c", "shared_buffers=32MB",
		"-c", "synchronous_commit=on",
	}
	if c.durable {
		args = append(args, "-c", "fsync=on", "-c", "full_page_writes=on")
	} else {
		// Durability is not under test; speed is welcome.
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	if c.tls {
		args = append(args, "-c", "ssl=on")
	}
	cmd := exec.Command(filepath.Join(c.bin, "postgres"), args...)
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary killed by its timeout takes the server
	// with it (SIGQUIT is an immediate shutdown that also ends backends).
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("while starting postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	c.cmd, c.done = cmd, done

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			c.cmd = nil
			return fmt.Errorf("postgres exited while starting; its log:\n%s", c.logTail())
		default:
		}
		if ping(c.URL()) == nil {
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			c.cmd = nil
			return fmt.Errorf("postgres did not accept connections within 60s; its log:\n%s", c.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ping(u string) error {
	// lib/pq does not give up a connection's start-up at the context's
	// deadline, only at connect_timeout: a port taken by something that
	// accepts and never answers would hold this forever.
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	db, err := sql.Open("postgres", u+sep+"connect_timeout=2")
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

func (c *Cluster) logTail() string {
	b, _ := os.ReadFile(c.logPath())
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// destroy stops the server and removes its directory.
func (c *Cluster) destroy() {
	_ = c.Stop()
	if c.dir != "" {
		_ = os.RemoveAll(c.dir)
	}
}

// findBinaries returns the directory of initdb and postgres: PATH first,
// then the newest /usr/lib/postgresql/<version>/bin (Debian's layout).
func findBinaries() (string, error) {
	return findBinariesIn(os.Getenv("PATH"), "/usr/lib/postgresql/*/bin")
}

func findBinariesIn(path, glob string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if isFile(filepath.Join(dir, "initdb")) && isFile(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob(glob)
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New(howToGet)
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// unprivileged picks the account a root process runs the cluster as.
func unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("running as root and neither a postgres nor a nobody account exists to run initdb as (initdb refuses root); create one (`useradd postgres`) or set " + EnvURL)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("while finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tempParent is the directory the cluster's directory is made in: the usual
// temporary directory, unless the unprivileged account could not reach it
// (a TMPDIR under /root), then /tmp.
func tempParent(cred *syscall.Credential) string {
	dir := os.TempDir()
	if cred == nil {
		return dir
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return dir
		}
	}
}
