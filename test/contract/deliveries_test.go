package contract

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
)

// A batch refused under Reject, and a malformed body, keep the errors
// their answers listed in the delivery log: `deliveries show`, the real
// command on the receiver's database, prints them after the pods' logs
// are gone, and prints no value of what was sent.
func TestDeliveriesShowRefusedErrors(t *testing.T) {
	r := startReceiver(t, pgtest.NewDatabase(t), "--on-invalid", "Reject")
	d := db(t, r.dbURL)
	sent := []string{"02/30/1990", "45 minutes", strings.Repeat("Zyxw", 70), "Quillon"}
	body := batch(t,
		entry(t, "rej-0", nil),
		entry(t, "rej-1", func(e map[string]any) {
			sub(e, "patient")["birth_date"] = sent[0]
			sub(e, "appointment")["duration"] = sent[1]
		}),
		entry(t, "rej-2", func(e map[string]any) {
			sub(e, "patient")["first_name"] = sent[2]
			sub(e, "patient")["last_name"] = sent[3]
			delete(sub(e, "practitioner"), "id")
		}),
	)
	rejected := r.post(body, withHeader("X-Request-ID", "refused-batch"))
	expect(t, rejected, 422)
	if len(rejected.body.Errors) != 4 {
		t.Fatalf("the answer's errors: %v, want 4", fieldsOf(rejected))
	}
	malformed := []byte(`{"appointments":[{"patient":{"first_name":"Quillon"}}]} trailing Quillon`)
	broken := r.post(malformed, withHeader("X-Request-ID", "malformed-body"))
	expect(t, broken, 400)
	if n := failedDeliveries(t, d, 2, `SELECT count(*) FROM webhook_deliveries WHERE status_code <> 200`); n != 2 {
		t.Fatalf("%d failed deliveries recorded, want 2", n)
	}
	// The receiver is gone, and its log with it: the delivery log is what is left.
	_ = r.Stop()
	id := queryInt(t, d, `SELECT id FROM webhook_deliveries WHERE request_id = 'refused-batch'`)

	show := func(args ...string) string {
		t.Helper()
		out, err := run(t, nil, append(append([]string{"deliveries", "show"}, args...), "--database-url", r.dbURL)...)
		if err != nil {
			t.Fatalf("deliveries show %v: %v\n%s", args, err, out)
		}
		return out
	}
	table := show(strconv.Itoa(id))
	t.Logf("deliveries show %d:\n%s", id, table)
	containsAll(t, table, "request refused-batch", "outcome rejected  status 422  items 3",
		"Field errors: 4 in the answer\n", "ENTRY  FIELD")
	for _, e := range rejected.body.Errors {
		line := regexp.MustCompile(`(?m)^  ` + strconv.Itoa(e.Index) + ` +` + regexp.QuoteMeta(e.Field) + ` +` + regexp.QuoteMeta(e.Message) + `$`)
		if !line.MatchString(table) {
			t.Errorf("show lacks the line of %d %s: %s", e.Index, e.Field, e.Message)
		}
	}

	var shown []struct {
		RequestID       string               `json:"requestId"`
		Outcome         string               `json:"outcome"`
		FieldErrorCount int                  `json:"fieldErrorCount"`
		FieldErrors     []payload.FieldError `json:"fieldErrors"`
	}
	raw := show("--outcome", "rejected", "--since", "1h", "-o", "json")
	if err := json.Unmarshal([]byte(raw), &shown); err != nil {
		t.Fatalf("show -o json: %v\n%s", err, raw)
	}
	if len(shown) != 1 || shown[0].RequestID != "refused-batch" || shown[0].FieldErrorCount != 4 {
		t.Fatalf("show --outcome rejected -o json: %s", raw)
	}
	if diff := cmp.Diff(rejected.body.Errors, shown[0].FieldErrors); diff != "" {
		t.Errorf("the errors shown are not the answer's (-answer +shown):\n%s", diff)
	}

	// The malformed body's 400: where its JSON broke, never what is there.
	bad := show("--request-id", "malformed-body")
	t.Logf("deliveries show --request-id malformed-body:\n%s", bad)
	containsAll(t, bad, "outcome invalid_body  status 400", "Field errors: 1 in the answer\n",
		fmt.Sprintf("  -      -      %s\n", broken.body.Errors[0].Message))

	// No value sent, in any of it.
	values := stringValues(t, body)
	values = append(values, sent...)
	for _, out := range []string{table, raw, bad} {
		for _, v := range values {
			if strings.Contains(out, v) {
				t.Errorf("deliveries show printed %q, a value sent:\n%s", v, out)
			}
		}
	}
	if n := queryInt(t, d, `SELECT count(*) FROM webhook_deliveries WHERE `+
		`field_errors::text LIKE '%Quillon%' OR field_errors::text LIKE '%02/30/1990%' OR field_errors::text LIKE '%Zyxw%'`); n != 0 {
		t.Errorf("%d rows' field errors hold a value sent", n)
	}
}
