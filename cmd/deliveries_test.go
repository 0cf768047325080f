package cmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/replay"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// A patient name that must only appear when asked for.
const secretName = "Zebulon"

func quarantinedEntry(id, birth string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"appointment":{"id":%q,"status":"booked","start_time":"03/10/2026 14:30",
"start_date":"03/10/2026","created_time":"03/01/2026 09:00","type":"Follow-up"},
"patient":{"id":"pat-1","first_name":%q,"last_name":"Doe","birth_date":%q,"gender":"Female"},
"practitioner":{"id":"prov-1","first_name":"John","last_name":"Smith"}}`, id, secretName, birth))
}

// seedDeliveries writes a stored delivery and one with two quarantined
// entries, one of which is valid by today's rules.
func seedDeliveries(t *testing.T) string {
	t.Helper()
	u, st := seedStore(t)
	defer st.Close()
	at := time.Now().Add(-time.Hour)
	d := func(req string, o store.Outcome, n int) store.Delivery {
		return store.Delivery{EHR: "nexus", RequestID: req, ReceivedAt: at, BodySHA256: sha256.Sum256([]byte(req)),
			ItemCount: n, Outcome: o, StatusCode: 200}
	}
	if _, err := st.Write(context.Background(), store.Batch{Delivery: d("req-ok", store.OutcomeStored, 0)}); err != nil {
		t.Fatal(err)
	}
	fe := func(i int) []payload.FieldError {
		return []payload.FieldError{{Index: i, Field: fmt.Sprintf("appointments[%d].patient.gender", i), Message: "must be one of …"}}
	}
	_, err := st.Write(context.Background(), store.Batch{Delivery: d("req-q", store.OutcomeQuarantined, 2),
		Quarantined: []store.Quarantined{
			{Index: 0, Raw: quarantinedEntry("apt-1", "05/15/1990"), Errors: fe(0)},
			{Index: 1, Raw: quarantinedEntry("apt-2", "05/15/2990"), Errors: fe(1)},
		}})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// runOut runs the command line and returns what it printed.
func runOut(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

func TestDeliveriesCommands(t *testing.T) {
	u := seedDeliveries(t)
	db := []string{"--database-url", u}
	mustRun := runner(t, db)

	var ds []store.DeliveryRecord
	if err := json.Unmarshal([]byte(mustRun("deliveries", "list", "--ehr", "nexus", "--since", "2h", "-o", "json")), &ds); err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 {
		t.Fatalf("%d deliveries listed, want 2", len(ds))
	}
	byReq := map[string]store.DeliveryRecord{}
	for _, d := range ds {
		byReq[d.RequestID] = d
	}
	if q := byReq["req-q"]; q.Quarantined != 2 || q.Pending != 2 || q.Outcome != store.OutcomeQuarantined {
		t.Errorf("req-q listed as %+v, want 2 quarantined, 2 pending", q)
	}
	if out := mustRun("deliveries", "list", "--outcome", "stored"); !strings.Contains(out, "req-ok") || strings.Contains(out, "req-q") {
		t.Errorf("list --outcome stored:\n%s", out)
	}
	if out := mustRun("deliveries", "list", "--until", "2h"); strings.Contains(out, "req-") {
		t.Errorf("list --until 2h ago shows deliveries of an hour ago:\n%s", out)
	}

	show := mustRun("deliveries", "show", "--request-id", "req-q")
	if !strings.Contains(show, "appointments[1].patient.gender: must be one of") {
		t.Errorf("show lacks the entries' errors:\n%s", show)
	}
	if show := mustRun("deliveries", "show", "--request-id", "req-q", "--include-patient-data"); !strings.Contains(show, secretName) {
		t.Errorf("show --include-patient-data lacks the entries:\n%s", show)
	}
	if _, err := runOut(t, append([]string{"deliveries", "show"}, db...)...); err == nil {
		t.Error("show without a selection was accepted")
	}
	// Patient data is asked for on the command line, each time: a
	// variable left set in a shell does not switch it on.
	t.Setenv("INCLUDE_PATIENT_DATA", "true")
	if show := mustRun("deliveries", "show", "--request-id", "req-q"); strings.Contains(show, secretName) {
		t.Errorf("INCLUDE_PATIENT_DATA printed the entries:\n%s", show)
	}
	// A typo, an empty range, a missing id: an error, never an empty
	// answer that reads as "no such delivery".
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"list", "--outcome", "stord"}, "records only"},
		{[]string{"list", "--outcome", "rate_limited"}, "records only"},
		{[]string{"list", "--limit", "-5"}, "--limit -5"},
		{[]string{"list", "--ehr", "Nexus"}, "DNS label"},
		{[]string{"replay", "--ehr", "nexus ", "--time-zone", "UTC"}, "DNS label"},
		{[]string{"list", "--since", "1h", "--until", "2h"}, "is not before"},
		{[]string{"show", "999999"}, "no delivery with id [999999]"},
		{[]string{"show", strconv.FormatInt(ds[0].ID, 10), "999998"}, "no delivery with id [999998]"},
		{[]string{"show", "999997", "999996", "999997"}, "no delivery with id [999997 999996] "},
	} {
		out, err := runOut(t, append(append([]string{"deliveries"}, tc.args...), db...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("deliveries %v: %v (printed %q), want an error saying %q", tc.args, err, out, tc.want)
		}
	}
	if out := mustRun("deliveries", "list", "--limit", "1"); !strings.Contains(out, "showing the first 1 (--limit)") {
		t.Errorf("list cut at --limit says nothing of it:\n%s", out)
	}

	if _, err := runOut(t, append([]string{"deliveries", "replay", "--ehr", "nexus"}, db...)...); err == nil ||
		!strings.Contains(err.Error(), "--time-zone") {
		t.Errorf("replay without a time zone: %v", err)
	}
	dry := mustRun("deliveries", "replay", "--ehr", "nexus", "--time-zone", "America/Chicago", "--dry-run")
	t.Logf("deliveries replay --dry-run:\n%s", dry)
	if !strings.Contains(dry, "Dry run: nothing written.") || !strings.Contains(dry, "Valid now          1") {
		t.Errorf("dry run:\n%s", dry)
	}
	var rep replay.Report
	repJSON := mustRun("deliveries", "replay", "--ehr", "nexus", "--time-zone", "America/Chicago", "-o", "json")
	if err := json.Unmarshal([]byte(repJSON), &rep); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"examined":`, `"written":`, `"stillInvalid":`} {
		if !strings.Contains(repJSON, key) {
			t.Errorf("replay -o json lacks the key %s (keys are camelCase, as list's and show's):\n%s", key, repJSON)
		}
	}
	if rep.Examined != 2 || rep.Written != 1 || len(rep.StillInvalid) != 1 || rep.StillInvalid[0].EntryIndex != 1 {
		t.Errorf("replay report %+v, want 2 examined, 1 written, entry 1 still invalid", rep)
	}
	out := mustRun("deliveries", "list", "--request-id", "req-q")
	t.Logf("deliveries list --request-id req-q:\n%s", out)
	if !strings.Contains(out, "replayed") {
		t.Errorf("the replay is not listed under its request id:\n%s", out)
	}
	show = mustRun("deliveries", "show", "--request-id", "req-q", "--outcome", "quarantined")
	t.Logf("deliveries show --request-id req-q --outcome quarantined:\n%s", show)
	if strings.Count(show, "kept") != 2 || strings.Count(show, "  -  ") != 1 {
		t.Errorf("show after replay:\n%s", show)
	}
}

// A database that stops answering (frozen: it takes the bytes and never
// answers) does not hold the command past --timeout and abandonAfter:
// lib/pq cannot interrupt its read, so the command leaves it behind.
func TestDeliveriesGiveUpOnASilentDatabase(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	u := cluster.NewDatabase(t)
	old := abandonAfter
	abandonAfter = time.Second
	t.Cleanup(func() { abandonAfter = old })
	cluster.Freeze(t)
	start := time.Now()
	out, err := runOut(t, "deliveries", "list", "--database-url", u, "--timeout", "1s")
	if err == nil || !strings.Contains(err.Error(), "has not answered for 1s since: exiting without waiting for it") {
		t.Errorf("list against a frozen database: %v\n%s", err, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("list returned %s after it started, want about --timeout and abandonAfter (2 s)", d.Round(time.Millisecond))
	}
}

// seedRefused records refused requests as the receiver's delivery log
// does: a rejected batch, one whose answer listed more errors than are
// kept, a malformed body's 400, one whose errors the receiver could not
// keep, and a bad signature (no errors).
func seedRefused(t *testing.T) string {
	t.Helper()
	u, st := seedStore(t)
	defer st.Close()
	at := time.Now().Add(-30 * time.Minute)
	d := func(req string, o store.Outcome, status, count int, errs ...payload.FieldError) store.Delivery {
		at = at.Add(time.Second)
		return store.Delivery{EHR: "nexus", RequestID: req, ReceivedAt: at, BodySHA256: sha256.Sum256([]byte(req)), ItemCount: 4,
			Outcome: o, StatusCode: status, FieldErrorCount: count, FieldErrors: errs}
	}
	var many []payload.FieldError
	for i := range store.MaxFieldErrors {
		many = append(many, payload.FieldError{Index: i, Field: fmt.Sprintf("appointments[%d].patient", i), Message: "is required"})
	}
	err := st.RecordDeliveries(context.Background(), []store.Delivery{
		d("req-rejected", store.OutcomeRejected, 422, 3,
			payload.FieldError{Index: 1, Field: "appointments[1].patient.birth_date", Message: "must be a real calendar date"},
			payload.FieldError{Index: 3, Field: "appointments[3].appointment.status", Message: "must be one of booked, …"},
			payload.FieldError{Index: 3, Field: "appointments[3].practitioner.id", Message: "is required"}),
		d("req-many", store.OutcomeRejected, 422, payload.MaxListedErrors, many...),
		d("req-malformed", store.OutcomeInvalidBody, 400, 1, payload.FieldError{Index: -1, Message: "malformed JSON at byte offset 18"}),
		d("req-unkept", store.OutcomeRejected, 422, 5),
		d("req-signature", store.OutcomeBadSignature, 401, 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// show prints a refused request's field errors, as a table and as JSON;
// list does not.
func TestDeliveriesShowFieldErrors(t *testing.T) {
	u := seedRefused(t)
	mustRun := runner(t, []string{"--database-url", u})
	show := mustRun("deliveries", "show", "--outcome", "rejected", "--since", "1h")
	t.Logf("deliveries show --outcome rejected --since 1h:\n%s", show)
	for _, want := range []string{
		"outcome rejected  status 422  items 4  body sha256 ",
		"  Field errors: 3 in the answer\n" +
			"  ENTRY  FIELD                               ERROR\n" +
			"  1      appointments[1].patient.birth_date  must be a real calendar date\n" +
			"  3      appointments[3].appointment.status  must be one of booked, …\n" +
			"  3      appointments[3].practitioner.id     is required\n",
		"  Field errors: 100 in the answer (the most it lists: there may be more); the first 10 kept\n",
		"  9      appointments[9].patient  is required\n",
		"  Field errors: 5 in the answer; none kept (when it was refused, the receiver's queue of failed deliveries already held as many errors as it may)\n",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks\n%s", want)
		}
	}
	if strings.Contains(show, "req-malformed") || strings.Contains(show, "req-signature") {
		t.Errorf("show --outcome rejected shows other outcomes:\n%s", show)
	}

	var ids []store.DeliveryRecord
	if err := json.Unmarshal([]byte(mustRun("deliveries", "list", "--since", "1h", "-o", "json")), &ids); err != nil {
		t.Fatal(err)
	}
	byReq := map[string]int64{}
	for _, d := range ids {
		byReq[d.RequestID] = d.ID
		if d.FieldErrorCount != 0 || d.FieldErrors != nil {
			t.Errorf("list printed %s's field errors: list is unchanged", d.RequestID)
		}
	}
	malformed := mustRun("deliveries", "show", strconv.FormatInt(byReq["req-malformed"], 10))
	if want := "  Field errors: 1 in the answer\n  ENTRY  FIELD  ERROR\n  -      -      malformed JSON at byte offset 18\n"; !strings.HasSuffix(malformed, want) {
		t.Errorf("show of the malformed body's delivery:\n%s\nwant it to end\n%s", malformed, want)
	}
	if signature := mustRun("deliveries", "show", strconv.FormatInt(byReq["req-signature"], 10)); strings.Contains(signature, "Field errors") {
		t.Errorf("show of a delivery without field errors:\n%s", signature)
	}

	var shown []shownAtOnce
	raw := mustRun("deliveries", "show", "--request-id", "req-rejected", "-o", "json")
	if err := json.Unmarshal([]byte(raw), &shown); err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if len(shown) != 1 || shown[0].FieldErrorCount != 3 || len(shown[0].FieldErrors) != 3 ||
		shown[0].FieldErrors[2] != (payload.FieldError{Index: 3, Field: "appointments[3].practitioner.id", Message: "is required"}) {
		t.Errorf("show -o json: %+v", shown)
	}
	for _, key := range []string{`"fieldErrorCount": 3,`, `"fieldErrors": [`, `"index": 1,`, `"field": "appointments[1].patient.birth_date",`} {
		if !strings.Contains(raw, key) {
			t.Errorf("show -o json lacks %s:\n%s", key, raw)
		}
	}

	// Streamed, the JSON is json.Encoder's of the whole slice, field
	// errors included.
	st, err := store.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var all []shownAtOnce
	err = st.EachDeliveryWithEntries(context.Background(), store.DeliveryFilter{EHR: "nexus"}, false, func(d store.DeliveryRecord) error {
		all = append(all, shownAtOnce{DeliveryRecord: d, QuarantinedEntries: []store.QuarantineRecord{}})
		return nil
	}, func(store.QuarantineRecord) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	enc := json.NewEncoder(&want)
	enc.SetIndent("", "  ")
	if err := enc.Encode(all); err != nil {
		t.Fatal(err)
	}
	if got := mustRun("deliveries", "show", "--ehr", "nexus", "--since", "1h", "-o", "json"); got != want.String() {
		t.Errorf("show -o json printed\n%s\nwant, as encoded at once,\n%s", got, want.String())
	}
}

// seedStore opens a store on a new database, for a test to seed.
func seedStore(t *testing.T) (string, *store.Store) {
	t.Helper()
	u := pgtest.NewDatabase(t)
	st, err := store.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	return u, st
}

// An entry is kept as sent (the receiver quarantines it), bytes that are
// not UTF-8 and characters a terminal acts on included. -o json prints
// UTF-8 JSON that reads as the entry: each byte that is not UTF-8 as
// U+FFFD, as a JSON decoder reads it (strict parsers refuse anything
// else), and the C1 controls, DEL and bidirectional controls as \u
// escapes. The table shows the same with \xNN for such a byte and \r for
// a carriage return; nothing of it reaches the terminal raw.
func TestDeliveriesShowPrintsEntriesSafely(t *testing.T) {
	u, st := seedStore(t)
	raw := json.RawMessage("{\"appointment\":{\"id\":\"apt-\xff\x9b\"},\r\"patient\":{\"first_name\":\"" + secretName + "\xc3\u009b\u202e\x7f\"}}")
	_, err := st.Write(context.Background(), store.Batch{
		Delivery: store.Delivery{EHR: "nexus", RequestID: "req-utf8", ReceivedAt: time.Now().Add(-time.Minute),
			BodySHA256: sha256.Sum256(raw), ItemCount: 1, Outcome: store.OutcomeQuarantined, StatusCode: 200},
		Quarantined: []store.Quarantined{{Index: 0, Raw: raw, Errors: []payload.FieldError{
			{Index: 0, Field: "appointments[0].appointment.id", Message: "must be valid UTF-8"}}}},
	})
	_ = st.Close()
	if err != nil {
		t.Fatal(err)
	}
	acted := []string{"\x9b", "\u009b", "\u202e", "\x7f", "\r"}
	printsNoneOf := func(out string) {
		t.Helper()
		for _, c := range acted {
			if strings.Contains(out, c) {
				t.Errorf("show printed %q raw:\n%q", c, out)
			}
		}
	}
	show := []string{"deliveries", "show", "--database-url", u, "--request-id", "req-utf8", "--include-patient-data"}
	var out bytes.Buffer
	if stderr, err := runTo(t, &out, append(show, "-o", "json")...); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !utf8.Valid(out.Bytes()) || !json.Valid(out.Bytes()) {
		t.Fatalf("show -o json printed text that is not UTF-8 JSON:\n%q", out.String())
	}
	printsNoneOf(out.String())
	var shown []struct {
		QuarantinedEntries []struct {
			Raw struct {
				Appointment struct{ ID string }
				Patient     struct {
					FirstName string `json:"first_name"`
				}
			}
		}
	}
	if err := json.Unmarshal(out.Bytes(), &shown); err != nil {
		t.Fatal(err)
	}
	if len(shown) != 1 || len(shown[0].QuarantinedEntries) != 1 {
		t.Fatalf("show -o json printed %+v, want one delivery with one entry", shown)
	}
	e := shown[0].QuarantinedEntries[0].Raw
	if e.Appointment.ID != "apt-\uFFFD\uFFFD" || e.Patient.FirstName != secretName+"\uFFFD\u009b\u202e\x7f" {
		t.Errorf("the entry reads %+q, want each byte that is not UTF-8 as U+FFFD, every character else as sent", e)
	}
	out.Reset()
	if stderr, err := runTo(t, &out, show...); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	printsNoneOf(out.String())
	want := `    raw: {"appointment":{"id":"apt-\xff\x9b"},\r"patient":{"first_name":"` + secretName + `\xc3\u009b\u202e\u007f"}}` + "\n"
	if !strings.Contains(out.String(), want) {
		t.Errorf("show's table printed\n%s\nwant the line\n%s", out.String(), want)
	}
}

// show's table prints each entry as kept, past its tabwriter: a tab in an
// entry (JSON whitespace) was taken for a cell's end, and the byte 0xff
// (not UTF-8, kept as sent) for the tabwriter's escape, which left every
// table after it unaligned, its tabs printed as they were.
func TestDeliveriesShowTablePrintsEntriesAsKept(t *testing.T) {
	u := pgtest.NewDatabase(t)
	st, err := store.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-time.Hour)
	entries := [][]json.RawMessage{
		{json.RawMessage("{\"appointment\":\t{\"id\":\"apt-1\"},\t\"x\":1}"), json.RawMessage("{\"appointment\":{\"id\":\"apt-\xff\"}}")},
		{json.RawMessage(`{"appointment":{"id":"apt-3"}}`)},
	}
	for d, raws := range entries {
		req := fmt.Sprintf("req-%d", d)
		qs := make([]store.Quarantined, len(raws))
		for i, raw := range raws {
			qs[i] = store.Quarantined{Index: i, Raw: raw, Errors: []payload.FieldError{
				{Index: i, Field: fmt.Sprintf("appointments[%d].patient", i), Message: "is required"}}}
		}
		_, err := st.Write(context.Background(), store.Batch{
			Delivery: store.Delivery{EHR: "nexus", RequestID: req, ReceivedAt: at.Add(time.Duration(-d) * time.Minute),
				BodySHA256: sha256.Sum256([]byte(req)), ItemCount: len(raws), Outcome: store.OutcomeQuarantined, StatusCode: 200},
			Quarantined: qs,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	_ = st.Close()
	var out bytes.Buffer
	if stderr, err := runTo(t, &out, "deliveries", "show", "--database-url", u, "--since", "2h", "--include-patient-data"); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	t.Logf("show --include-patient-data:\n%s", out.String())
	for _, raws := range entries {
		for _, raw := range raws {
			if !strings.Contains(out.String(), "    raw: "+string(printable(raw, tableLine))+"\n") {
				t.Errorf("show's table does not print the entry %q as kept", raw)
			}
		}
	}
	const header = "  ENTRY  QUARANTINE ID  REPLAYED  CONTENT  ERRORS\n"
	if n := strings.Count(out.String(), header); n != 2 {
		t.Errorf("%d entries' headers laid out as %q, want one per delivery", n, header)
	}
}

// runner runs a command with the database flags db, failing the test when
// it fails or prints patient data without --include-patient-data.
func runner(t *testing.T, db []string) func(args ...string) string {
	return func(args ...string) string {
		t.Helper()
		out, err := runOut(t, append(args, db...)...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		if strings.Contains(out, secretName) && !strings.Contains(strings.Join(args, " "), "--include-patient-data") {
			t.Errorf("%v printed patient data:\n%s", args, out)
		}
		return out
	}
}

// A row's field errors are printed as safely as an entry: the receiver
// writes printable paths and rules, but a row holds whatever was written
// to it. A control character, a tab or newline (which broke the table's
// cells and lines), DEL, a C1 control (U+009B is a terminal's CSI), a
// bidirectional control and a byte that is not UTF-8 reach neither the
// table (a refused request's errors, a quarantined entry's) nor -o json
// raw, and -o json reads as stored.
func TestDeliveriesShowPrintsFieldErrorsSafely(t *testing.T) {
	u, st := seedStore(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Minute)
	odd := payload.FieldError{Index: 0, Field: "appointments[0].\tpatient\n\x1b[31mred", Message: "must be\r \u009b2J \u202eevil \x7f \xff"}
	err := st.RecordDeliveries(ctx, []store.Delivery{{EHR: "nexus", RequestID: "req-odd", ReceivedAt: at,
		BodySHA256: sha256.Sum256([]byte("odd")), ItemCount: 1, Outcome: store.OutcomeRejected, StatusCode: 422,
		FieldErrorCount: 1, FieldErrors: []payload.FieldError{odd}}})
	if err != nil {
		t.Fatal(err)
	}
	raw := quarantinedEntry("apt-odd", "05/15/1990")
	_, err = st.Write(ctx, store.Batch{
		Delivery: store.Delivery{EHR: "nexus", RequestID: "req-odd-q", ReceivedAt: at, BodySHA256: sha256.Sum256(raw),
			ItemCount: 1, Outcome: store.OutcomeQuarantined, StatusCode: 200},
		Quarantined: []store.Quarantined{{Index: 0, Raw: raw, Errors: []payload.FieldError{odd}}},
	})
	_ = st.Close()
	if err != nil {
		t.Fatal(err)
	}
	acted := []string{"\t", "\x1b", "\r", "\u009b", "\u202e", "\x7f", "\xff"}
	printsNoneOf := func(out string) {
		t.Helper()
		for _, c := range acted {
			if strings.Contains(out, c) {
				t.Errorf("show printed %q raw:\n%q", c, out)
			}
		}
	}
	mustRun := runner(t, []string{"--database-url", u})
	for _, req := range []string{"req-odd", "req-odd-q"} {
		table := mustRun("deliveries", "show", "--request-id", req)
		printsNoneOf(table)
		if lines := strings.Count(table, "\n"); req == "req-odd" && lines != 4 || req == "req-odd-q" && lines != 3 {
			t.Errorf("show --request-id %s printed %d lines:\n%s", req, lines, table)
		}
		// The byte 0xff was stored as U+FFFD (the column is jsonb).
		const path, msg = `appointments[0].\u0009patient\u000a\u001b[31mred`, `must be\u000d \u009b2J \u202eevil \u007f ` + "\uFFFD"
		if !strings.Contains(table, path) || !strings.Contains(table, msg) {
			t.Errorf("show --request-id %s printed\n%s\nwant the path as %s and the message as %s", req, table, path, msg)
		}
		out := mustRun("deliveries", "show", "--request-id", req, "-o", "json")
		printsNoneOf(out)
		if !json.Valid([]byte(out)) {
			t.Fatalf("show -o json printed what is not JSON:\n%s", out)
		}
		var shown []struct {
			FieldErrors        []payload.FieldError
			QuarantinedEntries []struct{ Errors []payload.FieldError }
		}
		if err := json.Unmarshal([]byte(out), &shown); err != nil {
			t.Fatal(err)
		}
		errs := shown[0].FieldErrors
		if req == "req-odd-q" {
			errs = shown[0].QuarantinedEntries[0].Errors
		}
		want := odd
		want.Message = strings.ToValidUTF8(odd.Message, "\uFFFD")
		if len(errs) != 1 || errs[0] != want {
			t.Errorf("show -o json of %s reads %+v, want %+v", req, errs, want)
		}
	}
}

// TestMissingIDs: what show names as missing, before it prints (a typo)
// and after (a delivery retention pruned while it ran): each id once, in
// the order given.
func TestMissingIDs(t *testing.T) {
	found := map[int64]bool{2: true, 4: true}
	if got := missingIDs([]int64{3, 2, 1, 3, 4, 1}, found); !slices.Equal(got, []int64{3, 1}) {
		t.Errorf("missingIDs = %v, want [3 1]", got)
	}
	if got := missingIDs([]int64{2, 4, 2}, found); got != nil {
		t.Errorf("missingIDs = %v, want none", got)
	}
}
