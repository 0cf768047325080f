package receiver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"
	ginjson "github.com/gin-gonic/gin/codec/json"
	"github.com/google/uuid"

	"github.com/insighthealth/ehr-operator/receiver/auth"
	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// Statuses lists every status code the webhook route can answer; the
// OpenAPI document must list the same (see the contract tests).
var Statuses = []int{200, 400, 401, 404, 405, 413, 415, 422, 429, 500, 503}

// Response is the body of every answer (architecture.md, "The request's path"). Errors is present only
// on 400 and 422.
type Response struct {
	Message string               `json:"message"`
	Success bool                 `json:"success"`
	Code    int                  `json:"code"`
	Errors  []payload.FieldError `json:"errors,omitempty"`
}

const (
	msgSuccess     = "Appointments synced successfully"
	msgInternal    = "internal error; the batch was not stored"
	msgUnavailable = "the database is unavailable; the batch was not stored, retry later"
	// msgOutcomeUnknown: the database stopped answering during the commit.
	msgOutcomeUnknown = "the database did not answer during the commit; the batch may have been stored, retry it (a retry is safe)"
	headerID          = "X-Request-ID"
	ctxRequestID      = "request_id"
)

func errorBody(code int, msg string, errs []payload.FieldError) Response {
	return Response{Message: msg, Code: code, Errors: errs}
}

// request is one request as the checks learn about it: each step passes
// what it found on to the next.
type request struct {
	c        *gin.Context
	received time.Time
	// authenticated: the API key matched, so the request is the EHR's and a
	// failure goes to the delivery log.
	authenticated bool
	body          []byte
	bodySHA       [32]byte // zero until the body is read
	items         int      // the batch's entries, 0 until the body decodes
	valid         []payload.Entry
	invalid       []payload.Invalid
	// read: the body was read to its end (readBody passed): nothing is
	// left to drain after the answer.
	read bool

	// reserved is what the request holds of the in-flight budget, given
	// back when holders, this handler and the store, are done with the body.
	reserved int64
	holders  atomic.Int32
}

// answer is what a request came to, for the response, the log line, the
// metrics and the delivery log.
type answer struct {
	resp       Response
	retryAfter int // seconds; 0 for none
	outcome    store.Outcome
	result     store.Result
	err        error // a store error, logged (it holds no field value)
}

func fail(code int, outcome store.Outcome, msg string) *answer {
	return &answer{resp: errorBody(code, msg, nil), outcome: outcome}
}

// A step is one check: it answers (the request fails there) or returns nil
// and the next check runs.
type step func(*Server, *request) *answer

// checks are the checks of docs/architecture.md, "The request's path", in
// its order; commit is the last.
var checks = [...]step{
	(*Server).matchEHR,        // 1. 404
	(*Server).requirePOST,     // 2. 405
	(*Server).requireJSON,     // 3. 415
	(*Server).checkAPIKey,     // 4. 401; the request is the EHR's from here on
	(*Server).rateLimit,       // 5. 429
	(*Server).readBody,        // 6. 413 (400 when the body cannot be read)
	(*Server).verifySignature, // 7. 401
	(*Server).decode,          // 8. 400, 413, 422
	(*Server).validate,        // 9. 422, or on to quarantine
}

// sync runs the checks in order, answers and logs.
func (s *Server) sync(c *gin.Context) {
	rq := &request{c: c, received: s.now()}
	drain := false
	defer func() {
		if drain {
			// Once answered, logged and the reservation given back: the
			// bytes drained are not kept.
			s.discardBody(c)
		}
	}()
	rq.holders.Store(1)
	defer s.giveBack(rq)
	a := s.check(rq)
	if drain = !rq.read; drain {
		endIfUnbounded(c)
	}
	if a.retryAfter > 0 {
		c.Header("Retry-After", strconv.Itoa(a.retryAfter))
	}
	if a.resp.Code == http.StatusMethodNotAllowed {
		c.Header("Allow", http.MethodPost)
	}
	writeJSON(c, a.resp.Code, a.resp)
	// Before the migration the delivery table may not exist yet.
	if rq.authenticated && a.resp.Code != http.StatusOK && recorded(a.outcome) && s.db.migrated.Load() {
		s.recordFailure(rq, a)
	}
	s.finish(rq, a)
}

// giveBack ends one holder's hold on the request's body; the last gives
// its reservation back to the in-flight budget. The store holds it past
// the handler when the caller gave up on a queued request (store.Batch.Release).
func (s *Server) giveBack(rq *request) {
	if rq.holders.Add(-1) == 0 {
		s.inflight.release(rq.reserved)
	}
}

func (s *Server) check(rq *request) answer {
	for _, check := range checks {
		if a := check(s, rq); a != nil {
			return *a
		}
	}
	return s.commit(rq) // 10. 200, 503, 500
}

func notFound() *answer { return fail(http.StatusNotFound, store.OutcomeNotFound, "not found") }

func (s *Server) matchEHR(rq *request) *answer {
	if rq.c.Param("ehr") != s.cfg.EHR {
		return notFound()
	}
	return nil
}

func (s *Server) requirePOST(rq *request) *answer {
	if rq.c.Request.Method != http.MethodPost {
		return fail(http.StatusMethodNotAllowed, store.OutcomeMethodNotAllowed, "method not allowed; use POST")
	}
	return nil
}

func (s *Server) requireJSON(rq *request) *answer {
	if mt, _, err := mime.ParseMediaType(rq.c.Request.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return fail(http.StatusUnsupportedMediaType, store.OutcomeUnsupportedMediaType, "Content-Type must be application/json")
	}
	// A compressed body is not read as JSON (nor its signature checked
	// over bytes the sender did not sign): say so, rather than 401 or 400.
	if ce := strings.TrimSpace(rq.c.Request.Header.Get("Content-Encoding")); ce != "" && !strings.EqualFold(ce, "identity") {
		return fail(http.StatusUnsupportedMediaType, store.OutcomeUnsupportedMediaType, "Content-Encoding must be absent or identity: send the JSON uncompressed")
	}
	return nil
}

func (s *Server) checkAPIKey(rq *request) *answer {
	if !auth.KeyMatches(rq.c.Request.Header.Get("X-API-Key"), s.cfg.APIKey, s.cfg.PreviousAPIKey) {
		return fail(http.StatusUnauthorized, store.OutcomeUnauthorized, "missing or invalid X-API-Key")
	}
	rq.authenticated = true
	return nil
}

// rateLimit comes after the API key so that strangers cannot spend the
// EHR's budget.
func (s *Server) rateLimit(*request) *answer {
	res := s.limiter.Reserve()
	if res.OK() && res.Delay() == 0 {
		return nil
	}
	wait := res.Delay()
	res.Cancel()
	a := fail(http.StatusTooManyRequests, store.OutcomeRateLimited, "too many requests; retry after the number of seconds in Retry-After")
	a.retryAfter = max(1, int(math.Ceil(wait.Seconds())))
	return a
}

func (s *Server) readBody(rq *request) *answer {
	r := rq.c.Request
	tooLarge := func() *answer {
		return fail(http.StatusRequestEntityTooLarge, store.OutcomeTooLarge,
			fmt.Sprintf("the body is larger than %d bytes", s.cfg.MaxBodyBytes))
	}
	if r.ContentLength > s.cfg.MaxBodyBytes {
		return tooLarge()
	}
	// The body's bytes are reserved before one is read; one sent without
	// Content-Length (chunked) reserves the limit, and gives back what it
	// did not use once read.
	need := r.ContentLength
	if need < 0 {
		need = s.cfg.MaxBodyBytes
	}
	least := min(minReserve, s.cfg.MaxBodyBytes)
	need = max(need, least)
	if !s.inflight.reserve(need) {
		a := fail(http.StatusServiceUnavailable, store.OutcomeOverloaded, msgOverloaded)
		a.retryAfter = retryAfterOverloaded
		return a
	}
	rq.reserved = need
	// A body sent without Content-Length (chunked) is cut at the limit.
	body, err := readSized(http.MaxBytesReader(rq.c.Writer, r.Body, s.cfg.MaxBodyBytes), r.ContentLength)
	if r.ContentLength < 0 {
		kept := max(int64(len(body)), least)
		s.inflight.release(need - kept)
		rq.reserved = kept
	}
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return tooLarge()
		}
		return fail(http.StatusBadRequest, store.OutcomeUnreadable, "the body could not be read")
	}
	rq.body, rq.bodySHA, rq.read = body, sha256.Sum256(body), true
	return nil
}

func (s *Server) verifySignature(rq *request) *answer {
	sig := rq.c.Request.Header.Get("X-Webhook-Signature")
	if auth.Verify(rq.body, sig, s.cfg.Secret, s.cfg.PreviousSecret) {
		return nil
	}
	s.metrics.signatureFailures.Inc()
	msg := "X-Webhook-Signature does not match the body"
	if _, err := auth.ParseSignature(sig); err != nil {
		msg = "X-Webhook-Signature must be sha256=<64 hex digits>"
	}
	return fail(http.StatusUnauthorized, store.OutcomeBadSignature, msg)
}

// decode refuses a body that is not a batch at all, whatever onInvalid
// says. It validates the entries too, in the same scan of the body
// (payload.DecodeValidate); validate decides what their errors come to.
func (s *Server) decode(rq *request) *answer {
	batch, rerr := payload.DecodeValidate(rq.body, s.cfg.MaxBatchSize, s.cfg.Location, rq.received)
	if rerr != nil {
		a := fail(rerr.Status, store.OutcomeInvalidBody, rerr.Message)
		// 413 (too many entries) has no errors list, as the body-size 413.
		if rerr.Status != http.StatusRequestEntityTooLarge {
			a.resp.Errors = rerr.FieldErrors()
		}
		return a
	}
	// The valid entries' fields share the body's buffer, the invalid items
	// hold copies of theirs: the request keeps one body's worth, not two
	// (receiver/sizing's PerBodyByte, measured with a copy, stays an upper
	// bound).
	rq.items, rq.valid, rq.invalid, rq.body = batch.Len, batch.Valid, batch.Invalid, nil
	return nil
}

// validate refuses a batch with invalid entries (decode found them) under
// onInvalid: Reject; under Quarantine it passes them on for commit to keep
// aside.
func (s *Server) validate(rq *request) *answer {
	if len(rq.invalid) == 0 || s.cfg.OnInvalid != Reject {
		return nil
	}
	errs, cut := listedErrors(rq.invalid)
	msg := fmt.Sprintf("%d of %d appointments are invalid; nothing was stored", len(rq.invalid), rq.items)
	if cut {
		msg += fmt.Sprintf("; the first %d errors are listed", len(errs))
	}
	return &answer{
		resp:    errorBody(http.StatusUnprocessableEntity, msg, errs),
		outcome: store.OutcomeRejected,
	}
}

// errNotMigrated is why a request is answered 503 before the start-up
// migration succeeded, for its log line.
var errNotMigrated = errors.New("the schema is not migrated yet: the background migration retries until the database lets it (see its Migration failed lines)")

// commit writes the batch, delivery row included, and answers 200 only
// once it is committed. The versions of a batch not stored are remembered,
// so their retry cannot undo a newer version (versions.go).
func (s *Server) commit(rq *request) answer {
	versions, known := s.versions.lookup(rq.valid, rq.received)
	if !s.db.migrated.Load() {
		s.versions.remember(versions, s.now())
		// The same answer as an outage, without a connection attempt per
		// request: the background migration is what waits for the database.
		return answer{resp: errorBody(http.StatusServiceUnavailable, msgUnavailable, nil),
			retryAfter: retryAfterUnavailable, outcome: store.OutcomeUnavailable, err: errNotMigrated}
	}
	a := answer{outcome: store.OutcomeStored}
	if len(rq.invalid) > 0 {
		a.outcome = store.OutcomeQuarantined
	}
	batch := store.Batch{
		Delivery:    s.delivery(rq, a.outcome, http.StatusOK),
		Entries:     rq.valid,
		Versions:    versions,
		Quarantined: make([]store.Quarantined, len(rq.invalid)),
	}
	for i, inv := range rq.invalid {
		batch.Quarantined[i] = store.Quarantined{Index: inv.Item.Index, Raw: inv.Item.Raw, Errors: inv.Errors}
	}
	rq.holders.Add(1)
	batch.Release = func() { s.giveBack(rq) }
	// A sender that hangs up must not cancel a commit under way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(rq.c.Request.Context()), writeBatchTimeout)
	defer cancel()
	res, err := s.store.Write(ctx, batch)
	s.db.observe(err)
	if err != nil {
		s.versions.remember(versions, s.now())
		s.metrics.databaseErrors.Inc()
		if store.IsUnavailable(err) {
			msg := msgUnavailable
			if errors.Is(err, store.ErrOutcomeUnknown) {
				msg = msgOutcomeUnknown
			}
			return answer{resp: errorBody(http.StatusServiceUnavailable, msg, nil),
				retryAfter: retryAfterUnavailable, outcome: store.OutcomeUnavailable, err: err}
		}
		return answer{resp: errorBody(http.StatusInternalServerError, msgInternal, nil),
			outcome: store.OutcomeError, err: err}
	}
	if known {
		s.versions.forget(versions)
	}
	a.result = res
	a.resp = Response{Message: msgSuccess, Success: true, Code: http.StatusOK}
	return a
}

// listedErrors returns the first payload.MaxListedErrors errors of the
// invalid entries, in batch order, and whether there were more: a 422 of
// every error of 1,000 entries was hundreds of kilobytes a request, beyond
// what the in-flight budget charges (inflight.go, minReserve), and the
// first hundred show a sender what to fix.
func listedErrors(invalid []payload.Invalid) (errs []payload.FieldError, cut bool) {
	total := 0
	for _, inv := range invalid {
		total += len(inv.Errors)
	}
	errs = make([]payload.FieldError, 0, min(total, payload.MaxListedErrors))
	for _, inv := range invalid {
		n := min(len(inv.Errors), cap(errs)-len(errs))
		errs = append(errs, inv.Errors[:n]...)
	}
	return errs, len(errs) < total
}

func (s *Server) delivery(rq *request, outcome store.Outcome, code int) store.Delivery {
	return store.Delivery{
		EHR: s.cfg.EHR, RequestID: rq.c.GetString(ctxRequestID), ReceivedAt: rq.received,
		BodySHA256: rq.bodySHA, ItemCount: rq.items, Outcome: outcome, StatusCode: code,
	}
}

// recorded says whether a failed request of the EHR gets a row in the
// delivery log. Not the refusals that shield the receiver from a flood
// (429, and 503 overloaded before the body is read): a row each would turn
// the flood into database writes, thousands of rows a second from anyone
// holding the API key alone. They are counted and logged, and the sender
// retries them.
func recorded(o store.Outcome) bool {
	return slices.Contains(store.Recorded, o)
}

// recordFailure queues an authenticated request that failed for
// webhook_deliveries, with the first errors its answer listed, best
// effort: the delivery log writes it later, or drops it when it cannot
// keep up.
func (s *Server) recordFailure(rq *request, a answer) {
	d := s.delivery(rq, a.outcome, a.resp.Code)
	d.FieldErrorCount, d.FieldErrors = len(a.resp.Errors), keptErrors(a.resp.Errors)
	s.deliveries.add(d)
}

// keptErrors are the first errors of an answer, those its log line has,
// for its delivery row: a slice of their own, so that the queued record
// does not keep the answer's hundred. Paths and rules, never a value
// (payload.FieldError): a 400's message says where the JSON broke (a byte
// offset), never what is there.
func keptErrors(errs []payload.FieldError) []payload.FieldError {
	if len(errs) == 0 {
		return nil
	}
	return slices.Clone(errs[:min(len(errs), store.MaxFieldErrors)])
}

// finish logs the request and counts it. Never a field value: only the
// request id, counts, the outcome and timings.
func (s *Server) finish(rq *request, a answer) {
	latency := s.now().Sub(rq.received)
	code := strconv.Itoa(a.resp.Code)
	s.metrics.requests.WithLabelValues(s.cfg.EHR, code).Inc()
	s.metrics.duration.WithLabelValues(s.cfg.EHR, code).Observe(latency.Seconds())
	if a.resp.Code == http.StatusOK {
		s.metrics.lastSuccess.Set(float64(s.now().UnixNano()) / 1e9)
	}
	s.metrics.written.Add(float64(a.result.Written))
	s.metrics.duplicates.Add(float64(a.result.Duplicates))
	s.metrics.superseded.Add(float64(a.result.Superseded))
	s.metrics.quarantined.Add(float64(a.result.Quarantined))
	attrs := []any{
		"request_id", rq.c.GetString(ctxRequestID), "items", rq.items,
		"outcome", string(a.outcome), "status", a.resp.Code, "latency_ms", float64(latency.Microseconds()) / 1000,
	}
	if a.resp.Code == http.StatusOK {
		attrs = append(attrs, "written", a.result.Written, "duplicates", a.result.Duplicates,
			"superseded", a.result.Superseded, "quarantined", a.result.Quarantined)
	}
	if len(a.resp.Errors) > 0 {
		attrs = append(attrs, "field_errors", loggedErrors(a.resp.Errors), "field_errors_listed", len(a.resp.Errors))
	}
	switch {
	case a.err != nil:
		s.log.Error("Request failed", append(attrs, "error", a.err.Error())...)
	case a.resp.Code >= 500:
		s.log.Error("Request failed", attrs...)
	default:
		s.log.Info("Request handled", attrs...)
	}
}

// maxLoggedErrors is how many of a 400's or 422's errors its log line
// holds: enough for an SRE to tell the vendor what to fix, few enough to
// keep a flood of bad batches cheap. The delivery log keeps the same first
// ones (keptErrors), for when the log line is gone.
const maxLoggedErrors = store.MaxFieldErrors

// loggedErrors is "field: rule" for the first errors: paths and rules,
// never the values sent (webhook-api.md).
func loggedErrors(errs []payload.FieldError) []string {
	out := make([]string, 0, min(len(errs), maxLoggedErrors))
	for _, e := range errs[:min(len(errs), maxLoggedErrors)] {
		if e.Field == "" {
			out = append(out, e.Message)
		} else {
			out = append(out, e.Field+": "+e.Message)
		}
	}
	return out
}

// notFoundRoute answers every path but the sync route, in the same shape.
func (s *Server) notFoundRoute(c *gin.Context) {
	rq := &request{c: c, received: s.now()}
	a := *notFound()
	endIfUnbounded(c)
	writeJSON(c, a.resp.Code, a.resp)
	s.finish(rq, a)
	s.discardBody(c)
}

// writeJSON answers body with its Content-Length, as gin's c.JSON
// encodes it: an answer flushed before the body is drained (discardBody)
// is then whole at once, not a chunked body whose end waits for the drain.
func writeJSON(c *gin.Context, code int, body Response) {
	c.Header("Cache-Control", "no-store")
	b, err := ginjson.API.Marshal(body)
	if err != nil { // a Response always encodes
		c.JSON(code, body)
		return
	}
	c.Header("Content-Length", strconv.Itoa(len(b)))
	c.Data(code, "application/json; charset=utf-8", b)
}

// requestID takes the caller's X-Request-ID when it is a reasonable token,
// or makes one, and sets it on the response before anything else runs.
func requestID(c *gin.Context) {
	id := c.GetHeader(headerID)
	if !validRequestID(id) {
		id = uuid.NewString()
	}
	c.Set(ctxRequestID, id)
	c.Header(headerID, id)
	c.Next()
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		ok := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
			b == '-' || b == '_' || b == '.' || b == ':' || b == '/' || b == '+' || b == '='
		if !ok {
			return false
		}
	}
	return true
}

// firstBodyBuffer caps the buffer allocated before a body's bytes arrive.
const firstBodyBuffer = 64 << 10

// readSized reads r whole. Its buffer starts at Content-Length (already
// checked against the limit) up to firstBodyBuffer, and doubles as bytes
// arrive, never past Content-Length: a sender that announces a large body
// and sends nothing holds 64 KiB, and a small body is read in one
// allocation where io.ReadAll would grow one from 512 bytes.
func readSized(r io.Reader, contentLength int64) ([]byte, error) {
	// MinRead bytes free let the last Read see the end.
	size := int64(firstBodyBuffer)
	if contentLength >= 0 {
		size = min(size, contentLength)
	}
	buf := make([]byte, 0, size+bytes.MinRead)
	for {
		if len(buf) == cap(buf) {
			next := 2 * int64(cap(buf))
			if contentLength >= 0 && int64(len(buf)) < contentLength+bytes.MinRead {
				next = min(next, contentLength+bytes.MinRead)
			}
			buf = append(make([]byte, 0, next), buf...)
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
