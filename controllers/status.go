package controllers

import (
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// endpointScheme is the scheme the edge serves e's host with: for an
// Ingress, https exactly when it has a TLS Secret; for a Gateway, what its
// listeners were seen to serve. Not looked at (a problem stood), a Gateway
// that may serve plain HTTP keeps the scheme last reported.
func endpointScheme(e *v1alpha1.EHRIntegration, o observation) string {
	switch {
	case e.Spec.Ingress != nil && e.Spec.Ingress.TLSSecretName == "":
		return "http"
	case e.Spec.Gateway != nil && o.scheme != "":
		return o.scheme
	case e.Spec.Gateway != nil && e.Spec.Gateway.AllowInsecureHTTP && strings.HasPrefix(e.Status.Endpoint, "http://"):
		return "http"
	}
	return "https"
}

// problem is a reason the operator cannot make the receiver the spec asks
// for. While one stands, the children are left as they are.
type problem struct {
	reason  string
	message string
	// retry: the problem may go away without a spec change (a Secret may
	// appear), so look again after a backoff besides watching.
	retry bool
}

func (p *problem) Error() string { return p.reason + ": " + p.message }

// observation is what one reconcile pass found, the input of the status.
type observation struct {
	problem   *problem
	suspended bool
	// deployment is the receiver Deployment as stored, nil when absent.
	deployment *appsv1.Deployment
	// wantReplicas is the Deployment's desired replica count.
	wantReplicas int32
	// ingressMissing: the spec asks for an Ingress that is not there (or
	// is being deleted).
	ingressMissing bool
	// db is what the running receivers said of their database; nil when
	// none runs or they were not asked (suspended, a problem stands).
	db *dbObservation
	// route is the receiver HTTPRoute as stored, nil when absent or not
	// looked at.
	route *gwv1.HTTPRoute
	// scheme is the scheme the parent Gateways serve the route with; empty
	// when they were not looked at.
	scheme string
	// routeChecked: the route was brought in line with the spec this pass
	// (made, deleted, or refused for a plain HTTP listener).
	routeChecked bool
	// served are the Secret versions every receiver pod runs; servedKnown
	// is false while pods of different versions (or of an operator that
	// set none) are left.
	served      v1alpha1.SecretVersions
	servedKnown bool
	// podTrouble says why pods are not available (podTrouble), "" when
	// nothing is known.
	podTrouble string
	// podsStarted: the Deployment has receiver pods, running or not.
	podsStarted bool
}

// rolloutPollInterval is how often an integration whose pods do not all
// run its template's Secret versions is looked at again.
const rolloutPollInterval = 2 * time.Second

// servedVersions returns the Secret versions that every pod of pods was
// started with, terminating ones included (they may still answer), and
// false when they differ or a pod has none. Pods that ended serve nothing,
// nor does one past its deletion time (the end of its grace period, which
// a pod's deletionTimestamp is): only a lost node's pods stay listed so,
// and counting one would keep the integration "rotating", looked at every
// rolloutPollInterval, until the node came back. With no pod, the next one
// runs d's template.
func servedVersions(pods []corev1.Pod, d *appsv1.Deployment, now time.Time) (v1alpha1.SecretVersions, bool) {
	var v v1alpha1.SecretVersions
	n := 0
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed ||
			(p.DeletionTimestamp != nil && p.DeletionTimestamp.Time.Before(now)) {
			continue
		}
		pv, ok := versionsOf(p.Annotations)
		if !ok || (n > 0 && pv != v) {
			return v1alpha1.SecretVersions{}, false
		}
		v, n = pv, n+1
	}
	if n == 0 {
		return versionsOf(d.Spec.Template.Annotations)
	}
	return v, true
}

// rotating: some receiver pod does not yet run the Secret versions of the
// Deployment's template.
func rotating(o observation) bool {
	if o.deployment == nil {
		return false
	}
	want, ok := versionsOf(o.deployment.Spec.Template.Annotations)
	return ok && !stuck(o.deployment) && (!o.servedKnown || o.served != want)
}

// computeStatus returns e's status for what was observed. It starts from
// e's current conditions, so a condition whose status does not change keeps
// its lastTransitionTime and an unchanged pass yields an equal status.
func computeStatus(e *v1alpha1.EHRIntegration, o observation) v1alpha1.EHRIntegrationStatus {
	st := *e.Status.DeepCopy()
	st.ObservedGeneration = e.Generation
	st.Endpoint = endpointURL(e, endpointScheme(e, o))
	st.ReadyReplicas = 0
	if o.deployment != nil {
		st.ReadyReplicas = o.deployment.Status.ReadyReplicas
	}
	st.ServedSecretVersions = nil
	if o.servedKnown {
		st.ServedSecretVersions = &o.served
	}
	set := func(t string, s metav1.ConditionStatus, reason, msg string) {
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{
			Type: t, Status: s, Reason: reason, Message: msg, ObservedGeneration: e.Generation,
		})
	}

	switch {
	case o.suspended:
		msg := "spec.suspend is true: the receiver is scaled to zero"
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonSuspended, msg)
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonSuspended, msg)
		set(v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonSuspended, msg)
	case o.problem != nil:
		p := o.problem
		set(v1alpha1.ConditionReady, metav1.ConditionFalse, p.reason, p.message)
		set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, p.reason, p.message)
		set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, p.reason, p.message)
	default:
		ready, readyReason, readyMsg := deploymentReady(e, o)
		if ready {
			set(v1alpha1.ConditionReady, metav1.ConditionTrue, readyReason, readyMsg)
		} else {
			set(v1alpha1.ConditionReady, metav1.ConditionFalse, readyReason, readyMsg)
		}
		if rolledOut(o) {
			set(v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonReconciled, "the receiver runs the current spec")
		} else {
			set(v1alpha1.ConditionProgressing, metav1.ConditionTrue, v1alpha1.ReasonRollingOut, "the receiver Deployment is rolling out")
		}
		if stuck(o.deployment) {
			set(v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonRolloutStuck,
				"the receiver Deployment exceeded its progress deadline; see its pods' events")
		} else {
			set(v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonReconciled, "every receiver object is as the spec asks")
		}
	}
	if o.route != nil && o.problem == nil && !o.suspended {
		s, reason, msg := routeAcceptance(e, o.route)
		set(v1alpha1.ConditionRouteAccepted, s, reason, msg)
	} else {
		meta.RemoveStatusCondition(&st.Conditions, v1alpha1.ConditionRouteAccepted)
	}
	if o.db != nil {
		s, reason, msg := databaseCondition(o.db)
		set(v1alpha1.ConditionDatabaseReachable, s, reason, msg)
	} else {
		// No receiver to ask: a stale verdict would mislead.
		meta.RemoveStatusCondition(&st.Conditions, v1alpha1.ConditionDatabaseReachable)
	}
	return st
}

// deploymentReady: Ready means the Deployment has the desired replicas
// available, the Ingress, if any, exists, and the HTTPRoute, if any, is
// accepted by its Gateways. A status the Deployment's controller wrote
// before it saw the current spec still counts: the pods it found available
// serve until new ones replace them (maxUnavailable 0), so a change of the
// pod template (a Secret rotated, a setting changed) keeps Ready True, as
// it does for the rest of the rollout, rather than turning it False for
// the moment between the operator's write and the controller's next look
// (Progressing says a rollout is under way).
func deploymentReady(e *v1alpha1.EHRIntegration, o observation) (bool, string, string) {
	d := o.deployment
	switch {
	case d == nil:
		return false, v1alpha1.ReasonDeploymentUnavailable, "the receiver Deployment does not exist yet"
	case o.wantReplicas == 0:
		return false, v1alpha1.ReasonDeploymentUnavailable, "replicas is 0: no receiver pod runs"
	case d.Status.AvailableReplicas < o.wantReplicas:
		msg := fmt.Sprintf("%d of %d receiver pods available", d.Status.AvailableReplicas, o.wantReplicas)
		if o.podTrouble != "" {
			msg += ": " + o.podTrouble
		}
		return false, v1alpha1.ReasonDeploymentUnavailable, msg
	case o.ingressMissing:
		return false, v1alpha1.ReasonDeploymentUnavailable, "the receiver Ingress does not exist yet"
	case o.route != nil:
		if s, reason, msg := routeAcceptance(e, o.route); s != metav1.ConditionTrue {
			return false, reason, msg
		}
	}
	return true, v1alpha1.ReasonAvailable, fmt.Sprintf("%d of %d receiver pods available", d.Status.AvailableReplicas, o.wantReplicas)
}

// rolledOut: every pod runs the current template and is available.
func rolledOut(o observation) bool {
	d := o.deployment
	if d == nil || d.Status.ObservedGeneration < d.Generation {
		return false
	}
	s := d.Status
	return s.UpdatedReplicas >= o.wantReplicas && s.Replicas == s.UpdatedReplicas && s.AvailableReplicas >= o.wantReplicas
}

func stuck(d *appsv1.Deployment) bool {
	if d == nil {
		return false
	}
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse && c.Reason == "ProgressDeadlineExceeded" {
			return true
		}
	}
	return false
}

// Backoff for problems that may heal by themselves (a Secret appearing).
const (
	minBackoff = 5 * time.Second
	maxBackoff = 5 * time.Minute
)

// retryAfter is the wait before looking again at a standing problem: as
// long as the problem has stood so far (from the Degraded condition's
// lastTransitionTime), within [minBackoff, maxBackoff]. Looking again after
// that long doubles the wait each time, with no state kept anywhere.
func retryAfter(st v1alpha1.EHRIntegrationStatus, now time.Time) time.Duration {
	d := minBackoff
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded); c != nil && c.Status == metav1.ConditionTrue {
		d = now.Sub(c.LastTransitionTime.Time)
	}
	return min(max(d, minBackoff), maxBackoff)
}
