package cmd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// The printers of list and show write each record as the store reads it,
// so that the output is never all in memory (docs/decisions.md, "Deliveries,
// replay and retention"). Their bytes are those the whole slice printed
// at once gave. end(false) after an error leaves JSON without its closing
// brackets, so that output cut short does not parse as complete.

// jsonArray writes a JSON array an element at a time, as json.Encoder with
// SetIndent("", "  ") writes a whole slice at indent (two spaces a level).
type jsonArray struct {
	w      io.Writer
	indent string
	n      int
}

// next starts an element: "[" before the first, "," before the others.
func (a *jsonArray) next() error {
	sep := ","
	if a.n == 0 {
		sep = "["
	}
	a.n++
	_, err := io.WriteString(a.w, sep+"\n"+a.indent+"  ")
	return err
}

func (a *jsonArray) add(v any) error {
	b, err := json.MarshalIndent(v, a.indent+"  ", "  ")
	if err != nil {
		return err
	}
	// A quarantined entry's content and field errors, as a delivery's
	// (showJSON.delivery).
	b = printable(b, inJSON)
	if err := a.next(); err != nil {
		return err
	}
	_, err = a.w.Write(b)
	return err
}

func (a *jsonArray) end() error {
	s := "\n" + a.indent + "]"
	if a.n == 0 {
		s = "[]"
	}
	_, err := io.WriteString(a.w, s)
	return err
}

// stickyWriter keeps the first error of w and writes nothing after it, so
// that a table's printer checks once per record.
type stickyWriter struct {
	w   io.Writer
	err error
}

func (s *stickyWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.w.Write(p)
	s.err = err
	return n, err
}

// listPrinter prints list's deliveries.
type listPrinter interface {
	delivery(store.DeliveryRecord) error
	// end completes the output when complete; else it only flushes it.
	end(complete bool) error
}

func (f *deliveriesFlags) listPrinter(w io.Writer) listPrinter {
	if f.output == "json" {
		return &listJSON{a: jsonArray{w: w}}
	}
	return &listTable{sw: &stickyWriter{w: w}}
}

type listJSON struct{ a jsonArray }

func (l *listJSON) delivery(d store.DeliveryRecord) error { return l.a.add(d) }
func (l *listJSON) end(complete bool) error               { return endJSON(&l.a, complete) }

// endJSON closes a top-level array and its line, as json.Encoder ends it.
func endJSON(a *jsonArray, complete bool) error {
	if !complete {
		return nil
	}
	if err := a.end(); err != nil {
		return err
	}
	_, err := io.WriteString(a.w, "\n")
	return err
}

// table is show's tabwriter over a stickyWriter. The tabwriter holds a
// block of lines until one without a tab (a column needs all its cells):
// one delivery's entries, whose content lines (written past it) end a
// block.
type table struct {
	tw *tabwriter.Writer
	sw *stickyWriter
}

func newTable(w io.Writer) table {
	sw := &stickyWriter{w: w}
	return table{tw: tabwriter.NewWriter(sw, 0, 4, 2, ' ', 0), sw: sw}
}

// end flushes what was read, complete or not: the rows are true, and the
// error on standard error says what is missing.
func (t table) end(bool) error {
	if err := t.tw.Flush(); err != nil {
		return err
	}
	return t.sw.err
}

// listBlock is how many of list's rows are held before they are printed:
// `--limit 0` lists every delivery, and a tabwriter holding all of them took
// 527 MB to list a million deliveries (21 MB as JSON), printing nothing
// until the query ended.
const listBlock = 1000

// listTable prints its header with the first row, or at the end when
// there is none: a query that fails at once prints nothing. Its rows go out
// in blocks of listBlock, laid out as a tabwriter lays out one
// block (each cell padded to its column's widest cell and two spaces), a
// column as wide as its widest cell so far: up to listBlock rows print as
// one tabwriter block did, and a later block's columns only widen.
type listTable struct {
	sw     *stickyWriter
	header bool
	rows   [][]string
	widths []int // of each column but the last, its cells' widest so far
	buf    []byte
}

func (l *listTable) printHeader() {
	if !l.header {
		l.header = true
		l.rows = append(l.rows, []string{"ID", "EHR", "REQUEST ID", "RECEIVED", "OUTCOME", "STATUS", "ITEMS", "QUARANTINED", "PENDING"})
	}
}

func (l *listTable) delivery(d store.DeliveryRecord) error {
	l.printHeader()
	l.rows = append(l.rows, []string{strconv.FormatInt(d.ID, 10), d.EHR, d.RequestID, stamp(d.ReceivedAt),
		string(d.Outcome), strconv.Itoa(d.StatusCode), strconv.Itoa(d.ItemCount), strconv.Itoa(d.Quarantined), strconv.Itoa(d.Pending)})
	// More than listBlock: the first block's header aside, so that
	// --limit 1000 prints as the one tabwriter block did.
	if len(l.rows) > listBlock {
		l.flush()
	}
	return l.sw.err
}

// flush prints the rows held, in one write.
func (l *listTable) flush() {
	for _, r := range l.rows {
		for j, c := range r[:len(r)-1] {
			if j == len(l.widths) {
				l.widths = append(l.widths, 0)
			}
			l.widths[j] = max(l.widths[j], utf8.RuneCountInString(c))
		}
	}
	b := l.buf[:0]
	for _, r := range l.rows {
		for j, c := range r[:len(r)-1] {
			b = append(b, c...)
			for range l.widths[j] + 2 - utf8.RuneCountInString(c) {
				b = append(b, ' ')
			}
		}
		b = append(b, r[len(r)-1]...)
		b = append(b, '\n')
	}
	clear(l.rows)
	l.rows, l.buf = l.rows[:0], b[:0]
	if len(b) > 0 {
		_, _ = l.sw.Write(b)
	}
}

func (l *listTable) end(complete bool) error {
	if complete {
		l.printHeader()
	}
	l.flush()
	return l.sw.err
}

// showPrinter prints show's deliveries, each followed by its entries.
type showPrinter interface {
	listPrinter
	entry(store.QuarantineRecord) error
}

func (f *deliveriesFlags) showPrinter(w io.Writer) showPrinter {
	if f.output == "json" {
		return &showJSON{deliveries: jsonArray{w: w}}
	}
	return &showTable{table: newTable(w), content: f.includePatientData}
}

// showJSON writes what json.Encoder wrote of a slice of shownDelivery:
// each delivery's fields (a refused request's fieldErrorCount and
// fieldErrors among them), then its quarantinedEntries, one at a time.
type showJSON struct {
	deliveries jsonArray
	entries    *jsonArray // of the delivery being written
}

// shownDeliveryEnd closes a delivery's object as MarshalIndent does at
// depth 1; the entries go before it.
const shownDeliveryEnd = "\n  }"

func (s *showJSON) delivery(d store.DeliveryRecord) error {
	if err := s.endDelivery(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(d, "  ", "  ")
	if err != nil {
		return err
	}
	// A refused request's field errors are the receiver's paths and rules,
	// but a row's text is whatever was written to it: what a terminal acts
	// on is escaped, as in an entry (encoding/json escapes the C0 controls
	// and leaves these).
	b = printable(b, inJSON)
	head, ok := bytes.CutSuffix(b, []byte(shownDeliveryEnd))
	if !ok {
		return errors.New("a delivery's JSON does not end as an object at depth 1")
	}
	if err := s.deliveries.next(); err != nil {
		return err
	}
	if _, err := s.deliveries.w.Write(append(head, ",\n    \"quarantinedEntries\": "...)); err != nil {
		return err
	}
	s.entries = &jsonArray{w: s.deliveries.w, indent: "    "}
	return nil
}

func (s *showJSON) entry(q store.QuarantineRecord) error {
	err := s.entries.add(q) // printable, as every element
	// json's error would quote the content at the fault: patient data.
	if _, ok := errors.AsType[*json.MarshalerError](err); ok {
		return fmt.Errorf("quarantined entry %d: its content is not valid JSON (-o table prints it as stored)", q.ID)
	}
	return err
}

// printMode is where printable's text goes.
type printMode int

const (
	inJSON    printMode = iota // -o json's output
	tableLine                  // an entry's line in show's table
	tableCell                  // a cell of show's table (a field error's path or message)
)

// printable is text from the database made safe to print, the same text to
// a reader: an entry is kept as sent, and a sender may have put in it what
// a terminal acts on or shows in another order; a row holds whatever was
// written to it.
//   - C1 controls and DEL (JSON allows them raw in a string; U+009B is a
//     terminal's CSI) and the bidirectional controls (U+202E shows the text
//     after it reversed) are written \uXXXX, which a JSON string reads as
//     the same character; in an entry they can only be in a string, since
//     it was a JSON value. In a cell, so is every other character that is
//     not graphic (a tab or newline would break the table's cells and
//     lines).
//   - A carriage return on an entry's line (JSON white space, which would
//     move the cursor back over the line) is written \r.
//   - A byte that is not UTF-8 (the receiver keeps such bytes inside
//     strings, as encoding/json reads them) is U+FFFD in JSON, which is
//     UTF-8 text (RFC 8259) and is how a JSON decoder reads it, and \xNN in
//     the table, which shows the byte; 0x9B alone is CSI too.
func printable(b []byte, m printMode) []byte {
	if !slices.ContainsFunc(b, func(c byte) bool { return c >= 0x7f || c == '\r' || m == tableCell && c < ' ' }) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && n == 1 && m == inJSON:
			out = utf8.AppendRune(out, utf8.RuneError)
		case r == utf8.RuneError && n == 1:
			out = fmt.Appendf(out, "\\x%02x", b[0])
		case r == '\r' && m == tableLine:
			out = append(out, `\r`...)
		case r >= 0x7f && r <= 0x9f || unicode.Is(unicode.Bidi_Control, r) || m == tableCell && !unicode.IsGraphic(r):
			out = fmt.Appendf(out, "\\u%04x", r)
		default:
			out = append(out, b[:n]...)
		}
		b = b[n:]
	}
	return out
}

// cell is s as a cell of show's table (printable).
func cell(s string) string { return string(printable([]byte(s), tableCell)) }

func (s *showJSON) endDelivery() error {
	if s.entries == nil {
		return nil
	}
	if err := s.entries.end(); err != nil {
		return err
	}
	s.entries = nil
	_, err := io.WriteString(s.deliveries.w, shownDeliveryEnd)
	return err
}

func (s *showJSON) end(complete bool) error {
	if !complete {
		return nil
	}
	if err := s.endDelivery(); err != nil {
		return err
	}
	return endJSON(&s.deliveries, true)
}

// showTable prints each delivery's line, then its entries' table.
type showTable struct {
	table
	content    bool
	deliveries int
	entries    int // of the delivery being printed
}

func (s *showTable) delivery(d store.DeliveryRecord) error {
	if s.deliveries > 0 {
		fmt.Fprintln(s.tw)
	}
	s.deliveries++
	s.entries = 0
	// Spaces, not tabs: the delivery's line is no row of the entries' table.
	fmt.Fprintf(s.tw, "Delivery %d  ehr %s  request %s  received %s  outcome %s  status %d  items %d  body sha256 %s\n",
		d.ID, d.EHR, d.RequestID, stamp(d.ReceivedAt), d.Outcome, d.StatusCode, d.ItemCount, d.BodySHA256)
	if d.FieldErrorCount > 0 {
		fieldErrorsTable(s.tw, d)
	}
	return s.sw.err
}

// fieldErrorsTable prints a refused request's field errors, those its row
// keeps, one a line, after a line saying how many its answer listed.
func fieldErrorsTable(w io.Writer, d store.DeliveryRecord) {
	n, kept := d.FieldErrorCount, len(d.FieldErrors)
	fmt.Fprintf(w, "  Field errors: %d in the answer", n)
	if n >= payload.MaxListedErrors {
		fmt.Fprint(w, " (the most it lists: there may be more)")
	}
	switch {
	case kept == 0:
		fmt.Fprint(w, "; none kept (when it was refused, the receiver's queue of failed deliveries already held as many errors as it may)")
	case kept < n:
		fmt.Fprintf(w, "; the first %d kept", kept)
	}
	fmt.Fprintln(w)
	if kept == 0 {
		return
	}
	fmt.Fprintln(w, "  ENTRY\tFIELD\tERROR")
	for _, e := range d.FieldErrors {
		// Index -1 and no field: the body as a whole (a 400's malformed JSON).
		entry, field := strconv.Itoa(e.Index), e.Field
		if e.Index < 0 {
			entry = "-"
		}
		if field == "" {
			field = "-"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\n", entry, cell(field), cell(e.Message))
	}
}

func (s *showTable) entry(q store.QuarantineRecord) error {
	if s.entries == 0 {
		fmt.Fprintln(s.tw, "  ENTRY\tQUARANTINE ID\tREPLAYED\tCONTENT\tERRORS")
	}
	s.entries++
	replayed, kept := "-", "kept"
	if q.ReplayedAt != nil {
		replayed = stamp(*q.ReplayedAt)
	}
	if q.ContentDropped {
		kept = "dropped by retention"
	}
	errs := make([]string, len(q.Errors))
	for k, e := range q.Errors {
		errs[k] = cell(e.Field) + ": " + cell(e.Message)
	}
	fmt.Fprintf(s.tw, "  %d\t%d\t%s\t%s\t%s\n", q.EntryIndex, q.ID, replayed, kept, strings.Join(errs, "; "))
	if s.content && q.Raw != nil {
		// Past the tabwriter, which would take a tab of the entry (JSON
		// whitespace) for a cell's end, pad it and widen the entries'
		// columns to its text. The line ended the block anyway.
		if err := s.tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(s.sw, "    raw: %s\n", printable(q.Raw, tableLine))
	}
	return s.sw.err
}
