package faults

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/sizing"
)

// TestMemoryBoundedUnderLargeBodies gives a receiver a 128 MiB memory
// limit the way the operator does (MEMORY_LIMIT, everything else derived
// from it) and has 200 senders post 4 MiB bodies at once, three rounds each:
// the process's peak resident set stays below the limit, every answer is
// 200 or 503 with Retry-After, and every appointment of every 200 is in the
// database.
func TestMemoryBoundedUnderLargeBodies(t *testing.T) {
	const (
		memoryLimit = 128 << 20
		maxBody     = 4 << 20
		senders     = 200
		rounds      = 3
	)
	dbURL := pgtest.NewDatabase(t)
	// The operator's largest batch size, so that 4 MiB bodies are batches.
	r := startReceiver(t, dbURL, "--memory-limit", strconv.Itoa(memoryLimit), "--max-batch-size", "10000")
	pid := r.Cmd.Process.Pid
	limits := logLine(t, r, `the "Memory limits" line`, func(l map[string]any) bool { return l["msg"] == "Memory limits" })
	t.Logf("receiver limits: memory %.0f, Go memory limit %.0f, in-flight bodies %.0f bytes",
		limits["memory_limit"], limits["go_memory_limit"], limits["max_inflight_body_bytes"])
	if limits["go_memory_limit"] != float64(sizing.GoMemoryLimit(memoryLimit)) ||
		limits["max_inflight_body_bytes"] != float64(sizing.InflightBudget(memoryLimit)) {
		t.Fatalf("the receiver did not derive its limits from MEMORY_LIMIT: %v", limits)
	}

	gen := harness.NewGen("mem")
	client := harness.NewClient(senders)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type result struct {
		body *bigBody
		a    harness.Answer
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	start := make(chan struct{})
	for s := range senders {
		wg.Go(func() {
			<-start
			for round := range rounds {
				b := newBigBody(gen, int64(s)*1_000_000+int64(round)*100_000, maxBody)
				a := b.post(ctx, client, r.URL)
				mu.Lock()
				results = append(results, result{b, a})
				mu.Unlock()
				if a.Status != http.StatusServiceUnavailable {
					continue
				}
				// As a sender should: wait Retry-After.
				ra, _ := strconv.Atoi(a.RetryAfter)
				time.Sleep(time.Duration(max(ra, 1)) * time.Second)
			}
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(began)
	peak, err := harness.ProcStatus(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}

	stored := storedIDs(t, openDB(t, dbURL))
	var ok, busy, bytesOK int
	for _, res := range results {
		a := res.a
		switch {
		case a.Err != nil:
			t.Errorf("no answer: %v", a.Err)
		case a.Status == 200:
			ok++
			bytesOK += int(res.body.length)
			for i := range int64(res.body.n) {
				if id := gen.AppointmentID(res.body.first + i); !stored[id] {
					t.Errorf("appointment %s was answered 200 but is not in the database", id)
					break
				}
			}
		case a.Status == 503:
			busy++
			if ra, err := strconv.Atoi(a.RetryAfter); err != nil || ra < 1 {
				t.Errorf("503 with Retry-After %q, want a positive number of seconds", a.RetryAfter)
			}
		default:
			t.Errorf("answer %d (%s), want 200 or 503", a.Status, a.Body)
		}
	}
	t.Logf("%d senders × %d bodies of 4 MiB in %s: %d answered 200 (%d MiB stored, %d appointments), %d answered 503; "+
		"overloaded_total %v; peak RSS (VmHWM) %.1f MiB of a %d MiB limit",
		senders, rounds, elapsed.Round(time.Millisecond), ok, bytesOK>>20, len(stored), busy,
		metric(t, r, "ehr_receiver_overloaded_total"), peak, memoryLimit>>20)
	if peak >= memoryLimit>>20 {
		t.Errorf("peak RSS %.1f MiB, not below the %d MiB limit", peak, memoryLimit>>20)
	}
	if ok == 0 || busy == 0 {
		t.Errorf("%d answered 200 and %d 503: the test did not fill the in-flight budget and serve through it", ok, busy)
	}
}

// bigBody is a batch of gen's entries first … first+n-1, as many as fit in
// limit bytes, made as it is sent: 200 senders of 4 MiB bodies would
// otherwise hold 800 MiB in the test.
type bigBody struct {
	gen       harness.Gen
	first     int64
	n         int
	length    int64
	signature string
}

const bodyOpen, bodyClose = `{"appointments":[`, `]}`

func newBigBody(gen harness.Gen, first int64, limit int) *bigBody {
	b := &bigBody{gen: gen, first: first}
	size := len(bodyOpen) + len(bodyClose)
	var scratch []byte
	for {
		scratch = gen.AppendEntry(scratch[:0], first+int64(b.n))
		add := len(scratch)
		if b.n > 0 {
			add++ // the comma
		}
		if size+add > limit {
			break
		}
		size += add
		b.n++
	}
	// The signature is the documented HMAC of the exact bytes sent.
	m := hmac.New(sha256.New, []byte(harness.Secret))
	n, _ := io.Copy(m, b.reader())
	b.length = n
	b.signature = "sha256=" + hex.EncodeToString(m.Sum(nil))
	return b
}

func (b *bigBody) reader() io.Reader { return &bodyReader{b: b} }

func (b *bigBody) post(ctx context.Context, c *http.Client, url string) harness.Answer {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, b.reader())
	if err != nil {
		return harness.Answer{Err: err}
	}
	req.ContentLength = b.length
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", harness.APIKey)
	req.Header.Set("X-Webhook-Signature", b.signature)
	resp, err := c.Do(req)
	if err != nil {
		return harness.Answer{Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return harness.Answer{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"), Body: body, Err: err}
}

// bodyReader makes the body a few dozen entries at a time.
type bodyReader struct {
	b      *bigBody
	next   int // the next entry to make
	closed bool
	buf    []byte
	off    int
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.off == len(r.buf) {
		if r.closed {
			return 0, io.EOF
		}
		r.buf, r.off = r.buf[:0], 0
		if r.next == 0 {
			r.buf = append(r.buf, bodyOpen...)
		}
		for k := 0; k < 64 && r.next < r.b.n; k++ {
			if r.next > 0 {
				r.buf = append(r.buf, ',')
			}
			r.buf = r.b.gen.AppendEntry(r.buf, r.b.first+int64(r.next))
			r.next++
		}
		if r.next == r.b.n {
			r.buf = append(r.buf, bodyClose...)
			r.closed = true
		}
	}
	n := copy(p, r.buf[r.off:])
	r.off += n
	return n, nil
}

// logLine is the first JSON line of the receiver's log that match accepts;
// what names it in the failure.
func logLine(t *testing.T, r *harness.Receiver, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(r.Log()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && match(line) {
			return line
		}
	}
	t.Fatalf("%s is not in the receiver's log:\n%s", what, r.LogTail())
	return nil
}

// metric is the value of the receiver's series name on /metrics: the sum
// of its labelled series, or the one series name names with its labels.
func metric(t *testing.T, r *harness.Receiver, name string) float64 {
	t.Helper()
	resp, err := http.Get(r.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var sum float64
	found := false
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name); !ok || rest == "" || rest[0] != '{' && rest[0] != ' ' {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		t.Fatalf("no %s on /metrics", name)
	}
	return sum
}

// TestMemoryBoundedUnderInvalidBatches: batches whose every entry is
// invalid, from many senders at once, keep a receiver under its memory
// limit. An entry of a few bytes has a dozen errors, and listing every one
// made a 50 KB body cost over a megabyte (an audit took a 128 MiB receiver
// to 187 MiB with 150 such requests); the errors listed are bounded
// (payload.MaxListedErrors) and every request is charged at least
// minReserve of the in-flight budget.
func TestMemoryBoundedUnderInvalidBatches(t *testing.T) {
	const (
		memoryLimit = 128 << 20
		senders     = 200
		rounds      = 3
	)
	empty := `{"appointment":{},"patient":{},"practitioner":{}}`
	wrong := `{"appointment":{"id":1,"status":1,"start_time":1,"start_date":1,"created_time":1,"type":1,"duration":"x","reason":1,"notes":1},` +
		`"patient":{"id":1,"first_name":1,"middle_name":1,"last_name":1,"birth_date":1,"gender":1,"phone":1,"email":1},` +
		`"practitioner":{"id":1,"first_name":1,"last_name":1},"location":{"name":1},"encounter":{"id":1,"reason":1},"department_id":1}`
	bodies := [][]byte{
		[]byte(`{"appointments":[` + strings.Repeat(empty+",", 999) + empty + `]}`),
		[]byte(`{"appointments":[` + strings.Repeat(wrong+",", 999) + wrong + `]}`),
	}
	dbURL := pgtest.NewDatabase(t)
	r := startReceiver(t, dbURL, "--memory-limit", strconv.Itoa(memoryLimit),
		"--requests-per-second", "100000", "--burst", "100000")
	pid := r.Cmd.Process.Pid
	client := harness.NewClient(senders)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var (
		mu    sync.Mutex
		codes = map[int]int{}
		wg    sync.WaitGroup
	)
	start := make(chan struct{})
	for s := range senders {
		wg.Go(func() {
			<-start
			for round := range rounds {
				a := harness.Post(ctx, client, r.URL, bodies[(s+round)%2], "")
				mu.Lock()
				codes[a.Status]++
				mu.Unlock()
				if a.Err != nil || (a.Status != http.StatusUnprocessableEntity && a.Status != http.StatusServiceUnavailable) {
					t.Errorf("answer %d %v (%.200s), want 422 or 503", a.Status, a.Err, a.Body)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	peak, err := harness.ProcStatus(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d senders × %d invalid batches (%d and %d bytes): answers %v; peak RSS (VmHWM) %.1f MiB of a %d MiB limit",
		senders, rounds, len(bodies[0]), len(bodies[1]), codes, peak, memoryLimit>>20)
	if peak >= memoryLimit>>20 {
		t.Errorf("peak RSS %.1f MiB, not below the %d MiB limit", peak, memoryLimit>>20)
	}
	if codes[http.StatusUnprocessableEntity] == 0 {
		t.Errorf("no 422: the batches were never validated")
	}
}
