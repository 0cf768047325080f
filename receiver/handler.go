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
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/insighthealth/ehr-operator/receiver/auth"
	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// Statuses lists every status code the webhook route can answer; the
// OpenAPI document must list the same (see the contract tests).
var Statuses = []int{200, 400, 401, 404, 405, 413, 415, 422, 429, 500, 503}

// Response is the body of every answer (DESIGN §5). Errors is present only
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
	headerID       = "X-Request-ID"
	ctxRequestID   = "request_id"
)

func errorBody(code int, msg string, errs []payload.FieldError) Response {
	return Response{Message: msg, Code: code, Errors: errs}
}

// outcome is what one request came to, for the answer, the log line, the
// metrics and the delivery log.
type outcome struct {
	resp          Response
	retryAfter    int // seconds; 0 for none
	word          store.Outcome
	authenticated bool
	items         int
	bodySHA       [32]byte
	result        store.Result
	err           error // a store error, logged (it holds no field value)
}

func fail(code int, word store.Outcome, msg string) outcome {
	return outcome{resp: errorBody(code, msg, nil), word: word}
}

// sync runs DESIGN §5's checks in order and answers.
func (s *Server) sync(c *gin.Context) {
	start := s.now()
	o := s.check(c, start)
	if o.retryAfter > 0 {
		c.Header("Retry-After", strconv.Itoa(o.retryAfter))
	}
	if o.resp.Code == http.StatusMethodNotAllowed {
		c.Header("Allow", http.MethodPost)
	}
	writeJSON(c, o.resp.Code, o.resp)
	if o.authenticated && o.resp.Code != http.StatusOK {
		s.recordFailure(c, o, start)
	}
	s.finish(c, o, start)
}

func (s *Server) check(c *gin.Context, received time.Time) outcome {
	r := c.Request
	if c.Param("ehr") != s.cfg.EHR {
		return fail(http.StatusNotFound, store.OutcomeNotFound, "not found")
	}
	if r.Method != http.MethodPost {
		return fail(http.StatusMethodNotAllowed, store.OutcomeMethodNotAllowed, "method not allowed; use POST")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return fail(http.StatusUnsupportedMediaType, store.OutcomeUnsupportedMediaType, "Content-Type must be application/json")
	}
	if !auth.KeyMatches(r.Header.Get("X-API-Key"), s.cfg.APIKey) {
		return fail(http.StatusUnauthorized, store.OutcomeUnauthorized, "missing or invalid X-API-Key")
	}
	// From here on the request is the EHR's: failures go to the delivery log.
	o := s.checkAuthenticated(c, received)
	o.authenticated = true
	return o
}

func (s *Server) checkAuthenticated(c *gin.Context, received time.Time) outcome {
	r := c.Request
	if res := s.limiter.Reserve(); !res.OK() || res.Delay() > 0 {
		wait := res.Delay()
		res.Cancel()
		o := fail(http.StatusTooManyRequests, store.OutcomeRateLimited, "too many requests; retry after the number of seconds in Retry-After")
		o.retryAfter = max(1, int(math.Ceil(wait.Seconds())))
		return o
	}
	tooLarge := fail(http.StatusRequestEntityTooLarge, store.OutcomeTooLarge,
		fmt.Sprintf("the body is larger than %d bytes", s.cfg.MaxBodyBytes))
	if r.ContentLength > s.cfg.MaxBodyBytes {
		return tooLarge
	}
	body, err := readBody(http.MaxBytesReader(c.Writer, r.Body, s.cfg.MaxBodyBytes), r.ContentLength)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return tooLarge
		}
		return fail(http.StatusBadRequest, store.OutcomeUnreadable, "the body could not be read")
	}
	sum := sha256.Sum256(body)
	withBody := func(o outcome) outcome { o.bodySHA = sum; return o }

	sig := r.Header.Get("X-Webhook-Signature")
	if !auth.Verify(body, sig, s.cfg.Secret, s.cfg.PreviousSecret) {
		s.metrics.signatureFailures.Inc()
		msg := "X-Webhook-Signature does not match the body"
		if _, err := auth.ParseSignature(sig); err != nil {
			msg = "X-Webhook-Signature must be sha256=<64 hex digits>"
		}
		return withBody(fail(http.StatusUnauthorized, store.OutcomeBadSignature, msg))
	}

	items, rerr := payload.Decode(body, s.cfg.MaxBatchSize)
	if rerr != nil {
		o := withBody(fail(rerr.Status, store.OutcomeInvalidBody, rerr.Message))
		if rerr.Status != http.StatusRequestEntityTooLarge {
			o.resp.Errors = rerr.FieldErrors()
		}
		return o
	}
	valid, invalid := payload.Validate(items, s.cfg.Location, received)
	o := withBody(outcome{items: len(items)})
	if len(invalid) > 0 && s.cfg.OnInvalid == Reject {
		o.resp = errorBody(http.StatusUnprocessableEntity,
			fmt.Sprintf("%d of %d appointments are invalid; nothing was stored", len(invalid), len(items)),
			allErrors(invalid))
		o.word = store.OutcomeRejected
		return o
	}

	o.word = store.OutcomeStored
	if len(invalid) > 0 {
		o.word = store.OutcomeQuarantined
	}
	batch := store.Batch{
		Delivery:    s.delivery(c, o.word, http.StatusOK, len(items), sum, received),
		Entries:     valid,
		Quarantined: make([]store.Quarantined, len(invalid)),
	}
	for i, inv := range invalid {
		batch.Quarantined[i] = store.Quarantined{Index: inv.Item.Index, Raw: inv.Item.Raw, Errors: inv.Errors}
	}
	// A sender that hangs up must not cancel a commit under way.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), writeBatchTimeout)
	defer cancel()
	res, err := s.store.Write(ctx, batch)
	if err != nil {
		s.metrics.databaseErrors.Inc()
		o.err = err
		if store.IsUnavailable(err) {
			o.resp = errorBody(http.StatusServiceUnavailable, msgUnavailable, nil)
			o.retryAfter = retryAfterUnavailable
			o.word = store.OutcomeUnavailable
			return o
		}
		o.resp = errorBody(http.StatusInternalServerError, msgInternal, nil)
		o.word = store.OutcomeError
		return o
	}
	o.result = res
	o.resp = Response{Message: msgSuccess, Success: true, Code: http.StatusOK}
	return o
}

func allErrors(invalid []payload.Invalid) []payload.FieldError {
	var errs []payload.FieldError
	for _, inv := range invalid {
		errs = append(errs, inv.Errors...)
	}
	return errs
}

func (s *Server) delivery(c *gin.Context, word store.Outcome, code, items int, sum [32]byte, received time.Time) store.Delivery {
	return store.Delivery{
		EHR: s.cfg.EHR, RequestID: c.GetString(ctxRequestID), ReceivedAt: received,
		BodySHA256: sum, ItemCount: items, Outcome: word, StatusCode: code,
	}
}

// recordFailure logs an authenticated request that failed in
// webhook_deliveries, best effort: the answer has already been sent.
func (s *Server) recordFailure(c *gin.Context, o outcome, received time.Time) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 2*time.Second)
	defer cancel()
	d := s.delivery(c, o.word, o.resp.Code, o.items, o.bodySHA, received)
	if err := s.store.RecordDelivery(ctx, d); err != nil {
		s.log.Warn("Could not record the failed delivery", "request_id", d.RequestID, "ehr", s.cfg.EHR, "error", err.Error())
	}
}

// finish logs the request and counts it. Never a field value: only the
// request id, counts, the outcome and timings.
func (s *Server) finish(c *gin.Context, o outcome, start time.Time) {
	latency := s.now().Sub(start)
	code := strconv.Itoa(o.resp.Code)
	s.metrics.requests.WithLabelValues(s.cfg.EHR, code).Inc()
	s.metrics.duration.WithLabelValues(s.cfg.EHR, code).Observe(latency.Seconds())
	s.metrics.written.Add(float64(o.result.Written))
	s.metrics.duplicates.Add(float64(o.result.Duplicates))
	s.metrics.quarantined.Add(float64(o.result.Quarantined))
	attrs := []any{
		"request_id", c.GetString(ctxRequestID), "ehr", s.cfg.EHR, "items", o.items,
		"outcome", string(o.word), "status", o.resp.Code, "latency_ms", float64(latency.Microseconds()) / 1000,
	}
	if o.resp.Code == http.StatusOK {
		attrs = append(attrs, "written", o.result.Written, "duplicates", o.result.Duplicates, "quarantined", o.result.Quarantined)
	}
	switch {
	case o.err != nil:
		s.log.Error("Request failed", append(attrs, "error", o.err.Error())...)
	case o.resp.Code >= 500:
		s.log.Error("Request failed", attrs...)
	default:
		s.log.Info("Request handled", attrs...)
	}
}

func (s *Server) notFound(c *gin.Context) {
	start := s.now()
	o := fail(http.StatusNotFound, store.OutcomeNotFound, "not found")
	writeJSON(c, o.resp.Code, o.resp)
	s.finish(c, o, start)
}

func writeJSON(c *gin.Context, code int, body Response) {
	c.Header("Cache-Control", "no-store")
	c.JSON(code, body)
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

// readBody reads r whole into one buffer sized from Content-Length (already
// checked against the limit), where io.ReadAll would grow one from 512
// bytes: a tenth of the allocation of a 100-entry request.
func readBody(r io.Reader, contentLength int64) ([]byte, error) {
	// bytes.Buffer.ReadFrom wants MinRead bytes free to read the end.
	buf := bytes.NewBuffer(make([]byte, 0, max(contentLength, 0)+bytes.MinRead))
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}
