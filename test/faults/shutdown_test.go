package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver"
)

// TestSIGTERMUnderLoad sends SIGTERM to a receiver under load and checks
// that no accepted request is cut off. "Accepted" is the receiver's own
// word: every request it handled has a log line with its X-Request-ID and
// status. So every request id in the log must have reached its sender as a
// complete answer with that status, a sender may see a connection error
// only for a request the receiver never handled, every 200 is in the
// database, and the process exits 0 after draining. A slow sender keeps one
// request half-sent across the signal, so there is always one in flight.
func TestSIGTERMUnderLoad(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	r := startReceiver(t, dbURL)
	const senders = 8
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	gen := harness.NewGen("term")
	client := harness.NewClient(senders)

	type req struct {
		id          string
		first, size int64
		a           harness.Answer
	}
	var (
		next, entries atomic.Int64
		termSent      atomic.Bool
		wg            sync.WaitGroup
		mu            sync.Mutex
		all           []req
	)
	record := func(q req) { mu.Lock(); all = append(all, q); mu.Unlock() }
	newReq := func(size int64) req {
		first := entries.Add(size) - size
		return req{id: fmt.Sprintf("term-%d", next.Add(1)), first: first, size: size}
	}
	for s := range senders {
		wg.Go(func() {
			for ctx.Err() == nil {
				q := newReq(int64(1 + s%3*5)) // batches of 1, 6 and 11
				q.a = harness.Post(ctx, client, r.URL, gen.Body(q.first, int(q.size)), q.id)
				record(q)
				// After the signal, senders go on until the receiver is gone.
				if q.a.Err != nil && termSent.Load() {
					return
				}
			}
		})
	}

	// The slow sender, on one connection: a whole request first (so the
	// receiver has accepted the connection: a connection still in the
	// listen backlog at SIGTERM is reset, not cut off), then headers and
	// half a body, a pause long enough for the receiver to read the
	// headers (the request is then in flight), the signal, the rest.
	begin, halfSent := make(chan struct{}), make(chan string, 1)
	var slowErr error
	wg.Go(func() {
		<-begin // once the load is on
		conn, err := net.Dial("tcp", strings.TrimPrefix(strings.SplitN(r.URL, "/v2/", 2)[0], "http://"))
		if err != nil {
			slowErr = err
			close(halfSent)
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		send := func(q req, half bool) (req, bool) {
			b := gen.Body(q.first, int(q.size))
			hr, _ := http.NewRequest(http.MethodPost, r.URL, nil)
			harness.SignRequest(hr, b)
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: receiver\r\nContent-Length: %d\r\nX-Request-ID: %s\r\n", hr.URL.Path, len(b), q.id)
			for k, v := range hr.Header {
				fmt.Fprintf(conn, "%s: %s\r\n", k, v[0])
			}
			fmt.Fprint(conn, "\r\n")
			rest := b
			if half {
				_, _ = conn.Write(b[:len(b)/2])
				rest = b[len(b)/2:]
				time.Sleep(300 * time.Millisecond)
				halfSent <- q.id
				time.Sleep(500 * time.Millisecond)
			}
			if _, err := conn.Write(rest); err != nil {
				q.a.Err = err
				return q, false
			}
			resp, err := http.ReadResponse(br, hr)
			if err != nil {
				q.a.Err = err
				return q, false
			}
			q.a.Status, q.a.RequestID = resp.StatusCode, resp.Header.Get("X-Request-ID")
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return q, true
		}
		q, ok := send(newReq(1), false)
		record(q)
		if !ok {
			slowErr = q.a.Err
			close(halfSent)
			return
		}
		q, _ = send(newReq(1), true)
		record(q)
	})

	waitFor(t, 20*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(all) >= 20 })
	close(begin)
	slowID, ok := <-halfSent
	if !ok {
		t.Fatalf("the slow sender could not connect: %v", slowErr)
	}
	if err := r.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	termSent.Store(true)
	select {
	case <-r.Exited():
	case <-time.After(40 * time.Second):
		t.Fatal("the receiver did not exit within 40s of SIGTERM")
	}
	wg.Wait()
	if err := r.ExitErr(); err != nil {
		t.Errorf("the receiver's exit after SIGTERM: %v", err)
	}

	// What the receiver says it handled, and what it did after the signal.
	handled := map[string]int{}
	shutdownLine, slowLine := -1, -1
	for i, line := range strings.Split(r.Log(), "\n") {
		var l struct {
			Msg       string `json:"msg"`
			RequestID string `json:"request_id"`
			Status    int    `json:"status"`
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			continue
		}
		switch {
		case strings.HasPrefix(l.Msg, "Shutting down"):
			shutdownLine = i
		case l.RequestID != "" && l.Status != 0:
			handled[l.RequestID] = l.Status
			if l.RequestID == slowID {
				slowLine = i
			}
		}
	}
	if shutdownLine < 0 {
		t.Fatal("no shutdown line in the receiver's log")
	}
	if slowLine < shutdownLine {
		t.Errorf("the half-sent request was not handled after the shutdown began (log lines %d, %d)", slowLine, shutdownLine)
	}

	stored := storedIDs(t, openDB(t, dbURL))
	var answered, refused int
	for _, q := range all {
		status, wasHandled := handled[q.id]
		switch {
		case q.a.Err != nil && wasHandled:
			t.Errorf("request %s was handled (status %d) but its sender got no complete answer: %v", q.id, status, q.a.Err)
		case q.a.Err != nil:
			refused++
		case !wasHandled:
			t.Errorf("request %s got %d but the receiver did not log it", q.id, q.a.Status)
		case q.a.Status != status || q.a.Status != 200:
			t.Errorf("request %s: the sender got %d, the receiver logged %d; want 200", q.id, q.a.Status, status)
		default:
			answered++
			for i := range q.size {
				if id := gen.AppointmentID(q.first + i); !stored[id] {
					t.Errorf("appointment %s was answered 200 but is not in the database", id)
				}
			}
		}
		if q.id == slowID && q.a.Status != 200 {
			t.Errorf("the request in flight at SIGTERM got %d (%v), want 200", q.a.Status, q.a.Err)
		}
	}
	if len(handled) != answered {
		t.Errorf("the receiver handled %d requests, its senders got %d answers", len(handled), answered)
	}
	t.Logf("%d requests: %d answered 200, %d not accepted (connection refused or closed before being read); %d handled after the signal",
		len(all), answered, refused, countAfter(r.Log(), shutdownLine))
	logs := r.Log()
	if i, j := strings.Index(logs, "Requests drained"), strings.Index(logs, "Store closed"); i < 0 || j < i {
		t.Error("the log does not show the requests drained before the store closed")
	}
}

func countAfter(log string, line int) int {
	n := 0
	for i, l := range strings.Split(log, "\n") {
		if i > line && strings.Contains(l, `"request_id"`) {
			n++
		}
	}
	return n
}

// TestSIGTERMWhileTheDatabaseIsFrozen: a request in flight when SIGTERM
// comes, whose statement a database that stopped answering holds, still
// gets its answer (503: the outcome is unknown) before the process exits,
// and the process exits within the pod's grace period after the preStop
// sleep (receiver.ShutdownBudget). The grace used to leave 40 s after
// SIGTERM, the drain ended at 30 s, before such a request's 40 s, and the
// exit took 55 s: the kubelet's SIGKILL came first.
func TestSIGTERMWhileTheDatabaseIsFrozen(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	r := startReceiver(t, cluster.NewDatabase(t))
	ctx := context.Background()
	gen := harness.NewGen("frozen")
	client := harness.NewClient(2)
	if a := harness.Post(ctx, client, r.URL, gen.Body(0, 1), "warm"); a.Status != 200 {
		t.Fatalf("before the freeze: %d %v %s", a.Status, a.Err, a.Body)
	}
	thaw := cluster.Freeze(t)
	defer thaw()
	got := make(chan harness.Answer, 1)
	go func() { got <- harness.Post(ctx, client, r.URL, gen.Body(1, 1), "frozen") }()
	time.Sleep(time.Second) // its statement is under way
	if err := r.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	const grace = receiver.ShutdownBudget // after SIGTERM: the grace period less the preStop sleep
	select {
	case a := <-got:
		if a.Err != nil || a.Status != 503 || a.RetryAfter == "" {
			t.Errorf("the request in flight at SIGTERM: %d (%v) Retry-After %q, want a 503 with Retry-After", a.Status, a.Err, a.RetryAfter)
		}
		t.Logf("answered %s after SIGTERM: %d %s", time.Since(start).Round(time.Millisecond), a.Status, a.Body)
	case <-time.After(grace):
		t.Fatal("the request in flight at SIGTERM got no answer within the grace period")
	}
	select {
	case <-r.Exited():
		t.Logf("exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(grace - time.Since(start)):
		t.Fatalf("the receiver did not exit within %s of SIGTERM: the kubelet would kill it", grace)
	}
}
