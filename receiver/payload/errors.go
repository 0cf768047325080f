package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// RequestError is a body that is not a batch at all. Status is 400
// (malformed JSON), 413 (too many entries) or 422 (neither accepted form).
// Its message never contains a value from the body.
type RequestError struct {
	Status  int
	Message string
	// Field is the top-level key at fault, "" for the body as a whole.
	Field string
}

func (e *RequestError) Error() string { return e.Message }

// FieldErrors turns e into the errors list of a response: one item with
// index -1, meaning the request as a whole rather than one entry.
func (e *RequestError) FieldErrors() []FieldError {
	return []FieldError{{Index: -1, Field: e.Field, Message: e.Message}}
}

func errNeither() *RequestError {
	return &RequestError{Status: http.StatusUnprocessableEntity,
		Message: "body must be a JSON object with an appointments array or an appointment object"}
}

func errBoth() *RequestError {
	return &RequestError{Status: http.StatusUnprocessableEntity,
		Message: "body holds both an appointments array and an appointment object: send one of the two forms"}
}

// byteOrderMark is UTF-8's. JSON senders must not add one (RFC 8259,
// section 8.1), yet serializers on Windows do: it gets an error of its own,
// since "at byte offset 1" points at a character no editor shows.
var byteOrderMark = []byte{0xEF, 0xBB, 0xBF}

func errByteOrderMark() *RequestError {
	return &RequestError{Status: http.StatusBadRequest,
		Message: "malformed JSON: the body starts with a UTF-8 byte order mark (EF BB BF); send the JSON without it"}
}

// malformed explains why the scanner refused body. encoding/json is kept
// for this alone: senders get its byte offsets, not its messages, which
// quote characters of the body.
func malformed(body []byte) *RequestError {
	if bytes.HasPrefix(body, byteOrderMark) {
		return errByteOrderMark()
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var doc json.RawMessage
	err := dec.Decode(&doc)
	var syn *json.SyntaxError
	switch {
	case err == nil:
		// One document, then something else, valid JSON or not.
		off := skipSpace(body, int(dec.InputOffset()))
		return &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON: unexpected data after the JSON document at byte offset %d", off)}
	case errors.As(err, &syn):
		return &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON at byte offset %d", syn.Offset)}
	case len(body) == 0:
		return &RequestError{Status: http.StatusBadRequest, Message: "malformed JSON: the body is empty"}
	default: // io.EOF on white space only, io.ErrUnexpectedEOF on a truncated document
		return &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON: unexpected end of the body at byte offset %d", len(body))}
	}
}

// FieldError names one invalid field. Message never contains the field's
// value: values are patient data and error bodies are logged by senders.
type FieldError struct {
	// Index is the entry's position in the batch.
	Index int `json:"index"`
	// Field is the full JSON path, e.g. "appointments[0].patient.birth_date".
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Invalid is an entry that failed validation, with the errors found in it
// (its first only, past the batch's MaxListedErrors).
type Invalid struct {
	Item   Item
	Errors []FieldError
}

// MaxListedErrors bounds the errors listed in full for one batch: past it
// each further invalid entry lists only its first error and a count of the
// rest. Errors cost memory that the body's size does not bound (an entry
// of a few bytes, `{}`, has a dozen), and the in-flight budget charges a
// request by its body (decisions.md, "Bounded memory").
const MaxListedErrors = 100

// msgUnlisted ends the errors of an entry listed in part: a constant, as a
// count would cost an allocation per entry.
var msgUnlisted = "has more errors, not listed: the request has more than " + strconv.Itoa(MaxListedErrors)

// fieldErrors collects an entry's errors; field paths are built from the
// entry's path (base) only for an error.
type fieldErrors struct {
	index int
	base  string
	// inArray: the entry is appointments[index] and base is made from it
	// when an error first needs it, so that a valid entry costs no path.
	inArray bool
	errs    []FieldError
	// listed counts down the batch's errors listed in full (shared by its
	// entries; nil: no bound); unlisted counts this entry's others.
	listed   *int
	unlisted int
}

// full: the entry has an error and the batch has listed its share.
func (f *fieldErrors) full() bool {
	return len(f.errs) > 0 && f.listed != nil && *f.listed <= 0
}

func (f *fieldErrors) path(obj, key string) string {
	if f.inArray {
		f.base, f.inArray = arrayPath(f.index), false
	}
	p := f.base
	if obj != "" {
		p = join(p, obj)
	}
	return join(p, key)
}

// arrayPath is the path of the k-th entry of the appointments array.
func arrayPath(k int) string { return "appointments[" + strconv.Itoa(k) + "]" }

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func (f *fieldErrors) fail(obj, key, msg string) {
	if f.full() {
		f.unlisted++ // no path made
		return
	}
	f.failAt(f.path(obj, key), msg)
}

func (f *fieldErrors) failAt(path, msg string) {
	if f.full() {
		f.unlisted++
		return
	}
	f.errs = append(f.errs, FieldError{Index: f.index, Field: path, Message: msg})
	if f.listed != nil {
		*f.listed--
	}
}

// entry is what a reader found: the entry, or its errors.
func (f *fieldErrors) entry(e Entry) (Entry, []FieldError) {
	if len(f.errs) > 0 {
		if f.unlisted > 0 {
			if f.inArray {
				f.base, f.inArray = arrayPath(f.index), false
			}
			f.errs = append(f.errs, FieldError{Index: f.index, Field: f.base, Message: msgUnlisted})
		}
		return Entry{}, f.errs
	}
	return e, nil
}
