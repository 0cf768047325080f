package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// Item is one entry of a batch as sent, before validation.
type Item struct {
	// Index is the entry's position in the batch (0 for the single form).
	Index int
	// Path prefixes the entry's field paths: "appointments[3]" in the array
	// form, "" in the single-object form (paths such as "appointment.id").
	Path string
	// Raw is the entry's bytes exactly as sent, kept for quarantine.
	Raw json.RawMessage
}

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

// Decode reads body as exactly one JSON document and returns its entries:
// the items of the top-level "appointments" array (1..maxBatchSize), or the
// body itself when it is an object with a top-level "appointment" key (a
// batch of one). When both keys are present, "appointments" wins. Items
// never alias body.
func Decode(body []byte, maxBatchSize int) ([]Item, *RequestError) {
	if items, rerr, ok := decodeFast(body, maxBatchSize); ok {
		return items, rerr
	}
	return decodeSlow(body, maxBatchSize)
}

// decodeSlow is the reference implementation on encoding/json. Decode
// falls back to it for every body the fast path does not handle itself,
// malformed JSON above all: its error offsets are encoding/json's.
func decodeSlow(body []byte, maxBatchSize int) ([]Item, *RequestError) {
	doc, rerr := oneDocument(body)
	if rerr != nil {
		return nil, rerr
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(doc, &top) != nil || top == nil {
		return nil, &RequestError{Status: http.StatusUnprocessableEntity,
			Message: "body must be a JSON object with an appointments array or an appointment object"}
	}
	if arr, ok := top["appointments"]; ok {
		var raws []json.RawMessage
		if json.Unmarshal(arr, &raws) != nil || raws == nil {
			return nil, &RequestError{Status: http.StatusUnprocessableEntity, Field: "appointments",
				Message: "appointments must be an array"}
		}
		if len(raws) == 0 {
			return nil, &RequestError{Status: http.StatusUnprocessableEntity, Field: "appointments",
				Message: "appointments must contain at least one entry"}
		}
		if len(raws) > maxBatchSize {
			return nil, &RequestError{Status: http.StatusRequestEntityTooLarge, Field: "appointments",
				Message: fmt.Sprintf("appointments has %d entries; at most %d are accepted per request", len(raws), maxBatchSize)}
		}
		items := make([]Item, len(raws))
		for i, r := range raws {
			items[i] = Item{Index: i, Path: "appointments[" + strconv.Itoa(i) + "]", Raw: r}
		}
		return items, nil
	}
	if _, ok := top["appointment"]; ok {
		return []Item{{Index: 0, Path: "", Raw: doc}}, nil
	}
	return nil, &RequestError{Status: http.StatusUnprocessableEntity,
		Message: "body must be a JSON object with an appointments array or an appointment object"}
}

// oneDocument checks that body holds exactly one JSON value (surrounding
// whitespace allowed) and returns it.
func oneDocument(body []byte) (json.RawMessage, *RequestError) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var doc json.RawMessage
	if err := dec.Decode(&doc); err != nil {
		return nil, malformed(err, int64(len(body)))
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		// Whatever follows the first document, valid JSON or not, is trailing data.
		off := end + int64(len(body[end:])-len(bytes.TrimLeft(body[end:], " \t\r\n")))
		return nil, &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON: unexpected data after the JSON document at byte offset %d", off)}
	}
	return doc, nil
}

// malformed describes a decoding error by its byte offset only: the
// decoder's own messages quote characters of the body.
func malformed(err error, size int64) *RequestError {
	var syn *json.SyntaxError
	switch {
	case errors.As(err, &syn):
		return &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON at byte offset %d", syn.Offset)}
	case errors.Is(err, io.EOF) && size == 0:
		return &RequestError{Status: http.StatusBadRequest, Message: "malformed JSON: the body is empty"}
	default: // io.EOF on whitespace only, io.ErrUnexpectedEOF on a truncated document
		return &RequestError{Status: http.StatusBadRequest,
			Message: fmt.Sprintf("malformed JSON: unexpected end of the body at byte offset %d", size)}
	}
}
