package controllers

import (
	"fmt"
	"strings"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// podTrouble says why receiver pods are not available, from what the
// Deployment and its pods report: "0 of 2 receiver pods available" alone
// sent an SRE to `kubectl describe` for an image that cannot be pulled or a
// namespace's Pod Security refusing the pods. Empty when nothing is known.
// Waiting reasons are grouped in words that do not flip between passes
// (ErrImagePull and ImagePullBackOff alternate), so the status is not
// rewritten for nothing. It holds no container message: those can quote
// the image, never patient data, but are long.
func podTrouble(d *appsv1.Deployment, pods []corev1.Pod) string {
	var parts []string
	if d != nil {
		for _, c := range d.Status.Conditions {
			if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
				parts = append(parts, "pods cannot be created ("+c.Reason+": "+clip(c.Message, 200)+")")
			}
		}
	}
	counts := map[string]int{}
	for i := range pods {
		if w := podWoe(&pods[i]); w != "" {
			counts[w]++
		}
	}
	for _, w := range podWoes {
		if n := counts[w]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, w))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return strings.Join(parts, ", ")
}

// podWoe's answers, and podWoes the order podTrouble lists them in.
const (
	woeUnschedulable = "unschedulable"
	woePull          = "cannot pull the image"
	woeStart         = "cannot start (container config)"
	woeCrash         = "crash-looping"
	woeNotReady      = "running, not ready"
)

var podWoes = []string{woeUnschedulable, woePull, woeStart, woeCrash, woeNotReady}

// podWoe is what keeps one pod from being available, "" when it is ready,
// being deleted, or only starting.
func podWoe(p *corev1.Pod) string {
	if p.DeletionTimestamp != nil {
		return ""
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return woeUnschedulable
		}
	}
	ready := false
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Waiting == nil {
			continue
		}
		switch cs.State.Waiting.Reason {
		case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull":
			return woePull
		case "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
			return woeStart
		case "CrashLoopBackOff":
			return woeCrash
		}
	}
	if p.Status.Phase == corev1.PodRunning && !ready && len(p.Status.ContainerStatuses) > 0 && allStarted(p) {
		return woeNotReady
	}
	return ""
}

// allStarted: every container of p runs.
func allStarted(p *corev1.Pod) bool {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running == nil {
			return false
		}
	}
	return true
}

// clip shortens s to at most n bytes, on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
