package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/insighthealth/ehr-operator/receiver/auth"
)

// Credentials of the receivers StartReceiver starts (throwaway values).
const (
	EHR    = "bench"
	APIKey = "bench-api-key-at-least-thirty-two-bytes"
	Secret = "bench-webhook-secret-at-least-thirty-two-bytes"
)

// Credentials are a receiver's EHR and the contents of the files of its
// credentials directory (the receiver drops trailing newlines);
// PreviousAPIKey and PreviousSecret are written only when set.
type Credentials struct {
	EHR, APIKey, Secret, PreviousAPIKey, PreviousSecret string
}

// Receiver is a running `ehr-receiver receiver` process.
type Receiver struct {
	Cmd *exec.Cmd
	// BaseURL is the webhook server (http://127.0.0.1:port); URL its sync
	// endpoint; MetricsURL the base of /readyz and /metrics.
	BaseURL, URL, MetricsURL string
	// LogPath holds the process's output (JSON lines without patient data).
	LogPath string
	dir     string
	exited  chan struct{}
	exitErr error
	kept    *string // the output, kept when the directory is removed
}

// StartReceiver runs binary as a receiver of EHR on dbURL, listening on
// free loopback ports, and waits until /readyz answers 200 (or 503 saying
// that its database refuses its settings, for the tests of that). Extra flags
// come last, so they override the defaults (a rate limit high enough not to
// interfere).
func StartReceiver(binary, dbURL string, extra ...string) (*Receiver, error) {
	return StartReceiverAs(binary, dbURL, Credentials{EHR: EHR, APIKey: APIKey + "\n", Secret: Secret + "\n"}, extra...)
}

// StartReceiverAs is StartReceiver with other credentials. The database
// URL reaches the process through DATABASE_URL.
func StartReceiverAs(binary, dbURL string, c Credentials, extra ...string) (*Receiver, error) {
	// A port free a moment ago may be taken before the receiver binds it
	// (by another test's connection, as its source port): start again on
	// others.
	for attempt := 1; ; attempt++ {
		r, err := startReceiver(binary, dbURL, c, extra...)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return r, err
		}
	}
}

func startReceiver(binary, dbURL string, c Credentials, extra ...string) (*Receiver, error) {
	dir, err := os.MkdirTemp("", "ehr-receiver-")
	if err != nil {
		return nil, fmt.Errorf("while creating the receiver directory: %w", err)
	}
	files := map[string]string{"api-key": c.APIKey, "webhook-secret": c.Secret}
	if c.PreviousSecret != "" {
		files["webhook-secret-previous"] = c.PreviousSecret
	}
	if c.PreviousAPIKey != "" {
		files["api-key-previous"] = c.PreviousAPIKey
	}
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o600); err != nil {
			return nil, fmt.Errorf("while writing %s: %w", name, err)
		}
	}
	addrs, err := FreeAddrs(2)
	if err != nil {
		return nil, err
	}
	listen, metricsListen := addrs[0], addrs[1]
	logPath := filepath.Join(dir, "receiver.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("while creating the receiver log: %w", err)
	}
	defer logf.Close()
	args := append([]string{"receiver", "--ehr", c.EHR, "--listen", listen, "--metrics-listen", metricsListen,
		"--credentials-dir", dir, "--requests-per-second", "1000000", "--burst", "1000000"}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "DATABASE_URL=" + dbURL}
	cmd.Stdout, cmd.Stderr = logf, logf
	// The receiver dies with us if we are killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("while starting the receiver: %w", err)
	}
	r := &Receiver{Cmd: cmd, BaseURL: "http://" + listen, URL: "http://" + listen + "/v2/webhooks/" + c.EHR + "/sync-appointments",
		MetricsURL: "http://" + metricsListen, LogPath: logPath, dir: dir, exited: make(chan struct{})}
	go func() { r.exitErr = cmd.Wait(); close(r.exited) }()

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-r.exited:
			err := fmt.Errorf("the receiver exited at start (%v); its log:\n%s", r.exitErr, r.LogTail())
			r.removeDir() // its credentials; a start retried makes another
			return nil, err
		default:
		}
		if resp, err := http.Get(r.MetricsURL + "/readyz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// Serving: ready, or kept out of its Service because its
			// database refuses its settings, which a test may want.
			if resp.StatusCode == http.StatusOK || bytes.HasPrefix(b, []byte("the database refuses")) {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			r.Kill()
			return nil, fmt.Errorf("the receiver was not ready within 60s; its log:\n%s", r.LogTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Exited is closed when the process has ended; ExitErr is then its exit.
func (r *Receiver) Exited() <-chan struct{} { return r.exited }

// ExitErr is the process's exit error, once Exited is closed.
func (r *Receiver) ExitErr() error { return r.exitErr }

// Alive is an error unless the receiver still runs as process pid: it has
// neither exited nor been restarted.
func (r *Receiver) Alive(pid int) error {
	select {
	case <-r.exited:
		return fmt.Errorf("the receiver exited: %v", r.exitErr)
	default:
	}
	if r.Cmd.Process.Pid != pid {
		return errors.New("the receiver was restarted")
	}
	return nil
}

// Stop sends SIGTERM, waits up to 45s for the exit (then kills), and
// removes the receiver's directory. It returns the exit error; once the
// process has exited, it only returns that.
func (r *Receiver) Stop() error {
	select {
	case <-r.exited:
		r.removeDir()
		return r.exitErr
	default:
	}
	_ = r.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(45 * time.Second):
		_ = r.Cmd.Process.Kill()
		<-r.exited
	}
	r.removeDir()
	return r.exitErr
}

// Kill ends the process at once and removes its directory.
func (r *Receiver) Kill() {
	_ = r.Cmd.Process.Kill()
	<-r.exited
	r.removeDir()
}

// removeDir removes the credentials and the log file, keeping the output.
func (r *Receiver) removeDir() {
	if r.kept == nil {
		out := r.Log()
		r.kept = &out
	}
	_ = os.RemoveAll(r.dir)
}

// Log is the process's output so far (all of it once stopped).
func (r *Receiver) Log() string {
	if r.kept != nil {
		return *r.kept
	}
	b, _ := os.ReadFile(r.LogPath)
	return string(b)
}

// LogTail is the end of the process's output, for error messages.
func (r *Receiver) LogTail() string {
	s := r.Log()
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return s
}

// ProcStatus reads a kB field of /proc/<pid>/status (VmHWM is the peak
// resident set, VmRSS the current one) and returns it in MiB.
func ProcStatus(pid int, field string) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("while reading the process status: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
		if err != nil {
			return 0, fmt.Errorf("while parsing %s: %w", field, err)
		}
		return kb / 1024, nil
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// FreeAddrs is n distinct 127.0.0.1 addresses (loopback only) whose ports
// were free a moment ago. Each is held open until all are chosen: the
// kernel may hand out a port just closed again, and a receiver once got
// the same port for both its listeners.
func FreeAddrs(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("while finding a free port: %w", err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// NewClient is an HTTP client keeping up to conns connections to one
// receiver alive.
func NewClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: conns, MaxIdleConnsPerHost: conns, IdleConnTimeout: 90 * time.Second,
		},
	}
}

// Answer is what a signed POST came to.
type Answer struct {
	Status     int
	RetryAfter string
	RequestID  string
	Body       []byte
	// Err is a transport error (no complete answer).
	Err error
}

// Post signs body and sends it to url with requestID (may be empty).
func Post(ctx context.Context, c *http.Client, url string, body []byte, requestID string) Answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Answer{Err: err}
	}
	SignRequest(req, body)
	if requestID != "" {
		req.Header.Set("X-Request-ID", requestID)
	}
	resp, err := c.Do(req)
	if err != nil {
		return Answer{Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	a := Answer{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"),
		RequestID: resp.Header.Get("X-Request-ID"), Body: b}
	if err != nil {
		a.Err = fmt.Errorf("while reading the answer: %w", err)
	} else if len(b) == 0 || b[len(b)-1] != '}' {
		a.Err = errors.New("the answer's body is incomplete")
	}
	return a
}

// Get GETs url and returns the answer's status and body.
func Get(url string) (status int, body string, err error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// SignRequest sets the headers a sender sets: JSON, the API key and the
// body's signature.
func SignRequest(req *http.Request, body []byte) {
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", APIKey)
	req.Header.Set("X-Webhook-Signature", auth.Sign([]byte(Secret), body))
}
