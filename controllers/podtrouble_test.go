package controllers

import (
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

func waitingPod(reason string) corev1.Pod {
	return corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{
		{Name: "receiver", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: "Back-off pulling image"}}}}}}
}

func notReadyPod() corev1.Pod {
	return corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning,
		Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "receiver", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}}
}

func TestPodTrouble(t *testing.T) {
	ready := notReadyPod()
	ready.Status.Conditions[0].Status = corev1.ConditionTrue
	unschedulable := corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable}}}}
	deleting := waitingPod("CrashLoopBackOff")
	deleting.DeletionTimestamp = &metav1.Time{}
	starting := waitingPod("ContainerCreating")
	failed := &appsv1.Deployment{Status: appsv1.DeploymentStatus{Conditions: []appsv1.DeploymentCondition{{
		Type: appsv1.DeploymentReplicaFailure, Status: corev1.ConditionTrue, Reason: "FailedCreate",
		Message: `pods "nexus-receiver-5f4d8b7c9-x2" is forbidden: violates PodSecurity "restricted:latest": ` + strings.Repeat("é", 200)}}}}
	for _, tt := range []struct {
		name string
		d    *appsv1.Deployment
		pods []corev1.Pod
		want string
	}{
		{"nothing known", &appsv1.Deployment{}, nil, ""},
		{"ready, starting or leaving", nil, []corev1.Pod{ready, starting, deleting}, ""},
		{"pull, both reasons counted as one", nil, []corev1.Pod{waitingPod("ErrImagePull"), waitingPod("ImagePullBackOff")}, "2 cannot pull the image"},
		{"every kind, in a fixed order", nil, []corev1.Pod{notReadyPod(), waitingPod("CrashLoopBackOff"), waitingPod("CreateContainerConfigError"), unschedulable},
			"1 unschedulable, 1 cannot start (container config), 1 crash-looping, 1 running, not ready"},
		{"pods refused", failed, nil, `pods cannot be created (FailedCreate: pods "nexus-receiver-5f4d8b7c9-x2" is forbidden: violates PodSecurity "restricted:latest": ` +
			strings.Repeat("é", (200-len(`pods "nexus-receiver-5f4d8b7c9-x2" is forbidden: violates PodSecurity "restricted:latest": `))/2) + "…)"},
	} {
		if got := podTrouble(tt.d, tt.pods); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

// TestDeploymentUnavailableSaysWhy: the Ready condition names what keeps
// the receiver pods from being available, as the pods report it.
func TestDeploymentUnavailableSaysWhy(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Replicas = ptr.To[int32](2)
	create(t, credsSecret(ns), dbSecret(ns), e)
	var d appsv1.Deployment
	child(t, ns, "nexus", &d)
	// As the Deployment controller (not running on envtest) would say it.
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 2, UpdatedReplicas: 2, UnavailableReplicas: 2}
	if err := suite.client.Status().Update(ctx, &d); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		p := startedPod(t, ns, "nexus", fmt.Sprintf("nexus-receiver-%d", i))
		p.Status = waitingPod("ImagePullBackOff").Status
		if err := suite.client.Status().Update(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// The pods' change reaches the operator by its next look (pods are not watched).
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Annotations = map[string]string{"poke": "1"} })
	eventually(t, waitFor, "the reason in Ready", func() error {
		got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
		for _, c := range got.Status.Conditions {
			if c.Type == v1alpha1.ConditionReady && c.Message != "0 of 2 receiver pods available: 2 cannot pull the image" {
				return fmt.Errorf("message %q", c.Message)
			}
		}
		return nil
	})
}
