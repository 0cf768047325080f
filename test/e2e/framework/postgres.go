package framework

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/lib/pq" // the driver the receivers use too
)

// Postgres is a throwaway PostgreSQL server listening on the node address
// only, so pods reach it at NodeIP:Port and nothing outside this machine
// can. It runs as the unprivileged user "nobody" (initdb refuses root), in
// its own session so it outlives `make dev`; its PID sits with the
// cluster's, and hack/local-cluster/down.sh stops it.
type Postgres struct {
	Host     string
	Port     int
	Password string // of the "postgres" superuser
	pidFile  string
	dir      string
}

// nobody is the unprivileged user the server runs as.
const nobody = 65534

type pgConn struct {
	Port     int    `json:"port"`
	Password string `json:"password"`
}

// StartPostgres starts the server, or returns the one already running for
// this cluster (left by `make dev`).
func (e *Env) StartPostgres(ctx context.Context) (*Postgres, error) {
	vars, err := e.envVars(ctx, "POD_CIDR")
	if err != nil {
		return nil, err
	}
	p := &Postgres{Host: e.NodeIP, pidFile: filepath.Join(e.State, "pids", "postgres.pid"), dir: e.PGDir}
	if p.running() {
		var c pgConn
		if b, err := os.ReadFile(filepath.Join(p.dir, "conn.json")); err == nil && json.Unmarshal(b, &c) == nil {
			p.Port, p.Password = c.Port, c.Password
			if err := p.ping(ctx); err == nil {
				return p, nil
			}
		}
		p.Stop()
	}
	bin, err := pgBin()
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(p.dir); err != nil {
		return nil, fmt.Errorf("while clearing %s: %w", p.dir, err)
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, fmt.Errorf("while creating %s: %w", p.dir, err)
	}
	if err := os.Chown(p.dir, nobody, nobody); err != nil {
		return nil, fmt.Errorf("while giving %s to nobody: %w", p.dir, err)
	}
	cred := &syscall.Credential{Uid: nobody, Gid: nobody}
	p.Password = randomHex(16)
	pwfile := filepath.Join(p.dir, "pwfile")
	if err := writeOwned(pwfile, p.Password+"\n", nobody); err != nil {
		return nil, err
	}
	data := filepath.Join(p.dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres",
		"--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
		"--encoding=UTF8", "--no-locale", "--no-sync")
	initdb.Dir = p.dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb failed: %w\n%s", err, out)
	}
	_ = os.Remove(pwfile)
	// Password logins from the host (node address) and from pods only.
	hba := fmt.Sprintf("local all all trust\nhost all all %s/32 scram-sha-256\nhost all all %s scram-sha-256\n", e.NodeIP, vars[0])
	if err := writeOwned(filepath.Join(data, "pg_hba.conf"), hba, nobody); err != nil {
		return nil, err
	}
	if p.Port, err = freePort(e.NodeIP); err != nil {
		return nil, err
	}
	if err := p.launch(bin); err != nil {
		return nil, err
	}
	conn, _ := json.Marshal(pgConn{Port: p.Port, Password: p.Password})
	if err := os.WriteFile(filepath.Join(p.dir, "conn.json"), conn, 0o600); err != nil {
		return nil, fmt.Errorf("while recording the PostgreSQL settings: %w", err)
	}
	if err := Eventually(ctx, "PostgreSQL to accept connections", 30*time.Second, p.ping); err != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
		return nil, fmt.Errorf("%w\n%s", err, log)
	}
	return p, nil
}

// launch starts the server on the data directory and port already set up.
// A throwaway server: durability settings off for speed (a fast shutdown
// still writes every committed transaction out).
func (p *Postgres) launch(bin string) error {
	logf, err := os.OpenFile(filepath.Join(p.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("while opening the PostgreSQL log: %w", err)
	}
	defer logf.Close()
	srv := exec.Command(filepath.Join(bin, "postgres"), "-D", filepath.Join(p.dir, "data"), "-p", strconv.Itoa(p.Port),
		"-c", "listen_addresses="+p.Host, "-c", "unix_socket_directories="+p.dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200")
	srv.Dir = p.dir
	srv.Stdout, srv.Stderr = logf, logf
	srv.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}, Setsid: true}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("while starting postgres: %w", err)
	}
	go func() { _ = srv.Wait() }() // reap it if it exits while we run
	if err := os.WriteFile(p.pidFile, []byte(strconv.Itoa(srv.Process.Pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("while recording the PostgreSQL PID: %w", err)
	}
	return nil
}

// Pause shuts the server down (fast shutdown: clients are disconnected,
// committed data is kept) for an outage; Resume starts it again on the same
// port and data.
func (p *Postgres) Pause() error {
	pid, ok := p.pid()
	if !ok {
		return errors.New("PostgreSQL is not running")
	}
	if err := p.shutdown(pid); err != nil {
		return err
	}
	return os.Remove(p.pidFile)
}

// Resume starts the server Pause stopped and waits until it accepts
// connections.
func (p *Postgres) Resume(ctx context.Context) error {
	bin, err := pgBin()
	if err != nil {
		return err
	}
	if err := p.launch(bin); err != nil {
		return err
	}
	if err := Eventually(ctx, "PostgreSQL to accept connections again", 30*time.Second, p.ping); err != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
		return fmt.Errorf("%w\n%s", err, log)
	}
	return nil
}

// AdminURL is the superuser URL of the "postgres" database.
func (p *Postgres) AdminURL() string { return p.URL("postgres", "postgres", p.Password) }

// URL of database db as user with password, at the node address.
func (p *Postgres) URL(user, db, password string) string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", user, password, p.Host, p.Port, db)
}

// CreateDatabase makes a login role and a database it owns (so the
// receivers can run the migrations), both named name, and returns its URL.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	db, err := sql.Open("postgres", p.AdminURL())
	if err != nil {
		return "", fmt.Errorf("while opening the admin connection: %w", err)
	}
	defer db.Close()
	pw := randomHex(16)
	for _, q := range []string{
		fmt.Sprintf(`DROP DATABASE IF EXISTS %q WITH (FORCE)`, name),
		fmt.Sprintf(`DROP ROLE IF EXISTS %q`, name),
		fmt.Sprintf(`CREATE ROLE %q LOGIN PASSWORD '%s'`, name, pw),
		fmt.Sprintf(`CREATE DATABASE %q OWNER %q`, name, name),
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return "", fmt.Errorf("while creating database %s: %w", name, err)
		}
	}
	return p.URL(name, name, pw), nil
}

// Stop shuts the server down (fast shutdown) and removes its directory.
func (p *Postgres) Stop() {
	if pid, ok := p.pid(); ok {
		_ = p.shutdown(pid)
	}
	_ = os.Remove(p.pidFile)
	_ = os.RemoveAll(p.dir)
}

// shutdown asks for a fast shutdown and waits up to 30 s for it, then kills.
func (p *Postgres) shutdown(pid int) error {
	_ = syscall.Kill(pid, syscall.SIGINT)
	for i := 0; i < 300; i++ {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return fmt.Errorf("PostgreSQL (pid %d) did not stop within 30s and was killed", pid)
}

func (p *Postgres) pid() (int, bool) {
	b, err := os.ReadFile(p.pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

func (p *Postgres) running() bool {
	pid, ok := p.pid()
	if !ok || syscall.Kill(pid, 0) != nil {
		return false
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.Contains(string(cmdline), "postgres")
}

func (p *Postgres) ping(ctx context.Context) error {
	db, err := sql.Open("postgres", p.AdminURL())
	if err != nil {
		return err
	}
	defer db.Close()
	return db.PingContext(ctx)
}

func pgBin() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", errors.New("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install -y postgresql (or set PG_BIN)")
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("while finding a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writeOwned(path, content string, uid int) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("while writing %s: %w", path, err)
	}
	if err := os.Chown(path, uid, uid); err != nil {
		return fmt.Errorf("while giving %s to uid %d: %w", path, uid, err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NetworkPolicySets are the chart values that let the receivers' NetworkPolicy
// reach this server, and only it: its address and port (for
// Env.ChartSets).
func (p *Postgres) NetworkPolicySets() []string {
	return []string{
		"receiverNetworkPolicy.database.to[0].ipBlock.cidr=" + p.Host + "/32",
		"receiverNetworkPolicy.database.ports[0].port=" + strconv.Itoa(p.Port),
		"receiverNetworkPolicy.database.ports[0].protocol=TCP",
	}
}
