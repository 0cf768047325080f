package controllers

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

func deployment(gen, observed int64, replicas, updated, available, ready int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Generation: gen},
		Status: appsv1.DeploymentStatus{ObservedGeneration: observed, Replicas: replicas,
			UpdatedReplicas: updated, AvailableReplicas: available, ReadyReplicas: ready},
	}
}

func TestComputeStatus(t *testing.T) {
	type conds struct{ ready, progressing, degraded, reason string }
	tests := []struct {
		name string
		obs  observation
		want conds
	}{
		{"no deployment yet", observation{wantReplicas: 2}, conds{"False", "True", "False", v1alpha1.ReasonDeploymentUnavailable}},
		{"available", observation{wantReplicas: 2, deployment: deployment(1, 1, 2, 2, 2, 2)}, conds{"True", "False", "False", v1alpha1.ReasonAvailable}},
		{"one of two", observation{wantReplicas: 2, deployment: deployment(1, 1, 2, 2, 1, 1)}, conds{"False", "True", "False", v1alpha1.ReasonDeploymentUnavailable}},
		// The template just changed (a Secret rotated): the controller has
		// not looked yet, and the two pods it found available still serve.
		{"stale status, still serving", observation{wantReplicas: 2, deployment: deployment(2, 1, 2, 2, 2, 2)}, conds{"True", "True", "False", v1alpha1.ReasonAvailable}},
		// Scaled up: the controller has not looked yet, one pod is missing.
		{"stale status, scaled up", observation{wantReplicas: 3, deployment: deployment(2, 1, 2, 2, 2, 2)}, conds{"False", "True", "False", v1alpha1.ReasonDeploymentUnavailable}},
		// Created: no status yet.
		{"new, no status", observation{wantReplicas: 2, deployment: deployment(1, 0, 0, 0, 0, 0)}, conds{"False", "True", "False", v1alpha1.ReasonDeploymentUnavailable}},
		{"rolling, still serving", observation{wantReplicas: 2, deployment: deployment(2, 2, 3, 1, 2, 2)}, conds{"True", "True", "False", v1alpha1.ReasonAvailable}},
		{"ingress missing", observation{wantReplicas: 2, ingressMissing: true, deployment: deployment(1, 1, 2, 2, 2, 2)}, conds{"False", "False", "False", v1alpha1.ReasonDeploymentUnavailable}},
		{"zero replicas", observation{wantReplicas: 0, deployment: deployment(1, 1, 0, 0, 0, 0)}, conds{"False", "False", "False", v1alpha1.ReasonDeploymentUnavailable}},
		{"suspended", observation{suspended: true}, conds{"False", "False", "False", v1alpha1.ReasonSuspended}},
		{"secret missing", observation{problem: &problem{reason: v1alpha1.ReasonSecretNotFound, message: "m"}}, conds{"False", "False", "True", v1alpha1.ReasonSecretNotFound}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := sample()
			st := computeStatus(e, tt.obs)
			get := func(typ string) string { return string(meta.FindStatusCondition(st.Conditions, typ).Status) }
			got := conds{get(v1alpha1.ConditionReady), get(v1alpha1.ConditionProgressing), get(v1alpha1.ConditionDegraded),
				meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady).Reason}
			if got != tt.want {
				t.Errorf("conditions = %+v, want %+v", got, tt.want)
			}
			if st.ObservedGeneration != 3 {
				t.Errorf("observedGeneration = %d, want 3", st.ObservedGeneration)
			}
			// A second pass over the same observation changes nothing: no
			// status churn.
			e.Status = st
			if again := computeStatus(e, tt.obs); !equality.Semantic.DeepEqual(again, st) {
				t.Errorf("second pass changed the status:\n%+v\n%+v", st, again)
			}
		})
	}
}

func TestComputeStatusRolloutStuck(t *testing.T) {
	d := deployment(1, 1, 2, 2, 1, 1)
	d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionFalse, Reason: "ProgressDeadlineExceeded"}}
	st := computeStatus(sample(), observation{wantReplicas: 2, deployment: d})
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonRolloutStuck {
		t.Errorf("Degraded = %+v, want True/RolloutStuck", c)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Now()
	st := func(since time.Duration) v1alpha1.EHRIntegrationStatus {
		return v1alpha1.EHRIntegrationStatus{Conditions: []metav1.Condition{{Type: v1alpha1.ConditionDegraded,
			Status: metav1.ConditionTrue, LastTransitionTime: metav1.NewTime(now.Add(-since))}}}
	}
	for _, tt := range []struct{ since, want time.Duration }{
		{0, minBackoff}, {time.Second, minBackoff}, {20 * time.Second, 20 * time.Second}, {time.Hour, maxBackoff},
	} {
		if got := retryAfter(st(tt.since), now); got != tt.want {
			t.Errorf("problem standing %v: retry after %v, want %v", tt.since, got, tt.want)
		}
	}
	if got := retryAfter(v1alpha1.EHRIntegrationStatus{}, now); got != minBackoff {
		t.Errorf("no condition: retry after %v, want %v", got, minBackoff)
	}
}

// The checks of the spec alone need no client (the reconciler here has none).
func TestPrerequisitesOfTheSpec(t *testing.T) {
	for _, tt := range []struct {
		name, tz, image, managerImage, reason string
	}{
		{"unknown zone", "Mars/Olympus_Mons", "", "img", v1alpha1.ReasonInvalidTimeZone},
		{"Local", "Local", "", "img", v1alpha1.ReasonInvalidTimeZone},
		{"no image anywhere", "Europe/Paris", "", "", v1alpha1.ReasonNoReceiverImage},
	} {
		r := &EHRIntegrationReconciler{ReceiverImage: tt.managerImage}
		e := sample()
		e.Spec.TimeZone, e.Spec.Image = tt.tz, tt.image
		_, _, p, err := r.prerequisites(context.Background(), e)
		if err != nil || p == nil || p.reason != tt.reason || p.retry {
			t.Errorf("%s: problem %+v, err %v; want %s without retry", tt.name, p, err, tt.reason)
		}
	}
}
