package receiver

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/auth"
	"github.com/insighthealth/ehr-operator/receiver/sizing"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// heldBody is a request body that sends its first half, then waits for
// release before the rest: the request stays in flight, holding its
// reservation, until then.
type heldBody struct {
	data    []byte
	half    chan struct{} // closed once the first half was read
	release chan struct{}
	off     int
}

func newHeldBody(data []byte) *heldBody {
	return &heldBody{data: data, half: make(chan struct{}), release: make(chan struct{})}
}

func (b *heldBody) Read(p []byte) (int, error) {
	mid := len(b.data) / 2
	if b.off == mid {
		close(b.half)
		<-b.release
	}
	end := len(b.data)
	if b.off < mid {
		end = mid
	}
	if b.off == len(b.data) {
		return 0, io.EOF
	}
	n := copy(p, b.data[b.off:end])
	b.off += n
	return n, nil
}

// lateReader records whether it was read before answered said so, and
// whether it was read to the end.
type lateReader struct {
	r          io.Reader
	answered   func() bool
	early, eof atomic.Bool
}

func (l *lateReader) Read(p []byte) (int, error) {
	if !l.answered() {
		l.early.Store(true)
	}
	n, err := l.r.Read(p)
	if err == io.EOF {
		l.eof.Store(true)
	}
	return n, err
}

// TestOverloaded: while one request holds the whole in-flight budget, the
// next answers 503 with Retry-After before reading its body (then drains
// it), and goes to the delivery log; once the first is answered, its bytes
// are free again.
func TestOverloaded(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), func(c *Config) { c.MaxInflightBodyBytes = c.MaxBodyBytes })
	first := batchOf(entry("held"))
	held := newHeldBody(first)
	done := make(chan *httptest.ResponseRecorder)
	go func() {
		w, _ := ts.post(t, first, func(r *http.Request) { r.Body = io.NopCloser(held) })
		done <- w
	}()
	<-held.half
	// The first (a Content-Length of its own size) leaves less than a
	// streamed body reserves, the limit.
	second := batchOf(entry("refused"))
	w := httptest.NewRecorder()
	unread := &lateReader{r: bytes.NewReader(second), answered: func() bool { return w.Flushed }}
	id := t.Name() + "/refused"
	req := httptest.NewRequest(http.MethodPost, syncURL, nil)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", validConfig().APIKey)
	req.Header.Set("X-Webhook-Signature", auth.Sign(validConfig().Secret, second))
	req.Header.Set(headerID, id)
	streamed(unread)(req)
	ts.h.ServeHTTP(w, req)
	ts.expect(t, w, id, second, want{status: 503,
		body:    `{"message":"the receiver is busy; the batch was not stored, retry later","success":false,"code":503}`,
		headers: map[string]string{"Retry-After": "1"}, outcome: store.OutcomeOverloaded})
	if unread.early.Load() {
		t.Error("the refused body was read before the answer went out")
	}
	if !unread.eof.Load() {
		t.Error("the refused body was not drained after the answer")
	}
	if got, want := ts.srv.inflight.used.Load(), max(int64(len(first)), min(minReserve, ts.srv.cfg.MaxBodyBytes)); got != want {
		t.Errorf("%d bytes reserved while the first request reads its body, want %d (its size, at least minReserve or the body limit)", got, want)
	}
	close(held.release)
	if w := <-done; w.Code != 200 {
		t.Fatalf("the request in flight: %d %s", w.Code, w.Body)
	}
	if got := ts.srv.inflight.used.Load(); got != 0 {
		t.Errorf("%d bytes still reserved after every request was answered", got)
	}
	// A streamed body gives back what it did not use, then the rest.
	w, _ = ts.post(t, second, streamed(bytes.NewReader(second)))
	if w.Code != 200 {
		t.Errorf("after the first was answered: %d %s", w.Code, w.Body)
	}
	if got := ts.srv.inflight.used.Load(); got != 0 {
		t.Errorf("%d bytes still reserved after a streamed body", got)
	}
	metrics := httptest.NewRecorder()
	ts.srv.MetricsHandler().ServeHTTP(metrics, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range []string{
		`ehr_receiver_overloaded_total{ehr="nexus"} 1`,
		`ehr_receiver_inflight_body_bytes{ehr="nexus"} 0`,
		`ehr_receiver_inflight_body_bytes_limit{ehr="nexus"} 2000`,
	} {
		if !strings.Contains(metrics.Body.String(), line+"\n") {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// TestInflightLimitDefault: without a limit of its own, a receiver may hold
// sizing's default, or one body of the largest size when that is more.
func TestInflightLimitDefault(t *testing.T) {
	c := validConfig()
	if got := c.InflightLimit(); got != sizing.DefaultInflight {
		t.Errorf("default %d, want %d", got, sizing.DefaultInflight)
	}
	c.MaxBodyBytes = 64 << 20
	if got := c.InflightLimit(); got != 64<<20 {
		t.Errorf("with 64 MiB bodies: %d, want 64 MiB", got)
	}
	c.MaxInflightBodyBytes = 100 << 20
	if got := c.InflightLimit(); got != 100<<20 {
		t.Errorf("set to 100 MiB: %d", got)
	}
}

// TestReadSized: the buffer grows with the bytes that arrive, never past
// Content-Length, and the bytes are exactly the body's.
func TestReadSized(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 100_000) // 1.6 MB
	for _, tc := range []struct {
		name          string
		r             io.Reader
		contentLength int64
		want          []byte
		maxCap        int
	}{
		{"announced and sent", bytes.NewReader(body), int64(len(body)), body, len(body) + bytes.MinRead},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(body[:100_000])), 100_000, body[:100_000], 100_000 + bytes.MinRead},
		{"small", bytes.NewReader(body[:10]), 10, body[:10], 10 + bytes.MinRead},
		{"announced, nothing sent", bytes.NewReader(nil), 4 << 20, []byte{}, firstBodyBuffer + bytes.MinRead},
		{"chunked", bytes.NewReader(body), -1, body, 2 * len(body)},
		{"empty", bytes.NewReader(nil), 0, []byte{}, bytes.MinRead},
	} {
		got, err := readSized(tc.r, tc.contentLength)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %d bytes, %v; want %d bytes", tc.name, len(got), err, len(tc.want))
		}
		if cap(got) > tc.maxCap {
			t.Errorf("%s: buffer of %d bytes, want at most %d", tc.name, cap(got), tc.maxCap)
		}
	}
	if _, err := readSized(iotest.ErrReader(io.ErrUnexpectedEOF), 100); err != io.ErrUnexpectedEOF {
		t.Errorf("a failing reader: %v", err)
	}
}

// TestAnswerAfterTheBodyKeepsItsLength: an answer given once the body was
// read (stored, or refused by validation) goes out as Go's server sends it
// by itself, with its Content-Length in one write. Only an answer given
// before the body was read is flushed early to drain the rest, which sends
// it chunked.
func TestAnswerAfterTheBodyKeepsItsLength(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	srv := httptest.NewServer(ts.h)
	defer srv.Close()
	for _, tc := range []struct {
		name   string
		body   []byte
		status int
	}{
		{"stored", batchOf(entry("a")), http.StatusOK},
		{"rejected by validation", batchOf(entry("r1"), invalidEntry("r2")), http.StatusUnprocessableEntity},
	} {
		req, err := http.NewRequest(http.MethodPost, srv.URL+syncURL, bytes.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-API-Key", validConfig().APIKey)
		req.Header.Set("X-Webhook-Signature", auth.Sign(validConfig().Secret, tc.body))
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d %s, want %d", tc.name, resp.StatusCode, got, tc.status)
		}
		if resp.ContentLength != int64(len(got)) || len(resp.TransferEncoding) > 0 {
			t.Errorf("%s: sent with Content-Length %d, Transfer-Encoding %v; want a Content-Length of %d (nothing to drain, no early flush)",
				tc.name, resp.ContentLength, resp.TransferEncoding, len(got))
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestDrainStopsAtDeclaredHugeBodies: a 413 for a Content-Length of up to
// discardLimit bodies drains the body after the answer; one declaring
// more is not read at all, since the connection is reset after
// discardLimit bodies anyway: reading them first would only spend the
// bandwidth and hold the connection for up to the read timeout.
func TestDrainStopsAtDeclaredHugeBodies(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	limit := ts.srv.cfg.MaxBodyBytes
	for _, tc := range []struct {
		size, read int64
	}{
		{discardLimit * limit, discardLimit * limit},
		{discardLimit*limit + 1, 0},
		{100 * limit, 0},
	} {
		body := bytes.Repeat([]byte(" "), int(tc.size))
		r := &countingReader{r: bytes.NewReader(body)}
		w, _ := ts.post(t, body, badSignature(), func(req *http.Request) { req.Body = io.NopCloser(r) })
		if w.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("Content-Length %d: status %d, want 413", tc.size, w.Code)
		}
		if got := r.n.Load(); got != tc.read {
			t.Errorf("Content-Length %d: %d bytes drained, want %d", tc.size, got, tc.read)
		}
	}
}

// TestDrainHoldsNoBudget: a streamed body cut at the limit (413) gives its
// reservation back before the rest of it is drained: the bytes read are
// dropped, and a sender slow to send the rest must not keep other
// requests out of the in-flight budget meanwhile.
func TestDrainHoldsNoBudget(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	// The first half is past the limit: readBody stops in it, the drain
	// waits in the middle.
	held := newHeldBody(bytes.Repeat([]byte(" "), int(4*ts.srv.cfg.MaxBodyBytes)))
	done := make(chan *httptest.ResponseRecorder)
	go func() {
		w, _ := ts.post(t, nil, streamed(held), badSignature())
		done <- w
	}()
	<-held.half
	if got := ts.srv.inflight.used.Load(); got != 0 {
		t.Errorf("%d bytes reserved while the refused body is drained, want 0", got)
	}
	close(held.release)
	if w := <-done; w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("status %d, want 413", w.Code)
	}
}

// TestEarlyAnswerEndsAtOnce: an early answer is whole once it is flushed,
// before the drain, for a sender that waits for a 100 Continue before its
// body (Expect: 100-continue, which an early answer never sends, so it
// has no body to drain) and for one that stopped sending its body (it read
// the answer while writing, as some clients do, and gave up): neither
// waits for the read timeout to end the drain.
func TestEarlyAnswerEndsAtOnce(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	srv := startRaw(t, ts.h, nil)
	for name, rest := range map[string]string{
		"Expect: 100-continue": "Expect: 100-continue\r\nContent-Length: 1500\r\n\r\n",
		"body cut short":       "Content-Length: 1500\r\n\r\n" + strings.Repeat(" ", 100),
	} {
		t.Run(name, func(t *testing.T) {
			c := dialRaw(t, srv)
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: wrong\r\n%s", syncURL, rest); err != nil {
				t.Fatal(err)
			}
			a := readAnswer(t, bufio.NewReader(c))
			if a.status != http.StatusUnauthorized || a.contentLength != int64(len(a.body)) {
				t.Errorf("status %d, Content-Length %d, %s; want 401 with the body's length", a.status, a.contentLength, a.body)
			}
		})
	}
}

// TestChunkedBodyPastTheDrainClosesTheConnection: a chunked body (no
// Content-Length) answered before it was read ends its connection after
// the answer, saying so (Connection: close). Kept open, the server would
// read the rest of a body longer than the drain after the handler, and
// net/http then panics ("invalid concurrent Body.Read call") and resets
// the connection under the sender's next request. A chunked body that was
// read keeps its connection.
func TestChunkedBodyPastTheDrainClosesTheConnection(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	serverLog := &syncBuffer{}
	srv := startRaw(t, ts.h, log.New(serverLog, "", 0))
	limit := ts.srv.cfg.MaxBodyBytes
	for _, tc := range []struct {
		name, path, apiKey string
		size               int64
		close              bool
	}{
		{"unknown path, past the drain", "/nope", "wrong", discardLimit*limit + 1000, true},
		{"wrong key, past the drain", syncURL, "wrong", discardLimit*limit + 1000, true},
		// Within it too: whether a chunked body ends within the drain is
		// known only once read.
		{"wrong key, within the drain", syncURL, "wrong", limit, true},
		{"wrong signature: the body was read", syncURL, validConfig().APIKey, limit / 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, srv)
			go func() { // write while the answer is read, as senders that write first do
				w := bufio.NewWriter(c)
				fmt.Fprintf(w, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: %s\r\nTransfer-Encoding: chunked\r\n\r\n", tc.path, tc.apiKey)
				fmt.Fprintf(w, "%x\r\n%s\r\n0\r\n\r\n", tc.size, bytes.Repeat([]byte(" "), int(tc.size)))
				fmt.Fprintf(w, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
				_ = w.Flush()
			}()
			r := bufio.NewReader(c)
			if a := readAnswer(t, r); a.close != tc.close {
				t.Errorf("answer %d says Connection: close = %v, want %v", a.status, a.close, tc.close)
			}
			if !tc.close {
				next, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatalf("the next request on the connection: %v", err)
				}
				next.Body.Close()
			}
		})
	}
	time.Sleep(100 * time.Millisecond) // the server logs a panic after the handler
	if got := serverLog.String(); strings.Contains(got, "panic") {
		t.Errorf("the server panicked:\n%s", got)
	}
}

// startRaw serves h on loopback with a read timeout of a minute, as the
// receiver's server has (30 s), and errorLog as the server's own log.
func startRaw(t *testing.T, h http.Handler, errorLog *log.Logger) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ReadTimeout = time.Minute
	srv.Config.ErrorLog = errorLog
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// rawAnswer is what a test writing HTTP by hand reads back.
type rawAnswer struct {
	status        int
	contentLength int64
	close         bool // Connection: close
	body          []byte
}

// readAnswer reads one answer from r, body and all; the body must end
// (an early answer's must not wait for the drain).
func readAnswer(t *testing.T, r *bufio.Reader) rawAnswer {
	t.Helper()
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the answer's body (it does not end until the drain does): %v", err)
	}
	return rawAnswer{status: resp.StatusCode, contentLength: resp.ContentLength, close: resp.Close, body: body}
}

// dialRaw opens a TCP connection to srv for a test that writes HTTP by
// hand; every read and write on it fails after 10 s.
func dialRaw(t *testing.T, srv *httptest.Server) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// TestDrainCutShortEndsTheConnection: a body with a Content-Length that
// stops arriving while an early answer drains it (the read timeout ends
// the drain) ends its connection. Kept open, with full duplex on, net/http
// would read the rest of that body as the next request.
func TestDrainCutShortEndsTheConnection(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	srv := httptest.NewUnstartedServer(ts.h)
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Config.IdleTimeout = time.Minute // not the read timeout's
	srv.Start()
	t.Cleanup(srv.Close)
	for name, apiKey := range map[string]string{
		"wrong key (401 before the body)": "wrong",
		"body cut by the timeout (400)":   validConfig().APIKey,
	} {
		t.Run(name, func(t *testing.T) {
			c := dialRaw(t, srv)
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: %s\r\nContent-Length: 1000\r\n\r\n{}", syncURL, apiKey); err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(c)
			readAnswer(t, r)
			time.Sleep(600 * time.Millisecond) // past the read timeout
			// The rest of the first body, which happens to read as a request.
			_, _ = fmt.Fprintf(c, "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
			if next, err := http.ReadResponse(r, nil); err == nil {
				next.Body.Close()
				t.Errorf("the rest of a body cut short was answered as a request: %d", next.StatusCode)
			}
		})
	}
}
