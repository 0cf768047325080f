package receiver

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/insighthealth/ehr-operator/receiver/payload"
	"github.com/insighthealth/ehr-operator/receiver/store"
)

// Bounds of the versions a receiver remembers; docs/webhook-api.md states
// them to vendors. Full, the memory takes about 9 MiB
// (TestVersionMemoryFootprint).
const (
	maxRememberedVersions = 100_000
	rememberVersionsFor   = 24 * time.Hour
)

// versionKey is the first half of a version's content hash: a smaller
// map, and a collision among 100,000 versions has a probability near 1e-29.
type versionKey [16]byte

// versionMemory remembers when this process first received each version
// (content hash, which covers the appointment id) that it could not store,
// so that its retry is written as first received then and cannot undo a
// newer version stored in between (docs/architecture.md, "Schema and write
// path"). A version is remembered when its request passed validation and
// was answered 500 or 503, and forgotten once stored (its history row then
// makes a redelivery a no-op), after rememberVersionsFor, or when
// maxRememberedVersions newer ones push it out. Successful requests touch
// it only to look up their entries, so it holds nothing in normal
// operation. Everything in it is free of pointers: the collector never
// scans it.
type versionMemory struct {
	mu    sync.Mutex
	first map[versionKey]int64 // Unix nanoseconds
	// ring holds the remembered versions in the order they were
	// remembered, n of them from start on; an element whose version was
	// forgotten or remembered anew since is stale and skipped. It grows
	// up to maxCount elements.
	ring     []rememberedVersion
	start, n int

	maxCount int
	maxAge   time.Duration
	evicted  prometheus.Counter
}

type rememberedVersion struct {
	key versionKey
	at  int64
}

func newVersionMemory(ehr string, reg prometheus.Registerer) *versionMemory {
	m := &versionMemory{
		first:    map[versionKey]int64{},
		maxCount: maxRememberedVersions,
		maxAge:   rememberVersionsFor,
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ehr_receiver", Name: "remembered_versions_evicted_total",
			Help:        "Versions not yet stored that the receiver forgot early because it remembered as many newer ones as it may.",
			ConstLabels: prometheus.Labels{"ehr": ehr},
		}),
	}
	reg.MustRegister(m.evicted, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "ehr_receiver", Name: "remembered_versions",
		Help:        "Versions received but not yet stored whose first receipt the receiver remembers.",
		ConstLabels: prometheus.Labels{"ehr": ehr},
	}, func() float64 {
		m.mu.Lock()
		defer m.mu.Unlock()
		return float64(len(m.first))
	}))
	return m
}

func keyOf(hash [32]byte) versionKey { return versionKey(hash[:16]) }

// lookup hashes the entries of a request received at received and says
// when each version was first received: received, or earlier for one it
// remembers (then known is true).
func (m *versionMemory) lookup(entries []payload.Entry, received time.Time) (vs []store.Version, known bool) {
	vs = make([]store.Version, len(entries))
	for i := range entries {
		vs[i] = store.Version{Hash: store.ContentHash(entries[i]), FirstReceived: received}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.first) == 0 {
		return vs, false
	}
	oldest := received.Add(-m.maxAge).UnixNano()
	for i := range vs {
		if at, ok := m.first[keyOf(vs[i].Hash)]; ok && at >= oldest && at < received.UnixNano() {
			vs[i].FirstReceived = time.Unix(0, at)
			known = true
		}
	}
	return vs, known
}

// remember keeps the first receipt of versions that were not stored; now
// is the time, for the age bound.
func (m *versionMemory) remember(vs []store.Version, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	oldest := now.Add(-m.maxAge).UnixNano()
	for _, v := range vs {
		k, at := keyOf(v.Hash), v.FirstReceived.UnixNano()
		if prev, ok := m.first[k]; ok && prev >= oldest && prev <= at {
			continue
		}
		if m.n == m.maxCount {
			m.drop(oldest)
		}
		m.push(rememberedVersion{key: k, at: at})
		m.first[k] = at
	}
	for m.n > 0 && m.ring[m.start].at < oldest {
		m.drop(oldest)
	}
}

// drop removes the oldest element of the ring, and its version unless the
// element is stale.
func (m *versionMemory) drop(oldest int64) {
	front := m.ring[m.start]
	m.start, m.n = (m.start+1)%len(m.ring), m.n-1
	if at, ok := m.first[front.key]; ok && at == front.at {
		delete(m.first, front.key)
		if at >= oldest {
			m.evicted.Inc()
		}
	}
}

func (m *versionMemory) push(e rememberedVersion) {
	if m.n == len(m.ring) {
		grown := make([]rememberedVersion, min(max(2*len(m.ring), 1024), m.maxCount))
		for i := range m.n {
			grown[i] = m.ring[(m.start+i)%len(m.ring)]
		}
		m.ring, m.start = grown, 0
	}
	m.ring[(m.start+m.n)%len(m.ring)] = e
	m.n++
}

// forget drops versions that are now stored.
func (m *versionMemory) forget(vs []store.Version) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, v := range vs {
		delete(m.first, keyOf(v.Hash))
	}
	if len(m.first) == 0 {
		// Every queued element is stale now; a map never shrinks, so
		// start afresh to give back what an outage made it grow to.
		m.first, m.ring, m.start, m.n = map[versionKey]int64{}, nil, 0, 0
	}
}
