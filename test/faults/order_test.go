package faults

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// TestRetryAfterOutageDoesNotUndoNewerVersion runs the sequence of issue 11
// as a vendor would: version A of an appointment (booked) is answered 503
// while PostgreSQL is down; once it is up, version B (cancelled) is
// answered 200; the vendor's retry of A is answered 200 too, and the
// appointment stays cancelled, with A in its history as superseded. The
// same receiver process answers all three.
func TestRetryAfterOutageDoesNotUndoNewerVersion(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	dbURL := cluster.NewDatabase(t)
	r := startReceiver(t, dbURL)
	pid := r.Cmd.Process.Pid
	client := harness.NewClient(1)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	a, b := statusBody(t, "booked"), statusBody(t, "cancelled")

	if err := cluster.Stop(); err != nil {
		t.Fatal(err)
	}
	if ans := harness.Post(ctx, client, r.URL, a, "order-a-1"); ans.Err != nil || ans.Status != 503 || ans.RetryAfter == "" {
		t.Fatalf("A while PostgreSQL is down: %d %v Retry-After %q %s, want 503 with Retry-After", ans.Status, ans.Err, ans.RetryAfter, ans.Body)
	}
	if err := cluster.Start(); err != nil {
		t.Fatal(err)
	}
	// B, sent until it is stored, as a vendor retries a 503.
	var bTries int
	waitFor(t, 30*time.Second, func() bool {
		bTries++
		ans := harness.Post(ctx, client, r.URL, b, "order-b-"+strconv.Itoa(bTries))
		if ans.Err == nil && ans.Status != 200 && ans.Status != 503 {
			t.Fatalf("B answered %d %s", ans.Status, ans.Body)
		}
		return ans.Err == nil && ans.Status == 200
	})
	retry := harness.Post(ctx, client, r.URL, a, "order-a-2")
	if retry.Err != nil || retry.Status != 200 {
		t.Fatalf("the retry of A: %d %v %s, want 200", retry.Status, retry.Err, retry.Body)
	}
	if r.Cmd.Process.Pid != pid {
		t.Fatal("the receiver was restarted")
	}

	db := openDB(t, dbURL)
	var status string
	if err := db.QueryRowContext(ctx, `SELECT status FROM appointments WHERE external_id = 'apt-order'`).Scan(&status); err != nil {
		t.Fatal(err)
	}
	rows, err := db.QueryContext(ctx, `SELECT h.status, h.superseded, d.request_id FROM appointment_history h
		JOIN webhook_deliveries d ON d.id = h.delivery_id WHERE h.appointment_external_id = 'apt-order' ORDER BY h.id`)
	if err != nil {
		t.Fatal(err)
	}
	var history []string
	var lastRequest string
	for rows.Next() {
		var st, req string
		var superseded bool
		if err := rows.Scan(&st, &superseded, &req); err != nil {
			t.Fatal(err)
		}
		if superseded {
			st += " (superseded)"
		}
		history, lastRequest = append(history, st), req
	}
	rows.Close()
	t.Logf("after A 503, B 200 (try %d), A 200: the appointment is %s; history %v", bTries, status, history)
	if status != "cancelled" {
		t.Errorf("the appointment is %s, want cancelled", status)
	}
	if got := strings.Join(history, ", "); got != "cancelled, booked (superseded)" || lastRequest != "order-a-2" {
		t.Errorf("history %q, the last row by %s; want cancelled, then booked (superseded) by the retry order-a-2", got, lastRequest)
	}
	if line := logLine(t, r, "request order-a-2", func(l map[string]any) bool { return l["request_id"] == "order-a-2" && l["outcome"] != nil }); line["superseded"] != 1.0 || line["written"] != 0.0 {
		t.Errorf("the retry's log line %v, want superseded 1, written 0", line)
	}
	if _, m := get(t, r.MetricsURL+"/metrics"); !strings.Contains(m, `ehr_receiver_appointments_superseded_total{ehr="bench"} 1`+"\n") {
		t.Error("ehr_receiver_appointments_superseded_total is not 1")
	}
}

// statusBody is a batch of appointment apt-order with status.
func statusBody(t *testing.T, status string) []byte {
	t.Helper()
	e := version{id: "apt-order", patient: "pat-order", practitioner: "prov-order"}.entry()
	e["appointment"].(map[string]any)["status"] = status
	b, err := json.Marshal(map[string]any{"appointments": []any{e}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
