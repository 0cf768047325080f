package receiver

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/insighthealth/ehr-operator/internal/pgtest"
	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

func testEntry(id, status string) payload.Entry {
	return payload.Entry{
		Appointment:  payload.Appointment{ID: id, Status: status, StatusRaw: status, Type: "Follow-up"},
		Patient:      payload.Patient{ID: "pat-" + id, FirstName: "Jane", LastName: "Doe", Gender: "Female"},
		Practitioner: payload.Practitioner{ID: "prov-1", FirstName: "John", LastName: "Smith"},
	}
}

// firstReceived looks the entries up at now and returns when each was
// first received, and whether any was known.
func firstReceived(m *versionMemory, now time.Time, entries ...payload.Entry) ([]time.Time, bool) {
	vs, known := m.lookup(entries, now)
	out := make([]time.Time, len(vs))
	for i, v := range vs {
		out[i] = v.FirstReceived
	}
	return out, known
}

func TestVersionMemory(t *testing.T) {
	t.Parallel()
	m := newVersionMemory("nexus", prometheus.NewRegistry())
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	a, b, c := testEntry("a", "booked"), testEntry("b", "booked"), testEntry("a", "cancelled")

	// Nothing remembered: every version is first received now.
	vs, known := m.lookup([]payload.Entry{a, b}, t0)
	if known || !vs[0].FirstReceived.Equal(t0) || !vs[1].FirstReceived.Equal(t0) || vs[0].Hash != store.ContentHash(a) {
		t.Fatalf("lookup on an empty memory: %+v known %v", vs, known)
	}
	// The request failed: its versions are remembered as first received then.
	m.remember(vs, t0)
	got, known := firstReceived(m, t0.Add(time.Minute), a, c, b)
	if want := []time.Time{t0, t0.Add(time.Minute), t0}; !known || !slicesEqual(got, want) {
		t.Errorf("after a failure: %v known %v, want %v", got, known, want)
	}
	// A retry that fails again keeps the first time.
	vs, _ = m.lookup([]payload.Entry{a}, t0.Add(2*time.Minute))
	m.remember(vs, t0.Add(2*time.Minute))
	if got, _ := firstReceived(m, t0.Add(3*time.Minute), a); !got[0].Equal(t0) {
		t.Errorf("after a second failure a was first received %v, want %v", got[0], t0)
	}
	// Stored: forgotten.
	m.forget(vs)
	if got, _ := firstReceived(m, t0.Add(4*time.Minute), a, b); !got[0].Equal(t0.Add(4*time.Minute)) || !got[1].Equal(t0) {
		t.Errorf("after a was stored: %v, want a now and b still %v", got, t0)
	}
	// Past the age bound: forgotten.
	if _, known := firstReceived(m, t0.Add(rememberVersionsFor+time.Second), b); known {
		t.Error("b is remembered after rememberVersionsFor")
	}
	m.forget([]store.Version{{Hash: store.ContentHash(b)}})
	if len(m.first) != 0 || m.ring != nil {
		t.Errorf("an empty memory keeps %d versions and a ring of %d", len(m.first), len(m.ring))
	}
}

func slicesEqual(a, b []time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// scrape is reg's metrics as /metrics shows them.
func scrape(reg *prometheus.Registry) string {
	w := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	return w.Body.String()
}

// expectMemory checks how many versions m remembers and has evicted, by
// its metrics.
func expectMemory(t *testing.T, reg *prometheus.Registry, when string, remembered, evicted int) {
	t.Helper()
	m := scrape(reg)
	for _, line := range []string{
		fmt.Sprintf(`ehr_receiver_remembered_versions{ehr="nexus"} %d`, remembered),
		fmt.Sprintf(`ehr_receiver_remembered_versions_evicted_total{ehr="nexus"} %d`, evicted),
	} {
		if !strings.Contains(m, line+"\n") {
			t.Errorf("%s: metrics lack %s", when, line)
		}
	}
}

// versionsAt are n distinct versions first received at t.
func versionsAt(from, n int, t time.Time) []store.Version {
	vs := make([]store.Version, n)
	for i := range vs {
		vs[i] = store.Version{Hash: sha256.Sum256(binary.AppendUvarint(nil, uint64(from+i))), FirstReceived: t}
	}
	return vs
}

// The count bound pushes out the oldest remembered versions, counting
// them; the age bound drops old ones at the next failure, without
// counting them; forgotten versions take no room once pushed out.
func TestVersionMemoryBounds(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m := newVersionMemory("nexus", reg)
	m.maxCount = 100
	t0 := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for i := range 5 { // 150 versions in batches of 30, a second apart
		m.remember(versionsAt(30*i, 30, t0.Add(time.Duration(i)*time.Second)), t0.Add(time.Duration(i)*time.Second))
	}
	expectMemory(t, reg, "150 versions", 100, 50)
	if _, ok := m.first[keyOf(versionsAt(49, 1, t0)[0].Hash)]; ok {
		t.Error("version 49, among the oldest 50, is still remembered")
	}
	if _, ok := m.first[keyOf(versionsAt(50, 1, t0)[0].Hash)]; !ok {
		t.Error("version 50, among the newest 100, is forgotten")
	}
	// Versions stored by their retry leave stale places in the queue: new
	// failures push those out first, not the versions still remembered.
	m.forget(versionsAt(50, 40, t0))
	m.remember(versionsAt(1000, 40, t0.Add(10*time.Second)), t0.Add(10*time.Second))
	expectMemory(t, reg, "after 40 stored and 40 new", 100, 50)
	// A day later, one failure drops everything older than a day.
	later := t0.Add(rememberVersionsFor + 5*time.Second)
	m.remember(versionsAt(2000, 1, later), later)
	expectMemory(t, reg, "a day later", 41, 50)
	if m.n != len(m.first) {
		t.Errorf("the ring holds %d, the map %d", m.n, len(m.first))
	}
}

// The memory full, as after a long outage: what it costs, for the docs.
func TestVersionMemoryFootprint(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m := newVersionMemory("nexus", prometheus.NewRegistry())
	t0 := time.Now()
	for i := 0; i < 2*maxRememberedVersions; i += 100 {
		m.remember(versionsAt(i, 100, t0), t0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	mib := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	t.Logf("%d versions remembered: %.1f MiB of heap", len(m.first), mib)
	if len(m.first) != maxRememberedVersions {
		t.Errorf("%d versions remembered, want %d", len(m.first), maxRememberedVersions)
	}
	if mib > 12 {
		t.Errorf("the full memory takes %.1f MiB, want at most 12", mib)
	}
	runtime.KeepAlive(m)
}

// The sequence, in process: version A of an appointment is not
// stored (500: a constraint refuses it; 503: the schema is not migrated
// yet), version B is, and the retry of A is answered 200 but does not undo
// B: A is in the history as superseded, counted and logged.
func TestRetryOfOlderVersionIsSuperseded(t *testing.T) {
	ts := newTestServer(t, pgtest.NewDatabase(t), nil)
	entryWith := func(id, status string) string {
		return strings.Replace(entry(id), `"status":"booked"`, `"status":"`+status+`"`, 1)
	}
	exec := func(q string) {
		if _, err := ts.db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	for i, fail := range []struct {
		name        string
		breaks, fix func()
		status      int
	}{
		{"500", func() { exec(`ALTER TABLE appointments ADD CONSTRAINT versions_test_refuses CHECK (false) NOT VALID`) },
			func() { exec(`ALTER TABLE appointments DROP CONSTRAINT versions_test_refuses`) }, 500},
		{"503 before the migration", func() { ts.srv.db.migrated.Store(false) }, func() { ts.srv.db.migrated.Store(true) }, 503},
	} {
		id := fmt.Sprintf("apt-%d", i)
		a, b := batchOf(entryWith(id, "booked")), batchOf(entryWith(id, "cancelled"))
		fail.breaks()
		if w, _ := ts.post(t, a); w.Code != fail.status {
			t.Fatalf("%s: A answered %d, want %d", fail.name, w.Code, fail.status)
		}
		fail.fix()
		if w, _ := ts.post(t, b); w.Code != 200 {
			t.Fatalf("%s: B answered %d %s", fail.name, w.Code, w.Body)
		}
		w, rid := ts.post(t, a)
		if w.Code != 200 {
			t.Fatalf("%s: the retry of A answered %d %s", fail.name, w.Code, w.Body)
		}
		if line := ts.logLine(t, rid); line["superseded"] != 1.0 || line["written"] != 0.0 || line["duplicates"] != 0.0 {
			t.Errorf("%s: the retry's log line %v, want 1 superseded", fail.name, line)
		}
		var status string
		if err := ts.db.QueryRow(`SELECT status FROM appointments WHERE external_id = $1`, id).Scan(&status); err != nil {
			t.Fatal(err)
		}
		var history []string
		rows, err := ts.db.Query(`SELECT status || CASE WHEN superseded THEN ' (superseded)' ELSE '' END
			FROM appointment_history WHERE appointment_external_id = $1 ORDER BY id`, id)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var h string
			if err := rows.Scan(&h); err != nil {
				t.Fatal(err)
			}
			history = append(history, h)
		}
		rows.Close()
		if status != "cancelled" || strings.Join(history, ", ") != "cancelled, booked (superseded)" {
			t.Errorf("%s: the appointment is %s with history %v; want cancelled, then booked superseded", fail.name, status, history)
		}
		// Stored now (as superseded): no longer remembered.
		if _, known := ts.srv.versions.lookup(nil, time.Now()); known || len(ts.srv.versions.first) != 0 {
			t.Errorf("%s: %d versions still remembered", fail.name, len(ts.srv.versions.first))
		}
	}
	if m := scrape(ts.srv.metrics.registry); !strings.Contains(m, `ehr_receiver_appointments_superseded_total{ehr="nexus"} 2`+"\n") {
		t.Error("ehr_receiver_appointments_superseded_total is not 2")
	}
}
