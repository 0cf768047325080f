package controllers

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	shipped "github.com/insighthealth/ehr-operator/internal/monitoring"
)

// scrapeManager reads the manager's registry as its metrics endpoint
// serves it.
func scrapeManager(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestManagerSeries: the manager exports each integration's readiness and
// its silence threshold (the alerts' inputs), drops them with the
// integration, and exports every manager series the shipped dashboard and
// alerts query.
func TestManagerSeries(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "mon-nexus")
	e.Spec.Monitoring = &v1alpha1.MonitoringSpec{SilenceAlertAfter: &metav1.Duration{Duration: 2 * time.Hour}}
	create(t, credsSecret(ns), dbSecret(ns), e)
	markAvailable(t, ns, "nexus")
	waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	labels := fmt.Sprintf(`ehrintegration="nexus",ehrintegration_namespace=%q`, ns)
	ready := fmt.Sprintf(`ehr_operator_integration_ready{ehr="mon-nexus",%s,suspended="false"} 1`, labels)
	silence := fmt.Sprintf(`ehr_operator_integration_silence_alert_seconds{ehr="mon-nexus",%s} 7200`, labels)
	eventually(t, waitFor, "the integration's series", func() error {
		s := scrapeManager(t)
		for _, want := range []string{ready, silence} {
			if !strings.Contains(s, want) {
				return fmt.Errorf("no %s", want)
			}
		}
		return nil
	})

	scrape := scrapeManager(t)
	exposed := shipped.Exposed([]byte(scrape))
	dashboard, err := shipped.DashboardQueries("..")
	if err != nil {
		t.Fatal(err)
	}
	rules, err := shipped.RuleQueries("..")
	if err != nil {
		t.Fatal(err)
	}
	for what, exprs := range map[string][]string{"dashboard": dashboard, "alert rules": rules} {
		var used []string
		for _, p := range []string{"ehr_operator_", "controller_runtime_"} {
			used = append(used, shipped.SeriesIn(exprs, p)...)
		}
		if len(used) == 0 {
			t.Errorf("the %s query no manager series: the check below would check nothing", what)
		}
		if m := shipped.Missing(used, exposed); len(m) > 0 {
			t.Errorf("the %s query manager series the manager does not export: %v", what, m)
		}
	}

	// A rollout stuck behind pods that still serve: Ready stays 1, and
	// only the degraded series tells (EHRIntegrationDegraded).
	degraded := func(v int) string {
		return fmt.Sprintf(`ehr_operator_integration_degraded{ehr="mon-nexus",%s} %d`, labels, v)
	}
	if s := scrapeManager(t); !strings.Contains(s, degraded(0)) {
		t.Errorf("no %s while Available", degraded(0))
	}
	eventually(t, waitFor, "marking the rollout stuck", func() error {
		var d appsv1.Deployment
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &d); err != nil {
			return err
		}
		d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing,
			Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded"}}
		return suite.client.Status().Update(ctx, &d)
	})
	eventually(t, waitFor, "the stuck rollout's series", func() error {
		s := scrapeManager(t)
		for _, want := range []string{ready, degraded(1)} {
			if !strings.Contains(s, want) {
				return fmt.Errorf("no %s", want)
			}
		}
		return nil
	})

	// Suspended: not ready on purpose, and silence is expected.
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.Suspend = true })
	eventually(t, waitFor, "the suspended integration's series", func() error {
		s := scrapeManager(t)
		if want := fmt.Sprintf(`ehr_operator_integration_ready{ehr="mon-nexus",%s,suspended="true"} 0`, labels); !strings.Contains(s, want) {
			return fmt.Errorf("no %s", want)
		}
		if strings.Contains(s, "silence_alert_seconds{ehr=\"mon-nexus\"") || strings.Contains(s, ready) {
			return fmt.Errorf("series of the unsuspended integration left")
		}
		return nil
	})

	if err := suite.client.Delete(ctx, e); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "the deleted integration's series to go", func() error {
		if s := scrapeManager(t); strings.Contains(s, `ehr="mon-nexus"`) {
			return fmt.Errorf("series of the deleted integration left")
		}
		return nil
	})
}
