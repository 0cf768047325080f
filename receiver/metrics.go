package receiver

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the receiver's Prometheus series (architecture.md, "Configuration and operation"), registered on
// a registry of their own so tests and several servers in one process
// never collide.
type metrics struct {
	registry          *prometheus.Registry
	requests          *prometheus.CounterVec
	duration          *prometheus.HistogramVec
	written           prometheus.Counter
	duplicates        prometheus.Counter
	superseded        prometheus.Counter
	quarantined       prometheus.Counter
	signatureFailures prometheus.Counter
	databaseErrors    prometheus.Counter
	// lastSuccess is when a delivery was last answered 200, for the "EHR
	// silent" alert; it starts at the process's start, so a feed that
	// stops while receivers restart still alerts after its threshold.
	lastSuccess prometheus.Gauge
}

func newMetrics(ehr string) *metrics {
	const ns = "ehr_receiver"
	labels := prometheus.Labels{"ehr": ehr}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: name, Help: help, ConstLabels: labels})
	}
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "requests_total", Help: "HTTP requests answered, by EHR and status code.",
		}, []string{"ehr", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "request_duration_seconds", Help: "Time from the request's arrival to its answer.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"ehr", "code"}),
		written:           counter("appointments_written_total", "Entries that changed an appointment."),
		duplicates:        counter("appointments_duplicates_total", "Entries whose content was already applied, or already held in quarantine (no-ops)."),
		superseded:        counter("appointments_superseded_total", "Retried versions not applied: the appointment holds a version first received after them."),
		quarantined:       counter("appointments_quarantined_total", "Invalid entries kept in quarantine (onInvalid: Quarantine); one already held there counts as a duplicate."),
		signatureFailures: counter("signature_failures_total", "Requests with a valid API key whose signature was missing or wrong."),
		databaseErrors:    counter("database_errors_total", "Batches the database failed to commit."),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "last_success_timestamp_seconds",
			Help: "Unix time of the last delivery answered 200 (the process's start until the first).", ConstLabels: labels}),
	}
	m.lastSuccess.SetToCurrentTime()
	// Every code's series from the start, at 0: a series that first
	// appears at 20 (a pod's first burst of 500s) has no increase for
	// rate() to see, and the alerts on rare codes would miss it.
	for _, code := range Statuses {
		m.requests.WithLabelValues(ehr, strconv.Itoa(code))
	}
	m.registry.MustRegister(m.requests, m.duration, m.written, m.duplicates, m.superseded, m.quarantined,
		m.signatureFailures, m.databaseErrors, m.lastSuccess,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
