// Package faults tests the receiver under load when things go wrong
// (architecture.md, "Schema and write path" and "Configuration and operation"): PostgreSQL stopped and started again, SIGTERM, and many
// senders writing the same appointments. Each test runs the real
// ehr-operator binary as a subprocess on a real PostgreSQL and speaks real
// HTTP to it on loopback; load is bounded in count and time.
package faults

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/insighthealth/ehr-operator/internal/harness"
	"github.com/insighthealth/ehr-operator/internal/pgtest"
)

// binary is the ehr-operator built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	var err error
	if binary, err = harness.BuildReceiver("../..", "ehr-operator-faults-test"); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	pgtest.Main(m)
}

// startReceiver runs the binary on dbURL with extra flags; it is stopped
// when the test ends (its log is shown if the test failed).
func startReceiver(t *testing.T, dbURL string, extra ...string) *harness.Receiver {
	t.Helper()
	r, err := harness.StartReceiver(binary, dbURL, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = r.Stop() // also removes the credentials directory of one that has exited
		if t.Failed() {
			t.Logf("receiver log (tail):\n%s", r.LogTail())
		}
	})
	return r
}

func openDB(t *testing.T, u string) *sql.DB {
	t.Helper()
	d, err := sql.Open("postgres", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// storedIDs is every appointment id in the database.
func storedIDs(t *testing.T, d *sql.DB) map[string]bool {
	t.Helper()
	rows, err := d.QueryContext(context.Background(), `SELECT external_id FROM appointments`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// waitFor polls cond every 20ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
	}
}

// version is one appointment's content as a sender sends it; notes and
// phone make each version's content (and content hash) its own.
type version struct {
	id, patient, practitioner, notes, phone string
}

func (v version) entry() map[string]any {
	return map[string]any{
		"appointment": map[string]any{"id": v.id, "status": "booked", "start_time": "03/10/2026 14:30",
			"start_date": "03/10/2026", "created_time": "03/01/2026 09:00", "type": "Follow-up", "notes": v.notes},
		"patient": map[string]any{"id": v.patient, "first_name": "Jane", "last_name": "Doe",
			"birth_date": "05/15/1990", "gender": "Female", "phone": v.phone},
		"practitioner": map[string]any{"id": v.practitioner, "first_name": "John", "last_name": "Smith"},
	}
}

func body(t *testing.T, vs []version) []byte {
	t.Helper()
	entries := make([]map[string]any, len(vs))
	for i, v := range vs {
		entries[i] = v.entry()
	}
	b, err := json.Marshal(map[string]any{"appointments": entries})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
