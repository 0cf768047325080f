package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// checkProblem fails unless e's Ready is False and Degraded True, both with
// reason and a message that contains msg.
func checkProblem(t *testing.T, e *v1alpha1.EHRIntegration, reason, msg string) {
	t.Helper()
	for _, typ := range []string{v1alpha1.ConditionReady, v1alpha1.ConditionDegraded} {
		c := meta.FindStatusCondition(e.Status.Conditions, typ)
		want := metav1.ConditionFalse
		if typ == v1alpha1.ConditionDegraded {
			want = metav1.ConditionTrue
		}
		if c == nil || c.Status != want || c.Reason != reason || !strings.Contains(c.Message, msg) {
			t.Errorf("%s = %+v, want %s/%s saying %q", typ, c, want, reason, msg)
		}
	}
}

// requested fails unless the watch's mapping of obj enqueues e.
func requested(t *testing.T, what string, reqs []reconcile.Request, e *v1alpha1.EHRIntegration) {
	t.Helper()
	if !slices.Contains(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(e)}) {
		t.Errorf("%s enqueues %v, not %s/%s", what, reqs, e.Namespace, e.Name)
	}
}

// TestIngressNeedsItsClassAndTLSSecret: an Ingress whose class no ingress
// controller has, or whose TLS Secret is missing or incomplete, is made but
// not Ready (the auditor's case: a className typo and a TLS Secret that
// does not exist were Ready=True Available with an https endpoint). Each
// is a problem that names what is missing, and the resource recovers by
// itself as the class and the Secret appear, with no write while idle.
func TestIngressNeedsItsClassAndTLSSecret(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns))
	const class, secret = "ngnix-typo", "does-not-exist"
	e := integration(ns, "nexus", "nexus")
	e.Spec.Replicas = ptr.To[int32](1)
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.example.com", ClassName: class, TLSSecretName: secret}
	create(t, e)

	// The Ingress is made all the same: it serves as soon as both appear
	// (and cert-manager fills a Secret only for an Ingress that exists).
	var ing networkingv1.Ingress
	child(t, ns, "nexus", &ing)
	if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != class || len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != secret {
		t.Errorf("ingress class %v TLS %+v, want the spec's", ing.Spec.IngressClassName, ing.Spec.TLS)
	}
	markAvailable(t, ns, "nexus")
	got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonIngressClassNotFound)
	checkProblem(t, got, v1alpha1.ReasonIngressClassNotFound, "IngressClass "+class+" (spec.ingress.className) not found")

	// The watches reach it: an IngressClass by its name, the TLS Secret
	// through the index of referenced Secrets.
	requested(t, "IngressClass "+class, suite.reconciler.forIngressClass(ctx,
		&networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: class}}), got)
	requested(t, "Secret "+secret, suite.reconciler.forSecret(ctx,
		&metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secret}}), got)

	// A problem standing is idle: no write on resync.
	suite.writes.settle(time.Second)
	n0, by0 := suite.writes.snapshot()
	time.Sleep(2*testSyncPeriod + 500*time.Millisecond)
	if n1, by1 := suite.writes.snapshot(); n1 != n0 {
		t.Errorf("%d writes while IngressClassNotFound stood: %s", n1-n0, diffCounts(by0, by1))
	}

	ic := &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: class}, Spec: networkingv1.IngressClassSpec{Controller: "example.com/typo"}}
	create(t, ic)
	t.Cleanup(func() {
		if err := suite.client.Delete(ctx, ic); err != nil {
			t.Errorf("deleting IngressClass %s: %v", class, err)
		}
	})
	got = waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonTLSSecretNotFound)
	checkProblem(t, got, v1alpha1.ReasonTLSSecretNotFound, "Secret "+secret+" (spec.ingress.tlsSecretName) not found")

	// A Secret without the private key is no certificate to serve.
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: secret},
		Data: map[string][]byte{corev1.TLSCertKey: []byte("certificate")}}
	create(t, s)
	got = waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonTLSSecretKeyMissing)
	checkProblem(t, got, v1alpha1.ReasonTLSSecretKeyMissing, "has no value for key tls.key")

	update(t, s, func(s *corev1.Secret) { s.Data[corev1.TLSPrivateKeyKey] = []byte("key") })
	got = waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	if !meta.IsStatusConditionFalse(got.Status.Conditions, v1alpha1.ConditionDegraded) {
		t.Errorf("conditions = %+v, want Degraded False", got.Status.Conditions)
	}
	if want := "https://nexus.example.com/v2/webhooks/nexus/sync-appointments"; got.Status.Endpoint != want {
		t.Errorf("endpoint = %s, want %s", got.Status.Endpoint, want)
	}

	// The class going away is noticed too.
	if err := suite.client.Delete(ctx, ic); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonIngressClassNotFound)
	create(t, &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: class}, Spec: networkingv1.IngressClassSpec{Controller: "example.com/typo"}})
	waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
}

// setDefaultIngressClass marks the suite's default IngressClass as the
// default or not.
func setDefaultIngressClass(t testing.TB, isDefault bool) {
	t.Helper()
	update(t, &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: testDefaultIngressClass}}, func(ic *networkingv1.IngressClass) {
		ic.Annotations[networkingv1.AnnotationIsDefaultIngressClass] = fmt.Sprint(isDefault)
	})
}

// TestIngressWithoutClass: an Ingress without className that the API
// server gave no class (no default class at its making) is not checked.
func TestIngressWithoutClass(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns))
	setDefaultIngressClass(t, false)
	t.Cleanup(func() { setDefaultIngressClass(t, true) })

	e := integration(ns, "plain", "plain")
	e.Spec.Replicas = ptr.To[int32](1)
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "plain.example.test", AllowInsecureHTTP: true}
	create(t, e)
	child(t, ns, "plain", &networkingv1.Ingress{})
	markAvailable(t, ns, "plain")
	// No class, and none the cluster's default: not checked, as
	// controllers differ on serving such an Ingress (Traefik does).
	got := waitCondition(t, ns, "plain", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	// Any IngressClass's change may concern it (a class the API server
	// gave an Ingress made while it was the default).
	requested(t, "IngressClass "+testDefaultIngressClass, suite.reconciler.forIngressClass(ctx,
		&networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: testDefaultIngressClass}}), got)
}

// TestInsecureHTTPForbidden: with the manager's default (no
// --allow-insecure-http), an EHRIntegration asking for a plain HTTP
// Ingress gets none, one made before is deleted, also on a pass that
// leaves the other children as they are (suspended), and the problem says
// why; with TLS the Ingress is made. The resource is not stored, so the
// suite's manager, which allows plain HTTP, leaves its children alone.
func TestInsecureHTTPForbidden(t *testing.T) {
	startSuite(t)
	ctx := context.Background()
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns))
	e := withDefaults(integration(ns, "ghost", "ghost-plain"))
	e.UID = types.UID("00000000-0000-0000-0000-0000000091a1")
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "ghost.example.test", AllowInsecureHTTP: true}
	allow := &EHRIntegrationReconciler{Client: suite.reconciler.Client, APIReader: suite.reconciler.APIReader, Recorder: events.NewFakeRecorder(100),
		ReceiverImage: testImage, gateways: suite.reconciler.gateways, AllowInsecureHTTP: true}
	forbid := *allow
	forbid.AllowInsecureHTTP = false
	// pass runs one reconcile pass of r and returns the problem it found.
	pass := func(r *EHRIntegrationReconciler) (reason, message string) {
		t.Helper()
		obs, err := r.reconcileChildren(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if obs.problem == nil {
			return "", ""
		}
		return obs.problem.reason, obs.problem.message
	}
	exists := func() bool {
		t.Helper()
		err := suite.client.Get(ctx, key(ns, "ghost-receiver"), &networkingv1.Ingress{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		return err == nil
	}

	// The reconciler reads its children from the manager's cache.
	cached := func() {
		t.Helper()
		eventually(t, waitFor, "the cache to hold the Ingress", func() error {
			return suite.reconciler.Get(ctx, key(ns, "ghost-receiver"), &networkingv1.Ingress{})
		})
	}

	if reason, _ := pass(allow); reason != "" || !exists() {
		t.Fatalf("allowed: problem %q, Ingress made %v", reason, exists())
	}
	cached()
	if reason, msg := pass(&forbid); reason != v1alpha1.ReasonInsecureHTTPForbidden || !strings.Contains(msg, "set spec.ingress.tlsSecretName") {
		t.Errorf("forbidden: problem %s %q, want %s saying what to set", reason, msg, v1alpha1.ReasonInsecureHTTPForbidden)
	}
	if exists() {
		t.Error("forbidden: the plain HTTP Ingress made before is still there")
	}
	if err := suite.client.Get(ctx, key(ns, "ghost-receiver"), &appsv1.Deployment{}); err != nil {
		t.Errorf("forbidden: the receiver itself is still made: %v", err)
	}

	pass(allow)
	cached()
	e.Spec.Suspend = true
	if pass(&forbid); exists() {
		t.Error("forbidden while suspended: the plain HTTP Ingress is still there")
	}

	create(t, tlsSecret(ns, "ghost-tls"))
	e.Spec.Suspend = false
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "ghost.example.test", TLSSecretName: "ghost-tls"}
	if reason, _ := pass(&forbid); reason != "" || !exists() {
		t.Errorf("forbidden, with TLS: problem %q, Ingress made %v", reason, exists())
	}
	e.Spec.Suspend = true
	if pass(&forbid); !exists() {
		t.Error("forbidden, with TLS, suspended: the Ingress was deleted")
	}
}

// The way out an InsecureListener offers depends on whether the manager
// lets spec.gateway.allowInsecureHTTP take effect.
func TestInsecureListenerProblem(t *testing.T) {
	e := integration("ns", "nexus", "nexus")
	listener := []string{"edge-system/edge/http"}
	const base = "the route would attach to listener edge-system/edge/http, which serves plain HTTP: " +
		"name an HTTPS listener in spec.gateway.parentRefs[].sectionName"
	for _, tt := range []struct {
		manager, spec bool
		reason, msg   string
	}{
		{true, false, v1alpha1.ReasonInsecureListener, base + ", or set spec.gateway.allowInsecureHTTP: true"},
		{false, false, v1alpha1.ReasonInsecureListener, base},
		{false, true, v1alpha1.ReasonInsecureHTTPForbidden, base + "; spec.gateway.allowInsecureHTTP is true, " +
			"but this operator serves no receiver over plain HTTP (its --allow-insecure-http, the chart's allowInsecureHTTP, is false)"},
	} {
		r := &EHRIntegrationReconciler{AllowInsecureHTTP: tt.manager}
		e.Spec.Gateway = &v1alpha1.GatewaySpec{AllowInsecureHTTP: tt.spec}
		if p := r.insecureListenerProblem(e, listener); p.reason != tt.reason || p.message != tt.msg {
			t.Errorf("manager %v, spec %v: %s %q, want %s %q", tt.manager, tt.spec, p.reason, p.message, tt.reason, tt.msg)
		}
		if got := r.insecureAllowed(e); got != (tt.manager && tt.spec) {
			t.Errorf("manager %v, spec %v: insecureAllowed %v", tt.manager, tt.spec, got)
		}
	}
}
