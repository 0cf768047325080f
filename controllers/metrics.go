package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// The manager's own series, served with controller-runtime's on its metrics
// endpoint, so that the shipped alerts need nothing but the two binaries.
// Labels: ehr (unique per cluster, the join key with the receivers' series),
// and the resource's namespace and name under names that cannot collide
// with the scrape target's own namespace label.
var (
	integrationReady = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ehr_operator_integration_ready",
		Help: "1 when the EHRIntegration's Ready condition is True, else 0; suspended says whether spec.suspend is set.",
	}, []string{"ehrintegration_namespace", "ehrintegration", "ehr", "suspended"})
	// integrationDegraded shows what Ready does not: a rollout stuck
	// behind pods still serving (maxUnavailable 0 keeps Ready True), say a
	// Secret rotation whose new pods cannot pull or be scheduled.
	integrationDegraded = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ehr_operator_integration_degraded",
		Help: "1 when the EHRIntegration's Degraded condition is True (a rollout stuck, a problem), else 0.",
	}, []string{"ehrintegration_namespace", "ehrintegration", "ehr"})
	silenceAlertAfter = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ehr_operator_integration_silence_alert_seconds",
		Help: "spec.monitoring.silenceAlertAfter in seconds: the EHRSilent alert fires when the EHR had no delivery answered 200 for longer. Absent when unset or suspended.",
	}, []string{"ehrintegration_namespace", "ehrintegration", "ehr"})
)

func init() {
	metrics.Registry.MustRegister(integrationReady, integrationDegraded, silenceAlertAfter)
}

// recordMetrics sets the series of one integration from its spec and the
// status just computed, replacing any it had (suspended may have changed).
// It deletes by exact labels (spec.ehr is immutable): a partial match scans
// every series, once per reconcile, which grows with the square of the
// integrations.
func recordMetrics(e *v1alpha1.EHRIntegration, st v1alpha1.EHRIntegrationStatus) {
	ready, degraded := 0.0, 0.0
	for _, c := range st.Conditions {
		if c.Status != metav1.ConditionTrue {
			continue
		}
		switch c.Type {
		case v1alpha1.ConditionReady:
			ready = 1
		case v1alpha1.ConditionDegraded:
			degraded = 1
		}
	}
	suspended, other := "false", "true"
	if e.Spec.Suspend {
		suspended, other = other, suspended
	}
	integrationReady.DeleteLabelValues(e.Namespace, e.Name, e.Spec.EHR, other)
	integrationReady.WithLabelValues(e.Namespace, e.Name, e.Spec.EHR, suspended).Set(ready)
	integrationDegraded.WithLabelValues(e.Namespace, e.Name, e.Spec.EHR).Set(degraded)
	if m := e.Spec.Monitoring; m != nil && m.SilenceAlertAfter != nil && !e.Spec.Suspend {
		silenceAlertAfter.WithLabelValues(e.Namespace, e.Name, e.Spec.EHR).Set(m.SilenceAlertAfter.Seconds())
	} else {
		silenceAlertAfter.DeleteLabelValues(e.Namespace, e.Name, e.Spec.EHR)
	}
}

// forgetMetrics removes the series of a deleted integration.
func forgetMetrics(namespace, name string) {
	labels := prometheus.Labels{"ehrintegration_namespace": namespace, "ehrintegration": name}
	integrationReady.DeletePartialMatch(labels)
	integrationDegraded.DeletePartialMatch(labels)
	silenceAlertAfter.DeletePartialMatch(labels)
}
