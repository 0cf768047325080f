package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/internal/gatewayapi"
)

// waitReason waits until e's condition typ has status and reason, for its
// current generation, and returns e.
func waitReason(t *testing.T, ns, name, typ string, status metav1.ConditionStatus, reason string) *v1alpha1.EHRIntegration {
	t.Helper()
	var e v1alpha1.EHRIntegration
	eventually(t, waitFor, fmt.Sprintf("%s=%s/%s on %s", typ, status, reason, name), func() error {
		if err := suite.client.Get(ctx, key(ns, name), &e); err != nil {
			return err
		}
		c := meta.FindStatusCondition(e.Status.Conditions, typ)
		if c == nil || c.Status != status || c.Reason != reason || e.Status.ObservedGeneration != e.Generation {
			return fmt.Errorf("%s condition %+v, observedGeneration %d of %d", typ, c, e.Status.ObservedGeneration, e.Generation)
		}
		return nil
	})
	return &e
}

func gatewaySpec(hosts ...string) *v1alpha1.GatewaySpec {
	return &v1alpha1.GatewaySpec{
		ParentRefs: []v1alpha1.GatewayParentReference{{Name: "edge", Namespace: "edge-system"}},
		Hostnames:  hosts,
	}
}

// TestExposureRules: the API server refuses an Ingress and a Gateway
// together, and an Ingress without TLS unless plain HTTP is asked for; the
// endpoint shows the scheme the Ingress serves, and the Ingress routes only
// the EHR's own path.
func TestExposureRules(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns))

	refused := []struct {
		name   string
		modify func(*v1alpha1.EHRIntegration)
		want   string
	}{
		{"ingress and gateway", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "a.example.test", TLSSecretName: "a-tls"}
			e.Spec.Gateway = gatewaySpec("a.example.test")
		}, "spec: Invalid value: spec.ingress and spec.gateway are mutually exclusive: " +
			"expose the receiver by an Ingress or by a Gateway API HTTPRoute, not both"},
		{"ingress without TLS", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "a.example.test"}
		}, "spec.ingress: Invalid value: spec.ingress.tlsSecretName is required: name the Secret holding the host's certificate " +
			"(cert-manager can fill it), or set spec.ingress.allowInsecureHTTP: true to serve plain HTTP"},
		{"ingress with allowInsecureHTTP false", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "a.example.test", AllowInsecureHTTP: false}
		}, "spec.ingress.tlsSecretName is required"},
		{"gateway without parents", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Gateway = &v1alpha1.GatewaySpec{Hostnames: []string{"a.example.test"}}
		}, "spec.gateway.parentRefs: Required value"},
		{"gateway without hostnames", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Gateway = gatewaySpec()
		}, "spec.gateway.hostnames: Required value"},
		{"gateway with a wildcard hostname", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Gateway = gatewaySpec("*.example.test")
		}, "spec.gateway.hostnames[0]: Invalid value"},
		{"gateway with the same hostname twice", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Gateway = gatewaySpec("a.example.test", "a.example.test")
		}, "spec.gateway.hostnames[1]: Duplicate value"},
	}
	for i, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			e := integration(ns, fmt.Sprintf("bad-%d", i), fmt.Sprintf("bad%d", i))
			tt.modify(e)
			createRefused(t, e, tt.want)
		})
	}

	t.Run("adding a gateway to an ingress", func(t *testing.T) {
		e := integration(ns, "both", "both")
		e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "both.example.test", TLSSecretName: "both-tls"}
		create(t, e)
		e.Spec.Gateway = gatewaySpec("both.example.test")
		err := suite.client.Update(ctx, e)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "mutually exclusive") {
			t.Fatalf("update: err = %v, want Invalid naming the exclusion", err)
		}
	})

	t.Run("plain HTTP when asked for", func(t *testing.T) {
		e := integration(ns, "plain", "plain")
		e.Spec.Replicas = ptr.To[int32](1)
		e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "plain.example.test", AllowInsecureHTTP: true}
		create(t, e)
		var ing networkingv1.Ingress
		child(t, ns, "plain", &ing)
		if len(ing.Spec.TLS) != 0 {
			t.Errorf("ingress TLS = %+v, want none", ing.Spec.TLS)
		}
		// Only the EHR's own path: another tenant's path on the host is not
		// routed, nor /metrics or the probes.
		want := []networkingv1.IngressRule{{Host: "plain.example.test", IngressRuleValue: networkingv1.IngressRuleValue{
			HTTP: &networkingv1.HTTPIngressRuleValue{Paths: []networkingv1.HTTPIngressPath{{
				Path: "/v2/webhooks/plain/", PathType: ptr.To(networkingv1.PathTypePrefix),
				Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
					Name: "plain-receiver", Port: networkingv1.ServiceBackendPort{Name: "http"}}},
			}}}}}}
		if diff := cmp.Diff(want, ing.Spec.Rules); diff != "" {
			t.Errorf("ingress rules (-want +got):\n%s", diff)
		}
		markAvailable(t, ns, "plain")
		got := waitCondition(t, ns, "plain", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
		if want := "http://plain.example.test/v2/webhooks/plain/sync-appointments"; got.Status.Endpoint != want {
			t.Errorf("endpoint = %s, want %s", got.Status.Endpoint, want)
		}

		// A TLS Secret makes it https, in the Ingress and the endpoint.
		create(t, tlsSecret(ns, "plain-tls"))
		update(t, got, func(e *v1alpha1.EHRIntegration) {
			e.Spec.Ingress.TLSSecretName = "plain-tls"
			e.Spec.Ingress.AllowInsecureHTTP = false
		})
		eventually(t, waitFor, "the Ingress to terminate TLS", func() error {
			if err := suite.client.Get(ctx, key(ns, "plain-receiver"), &ing); err != nil {
				return err
			}
			if len(ing.Spec.TLS) != 1 || ing.Spec.TLS[0].SecretName != "plain-tls" {
				return fmt.Errorf("TLS = %+v", ing.Spec.TLS)
			}
			return nil
		})
		got = waitCondition(t, ns, "plain", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
		if want := "https://plain.example.test/v2/webhooks/plain/sync-appointments"; got.Status.Endpoint != want {
			t.Errorf("endpoint = %s, want %s", got.Status.Endpoint, want)
		}
	})
}

// TestGatewayAPI runs in order, as the Gateway API's CRDs are the API
// server's, shared by every test: first without them (the suite starts
// without), then with them installed while the manager runs.
func TestGatewayAPI(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	// The TLS Secret is for the last step, from gateway to ingress.
	create(t, credsSecret(ns), dbSecret(ns), tlsSecret(ns, "nexus-tls"))
	e := integration(ns, "nexus", "nexus")
	e.Spec.Replicas = ptr.To[int32](1)
	e.Spec.Gateway = gatewaySpec("nexus.example.test", "nexus-alt.example.test")
	create(t, e)

	t.Run("without the Gateway API: a condition, and no hot loop", func(t *testing.T) {
		got := waitReason(t, ns, "nexus", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonGatewayAPINotInstalled)
		c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionDegraded)
		if want := "spec.gateway is set but the cluster serves no Gateway API (gateway.networking.k8s.io/v1 Gateway and HTTPRoute): " +
			"install its CRDs, or expose the receiver with spec.ingress"; c.Message != want {
			t.Errorf("message %q, want %q", c.Message, want)
		}
		// The rest of the receiver is made; only the route waits.
		child(t, ns, "nexus", &appsv1.Deployment{})
		child(t, ns, "nexus", &corev1.Service{})

		// Looking again costs one discovery request per pass: passes come
		// from the backoff (at least 5 s) and the resyncs, not a hot loop.
		const window = 6 * time.Second
		suite.writes.mu.Lock()
		reads0 := suite.writes.gatewayAPIReads
		suite.writes.mu.Unlock()
		rv := got.ResourceVersion
		time.Sleep(window)
		suite.writes.mu.Lock()
		reads := suite.writes.gatewayAPIReads - reads0
		suite.writes.mu.Unlock()
		t.Logf("Gateway API absent: %d discovery requests in %v (resync every %v, backoff at least %v)", reads, window, testSyncPeriod, minBackoff)
		// Twice the passes the resyncs and the backoff make, for the events
		// of the children just made; a hot loop would make hundreds.
		if limit := int(2*(window/testSyncPeriod+window/minBackoff) + 2); reads > limit {
			t.Errorf("%d Gateway API requests in %v, want at most %d", reads, window, limit)
		}
		if err := suite.client.Get(ctx, key(ns, "nexus"), got); err != nil {
			t.Fatal(err)
		}
		if got.ResourceVersion != rv {
			t.Errorf("the EHRIntegration was written while the Gateway API stayed absent (resourceVersion %s -> %s)", rv, got.ResourceVersion)
		}
	})

	t.Run("Gateway API installed: recovers without a restart", func(t *testing.T) {
		crds, err := gatewayapi.InstallCRDs(suite.cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("installed %d Gateway API CRDs", len(crds))
		// The parent Gateway does not exist yet: that is the next reason.
		got := waitReason(t, ns, "nexus", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonGatewayNotFound)
		c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionDegraded)
		if want := "Gateway edge-system/edge (spec.gateway.parentRefs) not found"; c.Message != want {
			t.Errorf("message %q, want %q", c.Message, want)
		}
	})

	gwNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "edge-system"}}
	create(t, gwNS)
	https := func(name, host string) gwv1.Listener {
		return gwv1.Listener{Name: gwv1.SectionName(name), Hostname: ptr.To(gwv1.Hostname(host)), Port: 8443,
			Protocol: gwv1.HTTPSProtocolType,
			TLS: &gwv1.ListenerTLSConfig{Mode: ptr.To(gwv1.TLSModeTerminate),
				CertificateRefs: []gwv1.SecretObjectReference{{Name: gwv1.ObjectName(name + "-tls")}}},
			AllowedRoutes: &gwv1.AllowedRoutes{Namespaces: &gwv1.RouteNamespaces{From: ptr.To(gwv1.NamespacesFromAll)}}}
	}
	plain := func(name, host string) gwv1.Listener {
		return gwv1.Listener{Name: gwv1.SectionName(name), Hostname: ptr.To(gwv1.Hostname(host)), Port: 8000,
			Protocol:      gwv1.HTTPProtocolType,
			AllowedRoutes: &gwv1.AllowedRoutes{Namespaces: &gwv1.RouteNamespaces{From: ptr.To(gwv1.NamespacesFromAll)}}}
	}
	gw := &gwv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: gwNS.Name, Name: "edge"},
		Spec: gwv1.GatewaySpec{GatewayClassName: "edge",
			// Another tenant's listeners do not concern this route.
			Listeners: []gwv1.Listener{https("nexus", "nexus.example.test"), plain("other-plain", "other.example.test")}}}
	route := &gwv1.HTTPRoute{}

	t.Run("route built", func(t *testing.T) {
		create(t, gw)
		child(t, ns, "nexus", route)
		var owner v1alpha1.EHRIntegration
		if err := suite.client.Get(ctx, key(ns, "nexus"), &owner); err != nil {
			t.Fatal(err)
		}
		if ref := metav1.GetControllerOf(route); ref == nil || ref.UID != owner.UID || ref.Kind != "EHRIntegration" {
			t.Errorf("controller of the route = %+v, want EHRIntegration nexus", ref)
		}
		if route.Labels[labelEHR] != "nexus" {
			t.Errorf("route labels = %v", route.Labels)
		}
		want := gwv1.HTTPRouteSpec{
			CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{{
				Group: ptr.To(gwv1.Group(gwv1.GroupName)), Kind: ptr.To(gwv1.Kind("Gateway")),
				Namespace: ptr.To(gwv1.Namespace("edge-system")), Name: "edge"}}},
			Hostnames: []gwv1.Hostname{"nexus.example.test", "nexus-alt.example.test"},
			Rules: []gwv1.HTTPRouteRule{{
				Matches: []gwv1.HTTPRouteMatch{{Path: &gwv1.HTTPPathMatch{
					Type: ptr.To(gwv1.PathMatchPathPrefix), Value: ptr.To("/v2/webhooks/nexus/")}}},
				BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: gwv1.BackendRef{
					BackendObjectReference: gwv1.BackendObjectReference{
						Group: ptr.To(gwv1.Group("")), Kind: ptr.To(gwv1.Kind("Service")),
						Name: "nexus-receiver", Port: ptr.To(gwv1.PortNumber(8080))},
					Weight: ptr.To[int32](1)}}},
			}},
		}
		if diff := cmp.Diff(want, route.Spec); diff != "" {
			t.Errorf("route spec (-want +got):\n%s", diff)
		}
		markAvailable(t, ns, "nexus")
		// No Gateway controller has spoken yet: not ready.
		got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonRoutePending)
		c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionRouteAccepted)
		if c == nil || c.Status != metav1.ConditionUnknown || c.Message != "no word yet from the controller of Gateway edge-system/edge" {
			t.Errorf("RouteAccepted = %+v", c)
		}
		if want := "https://nexus.example.test/v2/webhooks/nexus/sync-appointments"; got.Status.Endpoint != want {
			t.Errorf("endpoint = %s, want %s", got.Status.Endpoint, want)
		}
	})

	// setRouteStatus writes what a Gateway controller would.
	setRouteStatus := func(t *testing.T, status metav1.ConditionStatus, reason, msg string) {
		t.Helper()
		eventually(t, waitFor, "writing the route's status", func() error {
			if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), route); err != nil {
				return err
			}
			route.Status.Parents = []gwv1.RouteParentStatus{{
				ParentRef:      gwv1.ParentReference{Namespace: ptr.To(gwv1.Namespace("edge-system")), Name: "edge"},
				ControllerName: "example.test/gateway-controller",
				Conditions: []metav1.Condition{{Type: string(gwv1.RouteConditionAccepted), Status: status, Reason: reason,
					Message: msg, ObservedGeneration: route.Generation, LastTransitionTime: metav1.Now()}},
			}}
			return suite.client.Status().Update(ctx, route)
		})
	}

	t.Run("route accepted", func(t *testing.T) {
		setRouteStatus(t, metav1.ConditionTrue, "Accepted", "accepted")
		got := waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
		c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionRouteAccepted)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonRouteAccepted {
			t.Errorf("RouteAccepted = %+v", c)
		}
	})

	t.Run("idle resync writes nothing", func(t *testing.T) {
		suite.writes.settle(time.Second)
		var before, after v1alpha1.EHRIntegration
		if err := suite.client.Get(ctx, key(ns, "nexus"), &before); err != nil {
			t.Fatal(err)
		}
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), route); err != nil {
			t.Fatal(err)
		}
		rv := route.ResourceVersion
		_, by0 := suite.writes.snapshot()
		time.Sleep(3*testSyncPeriod + time.Second)
		_, by1 := suite.writes.snapshot()
		if n := by1["PATCH httproutes"] - by0["PATCH httproutes"]; n != 0 {
			t.Errorf("%d route patches over 3 idle resyncs", n)
		}
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), route); err != nil {
			t.Fatal(err)
		}
		if err := suite.client.Get(ctx, key(ns, "nexus"), &after); err != nil {
			t.Fatal(err)
		}
		if route.ResourceVersion != rv || after.ResourceVersion != before.ResourceVersion {
			t.Errorf("written while idle: route %s -> %s, EHRIntegration %s -> %s",
				rv, route.ResourceVersion, before.ResourceVersion, after.ResourceVersion)
		}
	})

	t.Run("route not accepted", func(t *testing.T) {
		setRouteStatus(t, metav1.ConditionFalse, "NotAllowedByListeners", "no listener allows routes from this namespace")
		got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonRouteNotAccepted)
		c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionRouteAccepted)
		want := "Gateway edge-system/edge did not accept the route: NotAllowedByListeners: no listener allows routes from this namespace"
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != v1alpha1.ReasonRouteNotAccepted || c.Message != want {
			t.Errorf("RouteAccepted = %+v, want False/%s %q", c, v1alpha1.ReasonRouteNotAccepted, want)
		}
		setRouteStatus(t, metav1.ConditionTrue, "Accepted", "accepted")
		waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	})

	t.Run("plain HTTP listener while a problem stands", func(t *testing.T) {
		// A rotation to a too-short secret: the children are left as they
		// are, but not a route that a new plain HTTP listener would serve.
		creds := credsSecret(ns)
		update(t, creds, func(s *corev1.Secret) { s.Data["webhook-secret"] = []byte("short") })
		waitReason(t, ns, "nexus", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonCredentialTooShort)
		child(t, ns, "nexus", route)
		update(t, gw, func(g *gwv1.Gateway) {
			g.Spec.Listeners = append(g.Spec.Listeners, plain("nexus-port-80", "nexus.example.test"))
		})
		gone(t, ns, "nexus-receiver", &gwv1.HTTPRoute{})
		got := waitReason(t, ns, "nexus", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonCredentialTooShort)
		if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionRouteAccepted); c != nil {
			t.Errorf("RouteAccepted without a route: %+v", c)
		}

		// Suspended, likewise: the route made once the secret is fixed
		// goes when the listener comes back.
		update(t, gw, func(g *gwv1.Gateway) { g.Spec.Listeners = g.Spec.Listeners[:len(g.Spec.Listeners)-1] })
		update(t, creds, func(s *corev1.Secret) { s.Data["webhook-secret"] = []byte(testSecret) })
		child(t, ns, "nexus", route)
		update(t, got, func(e *v1alpha1.EHRIntegration) { e.Spec.Suspend = true })
		waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonSuspended)
		update(t, gw, func(g *gwv1.Gateway) {
			g.Spec.Listeners = append(g.Spec.Listeners, plain("nexus-port-80", "nexus.example.test"))
		})
		gone(t, ns, "nexus-receiver", &gwv1.HTTPRoute{})

		update(t, gw, func(g *gwv1.Gateway) { g.Spec.Listeners = g.Spec.Listeners[:len(g.Spec.Listeners)-1] })
		update(t, got, func(e *v1alpha1.EHRIntegration) { e.Spec.Suspend = false })
		child(t, ns, "nexus", route)
		setRouteStatus(t, metav1.ConditionTrue, "Accepted", "accepted")
		markAvailable(t, ns, "nexus")
		waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	})

	t.Run("plain HTTP listener while a parent Gateway is missing", func(t *testing.T) {
		// A second parent that does not exist: GatewayNotFound, the route
		// made before stays; then the first gains a plain HTTP listener.
		var e v1alpha1.EHRIntegration
		if err := suite.client.Get(ctx, key(ns, "nexus"), &e); err != nil {
			t.Fatal(err)
		}
		update(t, &e, func(e *v1alpha1.EHRIntegration) {
			e.Spec.Gateway.ParentRefs = append(e.Spec.Gateway.ParentRefs, v1alpha1.GatewayParentReference{Name: "edge-b", Namespace: "edge-system"})
		})
		waitReason(t, ns, "nexus", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonGatewayNotFound)
		child(t, ns, "nexus", route)
		update(t, gw, func(g *gwv1.Gateway) {
			g.Spec.Listeners = append(g.Spec.Listeners, plain("nexus-port-80", "nexus.example.test"))
		})
		gone(t, ns, "nexus-receiver", &gwv1.HTTPRoute{})
		waitReason(t, ns, "nexus", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonInsecureListener)

		update(t, gw, func(g *gwv1.Gateway) { g.Spec.Listeners = g.Spec.Listeners[:len(g.Spec.Listeners)-1] })
		update(t, &e, func(e *v1alpha1.EHRIntegration) { e.Spec.Gateway.ParentRefs = e.Spec.Gateway.ParentRefs[:1] })
		child(t, ns, "nexus", route)
		setRouteStatus(t, metav1.ConditionTrue, "Accepted", "accepted")
		waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	})

	t.Run("plain HTTP listener refused unless allowed", func(t *testing.T) {
		update(t, gw, func(g *gwv1.Gateway) {
			g.Spec.Listeners = append(g.Spec.Listeners, plain("nexus-plain", "nexus-alt.example.test"))
		})
		got := waitReason(t, ns, "nexus", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonInsecureListener)
		c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionDegraded)
		want := "the route would attach to listener edge-system/edge/nexus-plain, which serves plain HTTP: " +
			"name an HTTPS listener in spec.gateway.parentRefs[].sectionName, or set spec.gateway.allowInsecureHTTP: true"
		if c.Message != want {
			t.Errorf("message %q, want %q", c.Message, want)
		}
		gone(t, ns, "nexus-receiver", &gwv1.HTTPRoute{})

		// Attached to the HTTPS listener only, the route is made again.
		update(t, got, func(e *v1alpha1.EHRIntegration) { e.Spec.Gateway.ParentRefs[0].SectionName = "nexus" })
		child(t, ns, "nexus", route)
		if s := route.Spec.ParentRefs[0].SectionName; s == nil || *s != "nexus" {
			t.Errorf("route parentRef sectionName = %v, want nexus", s)
		}
		waitReason(t, ns, "nexus", v1alpha1.ConditionRouteAccepted, metav1.ConditionUnknown, v1alpha1.ReasonRoutePending)

		// Allowed, on the plain listener alone: the endpoint says http.
		update(t, got, func(e *v1alpha1.EHRIntegration) {
			e.Spec.Gateway.ParentRefs[0].SectionName = "nexus-plain"
			e.Spec.Gateway.Hostnames = []string{"nexus-alt.example.test"}
			e.Spec.Gateway.AllowInsecureHTTP = true
		})
		got = waitReason(t, ns, "nexus", v1alpha1.ConditionRouteAccepted, metav1.ConditionUnknown, v1alpha1.ReasonRoutePending)
		if want := "http://nexus-alt.example.test/v2/webhooks/nexus/sync-appointments"; got.Status.Endpoint != want {
			t.Errorf("endpoint = %s, want %s", got.Status.Endpoint, want)
		}
	})

	t.Run("from gateway to ingress", func(t *testing.T) {
		update(t, e, func(e *v1alpha1.EHRIntegration) {
			e.Spec.Gateway = nil
			e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.example.test", TLSSecretName: "nexus-tls"}
		})
		child(t, ns, "nexus", &networkingv1.Ingress{})
		gone(t, ns, "nexus-receiver", &gwv1.HTTPRoute{})
		got := waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
		if meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionRouteAccepted) != nil {
			t.Errorf("RouteAccepted still present without spec.gateway: %+v", got.Status.Conditions)
		}
	})
}

func TestListenerMatchesAny(t *testing.T) {
	for _, tt := range []struct {
		listener string
		hosts    []string
		want     bool
	}{
		{"", []string{"a.example.test"}, true},
		{"a.example.test", []string{"b.example.test", "a.example.test"}, true},
		{"a.example.test", []string{"b.example.test"}, false},
		{"*.example.test", []string{"a.example.test"}, true},
		{"*.example.test", []string{"x.a.example.test"}, true},
		{"*.example.test", []string{"example.test"}, false},
		{"*.example.test", []string{"aexample.test"}, false},
	} {
		var l *gwv1.Hostname
		if tt.listener != "" {
			l = ptr.To(gwv1.Hostname(tt.listener))
		}
		if got := listenerMatchesAny(l, tt.hosts); got != tt.want {
			t.Errorf("listener %q, hosts %v: %v, want %v", tt.listener, tt.hosts, got, tt.want)
		}
	}
}

func TestCheckListeners(t *testing.T) {
	e := sample()
	e.Spec.Gateway = &v1alpha1.GatewaySpec{ParentRefs: []v1alpha1.GatewayParentReference{{Name: "edge"}, {Name: "other", Namespace: "infra"}},
		Hostnames: []string{"a.example.test"}}
	l := func(name, host string, p gwv1.ProtocolType) gwv1.Listener {
		return gwv1.Listener{Name: gwv1.SectionName(name), Hostname: ptr.To(gwv1.Hostname(host)), Protocol: p}
	}
	gws := map[string]*gwv1.Gateway{
		"ehr/edge": {Spec: gwv1.GatewaySpec{Listeners: []gwv1.Listener{
			l("a-tls", "a.example.test", gwv1.HTTPSProtocolType),
			l("b-plain", "b.example.test", gwv1.HTTPProtocolType), // another host
			l("tcp", "a.example.test", gwv1.TCPProtocolType),      // no HTTPRoute there
		}}},
		"infra/other": {Spec: gwv1.GatewaySpec{Listeners: []gwv1.Listener{l("any-plain", "", gwv1.HTTPProtocolType)}}},
	}
	got := checkListeners(e, gws)
	if !got.https || !cmp.Equal(got.insecure, []string{"infra/other/any-plain"}) {
		t.Errorf("check = %+v, want https and infra/other/any-plain insecure", got)
	}
	// A sectionName narrows the attachment to that listener.
	e.Spec.Gateway.ParentRefs[1].SectionName = "none"
	if got := checkListeners(e, gws); !got.https || len(got.insecure) != 0 {
		t.Errorf("with sectionName none: check = %+v, want https only", got)
	}
}

func TestRouteAcceptance(t *testing.T) {
	e := sample()
	e.Spec.Gateway = &v1alpha1.GatewaySpec{ParentRefs: []v1alpha1.GatewayParentReference{
		{Name: "edge"}, {Name: "edge2", Namespace: "infra", SectionName: "web"}}, Hostnames: []string{"a.example.test"}}
	parent := func(ns, name, section string, s metav1.ConditionStatus, gen int64) gwv1.RouteParentStatus {
		p := gwv1.RouteParentStatus{ParentRef: gwv1.ParentReference{Name: gwv1.ObjectName(name)},
			Conditions: []metav1.Condition{{Type: "Accepted", Status: s, Reason: "R", Message: "m", ObservedGeneration: gen}}}
		if ns != "" {
			p.ParentRef.Namespace = ptr.To(gwv1.Namespace(ns))
		}
		if section != "" {
			p.ParentRef.SectionName = ptr.To(gwv1.SectionName(section))
		}
		return p
	}
	route := func(parents ...gwv1.RouteParentStatus) *gwv1.HTTPRoute {
		r := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "ehr", Generation: 2}}
		r.Status.Parents = parents
		return r
	}
	for _, tt := range []struct {
		name   string
		route  *gwv1.HTTPRoute
		status metav1.ConditionStatus
		reason string
	}{
		{"no word", route(), metav1.ConditionUnknown, v1alpha1.ReasonRoutePending},
		{"one of two", route(parent("", "edge", "", "True", 2)), metav1.ConditionUnknown, v1alpha1.ReasonRoutePending},
		{"both", route(parent("ehr", "edge", "", "True", 2), parent("infra", "edge2", "web", "True", 2)), metav1.ConditionTrue, v1alpha1.ReasonRouteAccepted},
		{"stale generation", route(parent("", "edge", "", "True", 1), parent("infra", "edge2", "web", "True", 2)), metav1.ConditionUnknown, v1alpha1.ReasonRoutePending},
		{"no observedGeneration", route(parent("", "edge", "", "True", 0), parent("infra", "edge2", "web", "True", 2)), metav1.ConditionTrue, v1alpha1.ReasonRouteAccepted},
		{"wrong section", route(parent("", "edge", "", "True", 2), parent("infra", "edge2", "", "True", 2)), metav1.ConditionUnknown, v1alpha1.ReasonRoutePending},
		{"refused", route(parent("", "edge", "", "True", 2), parent("infra", "edge2", "web", "False", 2)), metav1.ConditionFalse, v1alpha1.ReasonRouteNotAccepted},
	} {
		s, reason, msg := routeAcceptance(e, tt.route)
		if s != tt.status || reason != tt.reason {
			t.Errorf("%s: %s/%s (%s), want %s/%s", tt.name, s, reason, msg, tt.status, tt.reason)
		}
	}
}
