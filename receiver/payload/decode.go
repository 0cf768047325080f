package payload

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
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

// Decode reads body as exactly one JSON document and returns its entries:
// the items of the top-level "appointments" array (1..maxBatchSize), or the
// body itself when it is an object with a top-level "appointment" key (a
// batch of one). A null beside the other form is ignored: serializers that
// write every field of a class send one. Both keys holding values is
// refused, since reading either form would drop what the other holds.
// Items never alias body.
func Decode(body []byte, maxBatchSize int) ([]Item, *RequestError) {
	// One scan checks the whole body and records the top-level members.
	var (
		top []member
		end int
		ok  bool
	)
	i := skipSpace(body, 0)
	switch {
	case i == len(body):
	case body[i] == '{':
		end, ok = scanObject(body, i, 1, &top, -1, 1)
	default:
		end, ok = scanValue(body, i, 0)
	}
	if !ok || skipSpace(body, end) != len(body) {
		return nil, malformed(body)
	}
	if body[i] != '{' {
		return nil, errNeither()
	}
	// A later duplicate key wins, as it does in a map.
	arr, one := -1, -1
	for k, m := range top {
		switch keyField(body, &m) {
		case fieldAppointments:
			arr = k
		case fieldAppointment:
			one = k
		}
	}
	arrValue := arr >= 0 && body[top[arr].start] != 'n'
	oneValue := one >= 0 && body[top[one].start] != 'n'
	switch {
	case arrValue && oneValue:
		return nil, errBoth()
	case arrValue:
		return arrayItems(body, top[arr], maxBatchSize)
	case one >= 0:
		doc := append(json.RawMessage(nil), body[i:end]...)
		return []Item{{Index: 0, Path: "", Raw: doc}}, nil
	case arr >= 0:
		return arrayItems(body, top[arr], maxBatchSize) // null: "must be an array"
	}
	return nil, errNeither()
}

// arrayItems returns the elements of the appointments array, m.
func arrayItems(body []byte, m member, maxBatchSize int) ([]Item, *RequestError) {
	if body[m.start] != '[' {
		return nil, &RequestError{Status: http.StatusUnprocessableEntity, Field: "appointments",
			Message: "appointments must be an array"}
	}
	// Every element is counted, but no more than a batch may hold are
	// recorded: a body of a million is answered 413 for the price of 1,000.
	var elems [][2]int
	_, n, _ := scanArray(body[:m.end], m.start, 2, &elems, maxBatchSize) // checked by the body's scan
	if err := batchSize(n, maxBatchSize); err != nil {
		return nil, err
	}
	// One copy of the array and one string of all the paths, sliced per item.
	first, last := elems[0][0], elems[len(elems)-1][1]
	buf := append([]byte(nil), body[first:last]...)
	var paths strings.Builder
	paths.Grow(len(elems) * 20)
	ends := make([]int, len(elems))
	for k := range elems {
		paths.WriteString("appointments[")
		paths.WriteString(strconv.Itoa(k))
		paths.WriteByte(']')
		ends[k] = paths.Len()
	}
	all := paths.String()
	items := make([]Item, len(elems))
	from := 0
	for k, e := range elems {
		s, t := e[0]-first, e[1]-first
		items[k] = Item{Index: k, Path: all[from:ends[k]], Raw: buf[s:t:t]}
		from = ends[k]
	}
	return items, nil
}

// batchSize is the error for an appointments array of n entries, nil when
// n is within 1..maxBatchSize.
func batchSize(n, maxBatchSize int) *RequestError {
	switch {
	case n == 0:
		return &RequestError{Status: http.StatusUnprocessableEntity, Field: "appointments",
			Message: "appointments must contain at least one entry"}
	case n > maxBatchSize:
		return &RequestError{Status: http.StatusRequestEntityTooLarge, Field: "appointments",
			Message: fmt.Sprintf("appointments has %d entries; at most %d are accepted per request", n, maxBatchSize)}
	}
	return nil
}
