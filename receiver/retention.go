package receiver

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/insighthealth/ehr-operator/receiver/store"
)

// DefaultRetentionInterval is how often a receiver applies the retention.
const DefaultRetentionInterval = time.Hour

// retentionFirstRun bounds the wait before the first run after start.
const retentionFirstRun = time.Minute

// retentionRunTimeout bounds one run: a backlog larger than a run removes
// in that time (batches of 500 rows, each committed) is continued by the
// next one, and a slow run gives up its connection and the database's
// pruning lock. Shorter than the default interval. (A database that does
// not answer at all is not interrupted by it: see backgroundStopTimeout.)
const retentionRunTimeout = 10 * time.Minute

// Pruner applies the retention; receiver/store.Store is one.
type Pruner interface {
	Prune(ctx context.Context, ehr string, r store.Retention, now time.Time) (store.Pruned, bool, error)
}

// retentionMetrics count what the retention removed, by kind of row.
type retentionMetrics struct {
	removed  *prometheus.CounterVec
	last     prometheus.Gauge
	failures prometheus.Counter
}

// The kinds of rows, as the removed counter's label.
const (
	kindDeliveryLog       = "delivery_log"
	kindQuarantine        = "quarantine"
	kindQuarantineContent = "quarantine_content"
	kindHistory           = "history"
)

func newRetentionMetrics(ehr string, reg prometheus.Registerer) *retentionMetrics {
	labels := prometheus.Labels{"ehr": ehr}
	m := &retentionMetrics{
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ehr_receiver", Name: "retention_removed_rows_total", ConstLabels: labels,
			Help: "Rows the retention removed, by kind: delivery_log, quarantine, history rows deleted; quarantine_content: quarantined entries whose raw body was dropped.",
		}, []string{"kind"}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "ehr_receiver", Name: "retention_last_run_timestamp_seconds", ConstLabels: labels,
			Help: "Unix time this receiver last applied the retention completely; absent until then.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ehr_receiver", Name: "retention_failures_total", ConstLabels: labels,
			Help: "Retention runs that failed (the database refused a statement: rights, a lock, an outage).",
		}),
	}
	for _, k := range []string{kindDeliveryLog, kindQuarantine, kindQuarantineContent, kindHistory} {
		m.removed.WithLabelValues(k)
	}
	reg.MustRegister(m.removed, m.failures)
	return m
}

// PruneInBackground makes Run apply cfg.Retention with p every
// cfg.RetentionInterval (jittered) once the schema is current. Receivers
// sharing a database take turns (store.Prune's lock). Call it before Run.
func (s *Server) PruneInBackground(p Pruner) {
	s.pruner = p
}

// pruneEvery applies the retention until ctx is done.
func (s *Server) pruneEvery(ctx context.Context) {
	interval := s.cfg.RetentionInterval
	if interval <= 0 {
		interval = DefaultRetentionInterval
	}
	wait := jittered(min(interval, retentionFirstRun))
	for sleep(ctx, wait) {
		wait = jittered(interval)
		if !s.db.migrated.Load() {
			continue
		}
		s.pruneOnce(ctx)
	}
}

// pruneOnce runs the retention once and reports it: counts, never a value.
func (s *Server) pruneOnce(ctx context.Context) {
	start := s.now()
	rctx, cancel := context.WithTimeout(ctx, retentionRunTimeout)
	defer cancel()
	p, ran, err := s.pruner.Prune(rctx, s.cfg.EHR, s.cfg.Retention, start)
	m := s.retention
	m.removed.WithLabelValues(kindDeliveryLog).Add(float64(p.DeliveryLog))
	m.removed.WithLabelValues(kindQuarantine).Add(float64(p.Quarantine))
	m.removed.WithLabelValues(kindQuarantineContent).Add(float64(p.QuarantineContent))
	m.removed.WithLabelValues(kindHistory).Add(float64(p.History))
	attrs := []any{"delivery_log", p.DeliveryLog, "quarantine", p.Quarantine,
		"quarantine_content", p.QuarantineContent, "history", p.History,
		"duration_ms", s.now().Sub(start).Milliseconds()}
	switch {
	case err != nil:
		if ctx.Err() == nil {
			m.failures.Inc()
			s.log.Warn("Retention failed; retrying at the next run", append(attrs, "error", err.Error())...)
		}
	case ran:
		if !s.retentionRegistered {
			s.metrics.registry.MustRegister(m.last)
			s.retentionRegistered = true
		}
		m.last.SetToCurrentTime()
		s.log.Info("Retention applied", attrs...)
	}
}
