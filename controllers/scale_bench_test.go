package controllers

import (
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// BenchmarkReconcile200 measures, on envtest, how long the manager takes to
// make every child of 200 EHRIntegrations (each with an Ingress and a PDB:
// 1,000 objects) and to write their statuses, and how many API requests one
// idle resync of them makes. Not run by `make test`; run it with
//
//	KUBEBUILDER_ASSETS=$HOME/.local/share/kubebuilder-envtest/k8s/1.37.2-linux-amd64 \
//	  go test ./controllers/ -run '^$' -bench Reconcile200 -benchtime 1x -v
func BenchmarkReconcile200(b *testing.B) {
	const n = 200
	startSuite(b)
	for i := 0; i < b.N; i++ {
		ns := newNamespace(b)
		create(b, credsSecret(ns), dbSecret(ns))
		w0, by0 := suite.writes.snapshot()
		start := time.Now()
		for j := range n {
			e := integration(ns, fmt.Sprintf("ehr-%03d", j), fmt.Sprintf("ehr-%03d", j))
			e.Spec.Ingress = &v1alpha1.IngressSpec{Host: fmt.Sprintf("ehr-%03d.example.com", j), TLSSecretName: "ehr-tls"}
			create(b, e)
		}
		created := time.Since(start)

		var childrenAt, statusAt time.Duration
		eventually(b, 5*time.Minute, "every child and status", func() error {
			if childrenAt == 0 {
				for _, l := range []client.ObjectList{&corev1.ServiceAccountList{}, &appsv1.DeploymentList{},
					&corev1.ServiceList{}, &networkingv1.IngressList{}, &policyv1.PodDisruptionBudgetList{}} {
					if err := suite.client.List(ctx, l, client.InNamespace(ns)); err != nil {
						return err
					}
					if got := meta.LenList(l); got < n {
						return fmt.Errorf("%d of %d %T", got, n, l)
					}
				}
				childrenAt = time.Since(start)
			}
			var list v1alpha1.EHRIntegrationList
			if err := suite.client.List(ctx, &list, client.InNamespace(ns)); err != nil {
				return err
			}
			for _, e := range list.Items {
				if c := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady); c == nil ||
					c.Reason != v1alpha1.ReasonDeploymentUnavailable || e.Status.ObservedGeneration != e.Generation {
					return fmt.Errorf("%s has no status yet", e.Name)
				}
			}
			statusAt = time.Since(start)
			return nil
		})
		w1, by1 := suite.writes.snapshot()

		// Idle: let the last events settle, then watch two resyncs.
		time.Sleep(2 * time.Second)
		suite.writes.mu.Lock()
		r2 := suite.writes.reads
		suite.writes.mu.Unlock()
		w2, by2 := suite.writes.snapshot()
		time.Sleep(2*testSyncPeriod + 500*time.Millisecond)
		w3, by3 := suite.writes.snapshot()
		suite.writes.mu.Lock()
		r3 := suite.writes.reads
		suite.writes.mu.Unlock()

		b.Logf("created %d EHRIntegrations in %v; all %d children after %v; all statuses after %v",
			n, created.Round(time.Millisecond), 5*n, childrenAt.Round(time.Millisecond), statusAt.Round(time.Millisecond))
		b.Logf("writes to get there: %d (%s)", w1-w0, diffCounts(by0, by1))
		b.Logf("idle, over 2 resync periods of %v: %d writes (%s), %d reads", testSyncPeriod, w3-w2, diffCounts(by2, by3), r3-r2)
		b.ReportMetric(childrenAt.Seconds(), "s-to-children")
		b.ReportMetric(statusAt.Seconds(), "s-to-status")
		b.ReportMetric(float64(w1-w0)/n, "writes/integration")
		b.ReportMetric(float64(w3-w2)/2, "writes/idle-resync")
		b.ReportMetric(float64(r3-r2)/2, "reads/idle-resync")
	}
}
