package receiver

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/insighthealth/ehr-operator/receiver/sizing"
)

// retryAfterOverloaded is the Retry-After of a 503 for a full in-flight
// budget, in seconds: the bodies in flight are done within a second or two.
const retryAfterOverloaded = 1

const msgOverloaded = "the receiver is busy; the batch was not stored, retry later"

// minReserve is the least a request takes of the in-flight budget (but
// never more than a body may be), whatever its size: a small body can
// still hold 1,000 invalid entries, whose items and errors cost up to
// about 460 KB (measured, payload's TestErrorsListedAreBounded), ten times
// this at sizing.PerBodyByte. An audit's 200 senders of such 50 KB bodies
// took a 128 MiB receiver to 204 MiB when each was charged its size alone.
const minReserve = 64 << 10

// inflight bounds the bytes of request bodies held at once: a request
// reserves its Content-Length before reading a byte of its body and gives
// it back when it has been answered, so memory follows the budget and not
// the number of senders (receiver/sizing derives the budget from the
// container's memory).
type inflight struct {
	limit int64
	used  atomic.Int64
	// refused counts the requests answered 503 for want of budget.
	refused prometheus.Counter
}

// InflightLimit is the in-flight budget in force: MaxInflightBodyBytes, or
// by default sizing.DefaultInflight but never less than one body of
// MaxBodyBytes.
func (c Config) InflightLimit() int64 {
	if c.MaxInflightBodyBytes > 0 {
		return c.MaxInflightBodyBytes
	}
	return max(sizing.DefaultInflight, c.MaxBodyBytes)
}

func newInflight(cfg Config, reg prometheus.Registerer) *inflight {
	limit := cfg.InflightLimit()
	labels := prometheus.Labels{"ehr": cfg.EHR}
	b := &inflight{limit: limit, refused: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ehr_receiver", Name: "overloaded_total", ConstLabels: labels,
		Help: "Requests answered 503 unread because the bodies in flight held the whole budget.",
	})}
	reg.MustRegister(b.refused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "ehr_receiver", Name: "inflight_body_bytes", ConstLabels: labels,
			Help: "Bytes of request bodies reserved by requests in flight.",
		}, func() float64 { return float64(b.used.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "ehr_receiver", Name: "inflight_body_bytes_limit", ConstLabels: labels,
			Help: "Most bytes of request bodies held at once; past it requests are answered 503.",
		}, func() float64 { return float64(b.limit) }),
	)
	return b
}

// reserve takes n bytes from the budget, or none and returns false when
// they are not there.
func (b *inflight) reserve(n int64) bool {
	for {
		used := b.used.Load()
		if used+n > b.limit {
			b.refused.Inc()
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

func (b *inflight) release(n int64) { b.used.Add(-n) }

// discardBody reads and drops the rest of the body of a request answered
// before its body was read (404 to 429, a 413 for its Content-Length, the
// busy 503), once the answer has gone out (a lingering close): a sender
// that writes its whole body before it reads, as many HTTP clients do
// (Python's among them), then gets its answer instead of a reset
// connection, and learns to split the batch or fix its key rather than
// retrying what looks like an outage. Nothing is kept: io.Discard reads
// through a small shared buffer. It stops after discardLimit bodies' worth
// (past that the connection is reset, as before), and does not start on a
// body whose Content-Length says it is larger: that sender gets a reset
// however much is read, so reading would only spend bandwidth and hold the
// connection. A body that stops before its Content-Length ends the
// connection once the answer is out. Nor does it start for a sender that
// waits for a 100 Continue before its body (Expect: 100-continue), which
// an early answer never sends: it has sent nothing to drain, and the
// drain would hold the answer's end until the sender gave up waiting or
// the read timeout. The server's read timeout bounds its time.
func (s *Server) discardBody(c *gin.Context) {
	if n := c.Request.ContentLength; n == 0 || n > discardLimit*s.cfg.MaxBodyBytes {
		return
	}
	if strings.EqualFold(strings.TrimSpace(c.Request.Header.Get("Expect")), "100-continue") {
		return
	}
	rc := http.NewResponseController(c.Writer)
	// HTTP/1 would otherwise stop the body once the answer is flushed.
	_ = rc.EnableFullDuplex()
	if rc.Flush() != nil {
		return
	}
	_, err := io.Copy(io.Discard, io.LimitReader(c.Request.Body, discardLimit*s.cfg.MaxBodyBytes))
	if err != nil && c.Request.ContentLength > 0 {
		// The body stopped before its Content-Length (the read timeout):
		// what comes next on the connection is the rest of it, not a
		// request. With full duplex on, net/http no longer ends the
		// connection itself after such an error, so end it here; the
		// answer is already out whole. (A chunked body's answer says
		// Connection: close, endIfUnbounded.)
		panic(http.ErrAbortHandler)
	}
}

// endIfUnbounded ends the connection after an answer given before a body
// of unknown length (chunked) was read: that body may be longer than the
// drain reads, and net/http then reads the rest once the handler returns
// and, with full duplex on, starts a second read of the connection
// (a panic, and a reset under the sender's next request).
func endIfUnbounded(c *gin.Context) {
	if c.Request.ContentLength < 0 {
		c.Header("Connection", "close")
	}
}

// discardLimit: a batch up to four times the body limit still gets its 413.
const discardLimit = 4
