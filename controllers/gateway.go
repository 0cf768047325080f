package controllers

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwv1ac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// The Gateway API is optional: a cluster may not serve it, and the manager
// must start and serve Ingress-only receivers there. So the HTTPRoute and
// Gateway watches are not part of the controller's start; they are added
// the first time a reconcile finds the API served (docs/decisions.md,
// "Gateway API without a hard dependency").

// indexGateways: "namespace/name" of the Gateways an EHRIntegration's
// spec.gateway refers to, so a Gateway's change finds the EHRIntegrations.
const indexGateways = ".spec.gateway.parentRefs"

// gatewayKinds are the Gateway API kinds the operator reads or writes.
var gatewayKinds = []schema.GroupKind{
	{Group: gwv1.GroupName, Kind: "HTTPRoute"},
	{Group: gwv1.GroupName, Kind: "Gateway"},
}

// gatewayAPI knows whether the cluster serves the Gateway API and adds the
// watches once it does.
type gatewayAPI struct {
	mapper meta.RESTMapper
	cache  cache.Cache
	scheme *runtime.Scheme
	// watch registers a source with the controller; set once it is built.
	watch func(source.TypedSource[reconcile.Request]) error
	// forGateway maps a Gateway to the EHRIntegrations that refer to it.
	forGateway handler.MapFunc

	mu      sync.Mutex
	watched bool
}

// served reports whether the API server serves the Gateway API kinds, and
// starts the watches the first time it does. While it does not, every call
// costs one discovery request: callers call it only for EHRIntegrations
// with spec.gateway, which look again with a backoff.
func (g *gatewayAPI) served(ctx context.Context) (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.watched {
		return true, nil
	}
	for _, gk := range gatewayKinds {
		if _, err := g.mapper.RESTMapping(gk, gwv1.GroupVersion.Version); err != nil {
			if meta.IsNoMatchError(err) {
				return false, nil
			}
			return false, fmt.Errorf("while discovering %s: %w", gk, err)
		}
	}
	changed := predicate.TypedResourceVersionChangedPredicate[client.Object]{}
	route := source.Kind[client.Object](g.cache, &gwv1.HTTPRoute{},
		handler.EnqueueRequestForOwner(g.scheme, g.mapper, &v1alpha1.EHRIntegration{}, handler.OnlyControllerOwner()), changed)
	gw := source.Kind[client.Object](g.cache, &gwv1.Gateway{}, handler.EnqueueRequestsFromMapFunc(g.forGateway), changed)
	for _, src := range []source.TypedSource[reconcile.Request]{route, gw} {
		if err := g.watch(src); err != nil {
			return false, fmt.Errorf("while watching the Gateway API: %w", err)
		}
	}
	g.watched = true
	logf.FromContext(ctx).Info("Watching Gateway API HTTPRoutes and Gateways")
	return true, nil
}

// known reports, without asking the API server, whether served has seen
// the Gateway API: an HTTPRoute can exist only then.
func (g *gatewayAPI) known() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.watched
}

// setupGatewayAPI makes r's gatewayAPI for the built controller, watching
// from the start when the API is already served.
func (r *EHRIntegrationReconciler) setupGatewayAPI(ctx context.Context, mgr interface {
	GetRESTMapper() meta.RESTMapper
	GetCache() cache.Cache
	GetScheme() *runtime.Scheme
}, c controller.Controller) error {
	r.gateways = &gatewayAPI{
		mapper: mgr.GetRESTMapper(), cache: mgr.GetCache(), scheme: mgr.GetScheme(),
		watch:      func(s source.TypedSource[reconcile.Request]) error { return c.Watch(s) },
		forGateway: r.forGateway,
	}
	// A failed look is not fatal: the first resource with spec.gateway
	// looks again.
	if _, err := r.gateways.served(ctx); err != nil {
		logf.FromContext(ctx).Error(err, "Cannot tell whether the cluster serves the Gateway API; will look again")
	}
	return nil
}

// forGateway maps a Gateway to the EHRIntegrations whose spec.gateway
// refers to it.
func (r *EHRIntegrationReconciler) forGateway(ctx context.Context, gw client.Object) []reconcile.Request {
	var list v1alpha1.EHRIntegrationList
	key := gw.GetNamespace() + "/" + gw.GetName()
	if err := r.List(ctx, &list, client.MatchingFields{indexGateways: key}); err != nil {
		logf.FromContext(ctx).Error(err, "Cannot list EHRIntegrations to enqueue", "gateway", key)
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, e := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&e)})
	}
	return reqs
}

// gatewayKeys are the index values of e: its parent Gateways' namespace/name.
func gatewayKeys(e *v1alpha1.EHRIntegration) []string {
	if e.Spec.Gateway == nil {
		return nil
	}
	var keys []string
	for _, p := range e.Spec.Gateway.ParentRefs {
		keys = append(keys, parentNamespace(e, p)+"/"+p.Name)
	}
	return keys
}

func parentNamespace(e *v1alpha1.EHRIntegration, p v1alpha1.GatewayParentReference) string {
	if p.Namespace != "" {
		return p.Namespace
	}
	return e.Namespace
}

// buildHTTPRoute makes the receiver's HTTPRoute, or returns nil when e asks
// for none. Like the Ingress, it routes only the EHR's own path, so another
// tenant's path on the same host, /metrics and the probes are not routed.
// Fields the API server would default (group, kind, weight) are set, so
// that the operator's fields equal what it applies and a resync writes nothing.
func buildHTTPRoute(e *v1alpha1.EHRIntegration) *gwv1ac.HTTPRouteApplyConfiguration {
	g := e.Spec.Gateway
	if g == nil {
		return nil
	}
	spec := gwv1ac.HTTPRouteSpec()
	for _, p := range g.ParentRefs {
		ref := gwv1ac.ParentReference().
			WithGroup(gwv1.GroupName).
			WithKind("Gateway").
			WithName(gwv1.ObjectName(p.Name))
		if p.Namespace != "" {
			ref.WithNamespace(gwv1.Namespace(p.Namespace))
		}
		if p.SectionName != "" {
			ref.WithSectionName(gwv1.SectionName(p.SectionName))
		}
		spec.WithParentRefs(ref)
	}
	for _, h := range g.Hostnames {
		spec.WithHostnames(gwv1.Hostname(h))
	}
	spec.WithRules(gwv1ac.HTTPRouteRule().
		WithMatches(gwv1ac.HTTPRouteMatch().
			WithPath(gwv1ac.HTTPPathMatch().
				WithType(gwv1.PathMatchPathPrefix).
				WithValue(webhookPathPrefix(e)))).
		WithBackendRefs(gwv1ac.HTTPBackendRef().
			WithGroup("").
			WithKind("Service").
			WithName(gwv1.ObjectName(childName(e))).
			WithPort(httpPort).
			WithWeight(1)))
	return gwv1ac.HTTPRoute(childName(e), e.Namespace).
		WithLabels(commonLabels(e)).
		WithOwnerReferences(ownerReference(e)).
		WithSpec(spec)
}

// listenerCheck is what the parent Gateways' listeners say about e's route.
type listenerCheck struct {
	// https: a listener the route attaches to terminates TLS.
	https bool
	// insecure names the listeners the route attaches to that serve plain
	// HTTP, as "namespace/gateway/listener".
	insecure []string
}

// checkListeners looks at the listeners of the parent Gateways (gateways,
// by "namespace/name") that e's route would attach to: those named by a
// parentRef's sectionName, or all, whose protocol is HTTP or HTTPS and
// whose hostname matches one of the route's.
func checkListeners(e *v1alpha1.EHRIntegration, gateways map[string]*gwv1.Gateway) listenerCheck {
	var out listenerCheck
	g := e.Spec.Gateway
	for _, p := range g.ParentRefs {
		key := parentNamespace(e, p) + "/" + p.Name
		gw := gateways[key]
		if gw == nil {
			continue
		}
		for _, l := range gw.Spec.Listeners {
			if p.SectionName != "" && string(l.Name) != p.SectionName {
				continue
			}
			if !listenerMatchesAny(l.Hostname, g.Hostnames) {
				continue
			}
			switch l.Protocol {
			case gwv1.HTTPSProtocolType:
				out.https = true
			case gwv1.HTTPProtocolType:
				out.insecure = append(out.insecure, key+"/"+string(l.Name))
			}
		}
	}
	return out
}

// listenerMatchesAny: a listener without hostname takes every host; one
// with "*.example.com" takes any name below example.com.
func listenerMatchesAny(listener *gwv1.Hostname, hosts []string) bool {
	if listener == nil || *listener == "" {
		return true
	}
	l := string(*listener)
	for _, h := range hosts {
		if h == l || (strings.HasPrefix(l, "*.") && strings.HasSuffix(h, l[1:]) && len(h) > len(l)-1) {
			return true
		}
	}
	return false
}

// routeAcceptance reads the route's status for every parentRef of e: True
// when each is accepted by its Gateway's controller for the route's current
// generation, False when one is refused, Unknown while one has no word.
func routeAcceptance(e *v1alpha1.EHRIntegration, route *gwv1.HTTPRoute) (metav1.ConditionStatus, string, string) {
	var pending []string
	for _, p := range e.Spec.Gateway.ParentRefs {
		ns := parentNamespace(e, p)
		name := ns + "/" + p.Name
		if p.SectionName != "" {
			name += " listener " + p.SectionName
		}
		accepted, refused := false, ""
		for _, ps := range route.Status.Parents {
			ref := ps.ParentRef
			refNS := route.Namespace
			if ref.Namespace != nil {
				refNS = string(*ref.Namespace)
			}
			section := ""
			if ref.SectionName != nil {
				section = string(*ref.SectionName)
			}
			if string(ref.Name) != p.Name || refNS != ns || section != p.SectionName {
				continue
			}
			c := meta.FindStatusCondition(ps.Conditions, string(gwv1.RouteConditionAccepted))
			// A verdict on an older spec is no verdict; a controller that
			// does not fill observedGeneration is taken at its word.
			if c == nil || (c.ObservedGeneration != 0 && c.ObservedGeneration < route.Generation) {
				continue
			}
			if c.Status == metav1.ConditionTrue {
				accepted = true
			} else {
				refused = fmt.Sprintf("Gateway %s did not accept the route: %s: %s", name, c.Reason, c.Message)
			}
		}
		switch {
		case accepted:
		case refused != "":
			return metav1.ConditionFalse, v1alpha1.ReasonRouteNotAccepted, refused
		default:
			pending = append(pending, name)
		}
	}
	if len(pending) > 0 {
		return metav1.ConditionUnknown, v1alpha1.ReasonRoutePending,
			"no word yet from the controller of Gateway " + strings.Join(pending, ", Gateway ")
	}
	return metav1.ConditionTrue, v1alpha1.ReasonRouteAccepted, "every parent Gateway accepted the receiver's HTTPRoute"
}

// reconcileRoute makes e's HTTPRoute when the Gateway API is served, its
// parent Gateways exist and none of the listeners it would attach to serves
// plain HTTP without spec.gateway.allowInsecureHTTP. Otherwise it records
// the problem in obs; a route attached to a plain HTTP listener is deleted.
func (r *EHRIntegrationReconciler) reconcileRoute(ctx context.Context, e *v1alpha1.EHRIntegration, obs *observation, written *[]string) error {
	ok, err := r.gateways.served(ctx)
	if err != nil {
		return err
	}
	if !ok {
		obs.problem = &problem{reason: v1alpha1.ReasonGatewayAPINotInstalled, retry: true,
			message: "spec.gateway is set but the cluster serves no Gateway API (gateway.networking.k8s.io/v1 Gateway and HTTPRoute): " +
				"install its CRDs, or expose the receiver with spec.ingress"}
		return nil
	}
	gateways, missing, err := r.parentGateways(ctx, e)
	if err != nil {
		return err
	}
	// The Gateways there are are checked even while one is missing: the
	// route made before stays, and must not be left on a plain HTTP
	// listener one of them has gained since.
	check := checkListeners(e, gateways)
	if len(check.insecure) > 0 && !r.insecureAllowed(e) {
		obs.problem = r.insecureListenerProblem(e, check.insecure)
		return r.deleteChild(ctx, e, written, &gwv1.HTTPRoute{})
	}
	if missing != "" {
		// The Gateway watch brings us back when it appears.
		obs.problem = &problem{reason: v1alpha1.ReasonGatewayNotFound,
			message: fmt.Sprintf("Gateway %s (spec.gateway.parentRefs) not found", missing)}
		return nil
	}
	obs.scheme = "https"
	if !check.https && len(check.insecure) > 0 {
		obs.scheme = "http"
	}
	route, res, err := applyChild(ctx, r.Client, e, buildHTTPRoute(e), &gwv1.HTTPRoute{}, gwv1ac.ExtractHTTPRoute, nil)
	if err != nil {
		return err
	}
	wrote(ctx, written, route, res)
	obs.route = route
	return nil
}

// insecureAllowed: e's route may attach to a listener that serves plain
// HTTP, because the spec allows it and so does the manager.
func (r *EHRIntegrationReconciler) insecureAllowed(e *v1alpha1.EHRIntegration) bool {
	return e.Spec.Gateway != nil && e.Spec.Gateway.AllowInsecureHTTP && r.AllowInsecureHTTP
}

// insecureListenerProblem: the route would attach to the plain HTTP
// listeners insecure. The way out offered depends on whether the manager
// lets spec.gateway.allowInsecureHTTP take effect.
func (r *EHRIntegrationReconciler) insecureListenerProblem(e *v1alpha1.EHRIntegration, insecure []string) *problem {
	msg := fmt.Sprintf("the route would attach to listener %s, which serves plain HTTP: "+
		"name an HTTPS listener in spec.gateway.parentRefs[].sectionName", strings.Join(insecure, ", "))
	switch {
	case r.AllowInsecureHTTP:
		return &problem{reason: v1alpha1.ReasonInsecureListener, message: msg + ", or set spec.gateway.allowInsecureHTTP: true"}
	case e.Spec.Gateway.AllowInsecureHTTP:
		return &problem{reason: v1alpha1.ReasonInsecureHTTPForbidden, message: msg + "; spec.gateway.allowInsecureHTTP is true, " +
			"but this operator serves no receiver over plain HTTP (its --allow-insecure-http, the chart's allowInsecureHTTP, is false)"}
	}
	return &problem{reason: v1alpha1.ReasonInsecureListener, message: msg}
}

// parentGateways gets the Gateways of e's spec.gateway.parentRefs, by
// "namespace/name"; missing names the first that does not exist.
func (r *EHRIntegrationReconciler) parentGateways(ctx context.Context, e *v1alpha1.EHRIntegration) (map[string]*gwv1.Gateway, string, error) {
	gateways := map[string]*gwv1.Gateway{}
	missing := ""
	for _, p := range e.Spec.Gateway.ParentRefs {
		key := client.ObjectKey{Namespace: parentNamespace(e, p), Name: p.Name}
		var gw gwv1.Gateway
		if err := r.Get(ctx, key, &gw); err != nil {
			if apierrors.IsNotFound(err) {
				missing = cmp.Or(missing, key.String())
				continue
			}
			return nil, "", fmt.Errorf("while getting Gateway %s: %w", key, err)
		}
		gateways[key.String()] = &gw
	}
	return gateways, missing, nil
}

// guardRoute deletes e's HTTPRoute, when it has one, if it attaches to a
// listener that serves plain HTTP and spec.gateway does not allow that. It
// runs on the passes that leave the route as it is (suspended, a problem
// standing): a Gateway may gain such a listener meanwhile, and the route
// would then carry patient data in the clear until the problem is fixed.
// The route is read as it stands, which the spec may no longer describe.
func (r *EHRIntegrationReconciler) guardRoute(ctx context.Context, e *v1alpha1.EHRIntegration, written *[]string) error {
	if !r.gateways.known() {
		return nil // without the Gateway API served there is no route
	}
	if r.insecureAllowed(e) {
		return nil
	}
	var route gwv1.HTTPRoute
	if err := r.Get(ctx, client.ObjectKey{Namespace: e.Namespace, Name: childName(e)}, &route); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(&route, e) {
		return nil
	}
	live := &v1alpha1.EHRIntegration{ObjectMeta: metav1.ObjectMeta{Namespace: route.Namespace},
		Spec: v1alpha1.EHRIntegrationSpec{Gateway: routeAsSpec(&route)}}
	gateways, _, err := r.parentGateways(ctx, live)
	if err != nil {
		return err
	}
	if check := checkListeners(live, gateways); len(check.insecure) > 0 {
		logf.FromContext(ctx).Info("Deleting the route: a listener it attaches to serves plain HTTP", "listeners", check.insecure)
		return r.deleteChild(ctx, e, written, &gwv1.HTTPRoute{})
	}
	return nil
}

// routeAsSpec reads an HTTPRoute back as the spec.gateway that made it:
// its parent Gateways and hostnames.
func routeAsSpec(route *gwv1.HTTPRoute) *v1alpha1.GatewaySpec {
	g := &v1alpha1.GatewaySpec{}
	for _, p := range route.Spec.ParentRefs {
		if (p.Group != nil && *p.Group != gwv1.GroupName) || (p.Kind != nil && *p.Kind != "Gateway") {
			continue
		}
		ref := v1alpha1.GatewayParentReference{Name: string(p.Name)}
		if p.Namespace != nil {
			ref.Namespace = string(*p.Namespace)
		}
		if p.SectionName != nil {
			ref.SectionName = string(*p.SectionName)
		}
		g.ParentRefs = append(g.ParentRefs, ref)
	}
	for _, h := range route.Spec.Hostnames {
		g.Hostnames = append(g.Hostnames, string(h))
	}
	return g
}
