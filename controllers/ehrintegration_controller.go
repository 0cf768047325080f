// Package controllers holds the EHRIntegration reconciler (architecture.md, "What the operator makes"): it
// makes each EHRIntegration's receiver ServiceAccount, NetworkPolicy,
// Deployment, Service, Ingress or HTTPRoute, and PodDisruptionBudget, and
// reports on them in its status.
package controllers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"time"

	// The receiver's time zones are checked here with time.LoadLocation;
	// the receiver embeds the same zone database, so what passes here is
	// what it reads times with.
	_ "time/tzdata"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/receiver/sizing"
)

// Field indexes on EHRIntegrations in the manager's cache.
const (
	// indexSecretNames: the Secrets an EHRIntegration references (its
	// credentials, database and Ingress TLS Secrets), so a Secret's change
	// finds the EHRIntegrations to reconcile.
	indexSecretNames = ".spec.secretNames"
	// indexEHR: spec.ehr, to find duplicates across namespaces.
	indexEHR = ".spec.ehr"
)

// EHRIntegrationReconciler reconciles EHRIntegrations.
type EHRIntegrationReconciler struct {
	client.Client
	// APIReader reads Secrets straight from the API server: the manager
	// caches only Secrets' metadata (to watch them), not every Secret's data.
	APIReader client.Reader
	Recorder  events.EventRecorder
	// ReceiverLogLevel is the receivers' --log-level when spec.logLevel is
	// empty; empty means the receiver's default.
	ReceiverLogLevel string
	// ReceiverImage is the receivers' image when spec.image is empty: the
	// operator's own image, so operator and receivers are one version.
	ReceiverImage string
	// MaxConcurrentReconciles defaults to 1.
	MaxConcurrentReconciles int
	// DBZPort is the port of the receivers' GET /dbz; 0 means the metrics
	// port. Tests point it at their own server.
	DBZPort int
	// HTTPClient asks the receivers; nil means one without proxies.
	HTTPClient *http.Client
	// DatabasePollInterval is how often an integration with running pods
	// is looked at again; 0 means DefaultDatabasePollInterval.
	DatabasePollInterval time.Duration

	// gateways watches the Gateway API once the cluster serves it.
	gateways *gatewayAPI
	// NetworkPolicy is what each receiver's NetworkPolicy admits; nil or
	// not Enabled means no NetworkPolicy (and those made before are deleted).
	NetworkPolicy *NetworkPolicyConfig
	// ReceiverPodDefaults are the receivers' pod settings where
	// spec.podTemplate says nothing (mergePodTemplate); nil means none.
	ReceiverPodDefaults *v1alpha1.ReceiverPodTemplate
	// AllowInsecureHTTP lets spec.ingress.allowInsecureHTTP and
	// spec.gateway.allowInsecureHTTP serve a receiver over plain HTTP (the
	// manager's --allow-insecure-http). False, the default: such an
	// Ingress or HTTPRoute is not made, one made before is deleted, and the
	// status says why (InsecureHTTPForbidden).
	AllowInsecureHTTP bool
}

// +kubebuilder:rbac:groups=ehr.insighthealth.io,resources=ehrintegrations,verbs=get;list;watch
// +kubebuilder:rbac:groups=ehr.insighthealth.io,resources=ehrintegrations/status,verbs=update
// +kubebuilder:rbac:groups=ehr.insighthealth.io,resources=ehrintegrations/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// The ConfigMap of spec.database.ca is read by name, to check its key.
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get
// Pods are listed, uncached, to ask the receivers about their database.
// +kubebuilder:rbac:groups="",resources=pods,verbs=list
// Server-side apply is a patch, and needs create too when the child is new.
// +kubebuilder:rbac:groups="",resources=serviceaccounts;services,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingresses,verbs=get;list;watch;create;patch;delete
// IngressClasses (cluster-scoped) are read to tell whether an Ingress's class exists.
// +kubebuilder:rbac:groups=networking.k8s.io,resources=ingressclasses,verbs=get;list;watch
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes,verbs=get;list;watch;create;patch;delete
// Gateways are read for their listeners' protocols, never written.
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=gateways,verbs=get;list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile makes the children of one EHRIntegration match its spec and
// writes its status when that changed.
func (r *EHRIntegrationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var e v1alpha1.EHRIntegration
	if err := r.Get(ctx, req.NamespacedName, &e); err != nil {
		// Deleted: the children go with it through their owner references.
		if apierrors.IsNotFound(err) {
			forgetMetrics(req.Namespace, req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !e.DeletionTimestamp.IsZero() {
		forgetMetrics(req.Namespace, req.Name)
		return ctrl.Result{}, nil
	}

	obs, err := r.reconcileChildren(ctx, &e)
	if err != nil {
		return ctrl.Result{}, err
	}
	if obs.deployment != nil {
		pods, err := r.receiverPods(ctx, &e)
		if err != nil {
			return ctrl.Result{}, err
		}
		obs.served, obs.servedKnown = servedVersions(pods, obs.deployment, time.Now())
		obs.podTrouble = podTrouble(obs.deployment, pods)
		obs.podsStarted = len(pods) > 0
		if !obs.suspended && obs.problem == nil {
			obs.db = r.askDatabase(ctx, pods)
		}
	}
	st := computeStatus(&e, obs)
	r.recordTransition(&e, st)
	recordMetrics(&e, st)
	if !equality.Semantic.DeepEqual(e.Status, st) {
		updated := e.DeepCopy()
		updated.Status = st
		if err := r.Status().Update(ctx, updated); err != nil {
			if apierrors.IsNotFound(err) {
				return ctrl.Result{}, nil // deleted meanwhile: nothing to report on
			}
			if apierrors.IsConflict(err) {
				// Someone changed it since we read it; the change is on its
				// way to us as an event, look again shortly.
				return ctrl.Result{RequeueAfter: time.Second}, nil
			}
			return ctrl.Result{}, fmt.Errorf("while updating the status of EHRIntegration %s: %w", req.NamespacedName, err)
		}
	}
	if obs.problem != nil && obs.problem.retry {
		return ctrl.Result{RequeueAfter: retryAfter(st, time.Now())}, nil
	}
	if rotating(obs) {
		// No event says the last old pod is gone: look until it is, so
		// that servedSecretVersions follows within seconds.
		return ctrl.Result{RequeueAfter: rolloutPollInterval}, nil
	}
	if obs.db != nil || awaitingPods(obs) {
		// Nothing tells us when a database goes away: ask again. Nor when
		// a receiver pod starts running (pods are not watched), and one
		// that runs but never turns ready (its database refuses it)
		// changes nothing in its Deployment: without a look, the
		// DatabaseReachable that says why would wait for the progress
		// deadline.
		return ctrl.Result{RequeueAfter: cmp.Or(r.DatabasePollInterval, DefaultDatabasePollInterval)}, nil
	}
	return ctrl.Result{}, nil
}

// awaitingPods: receiver pods are wanted, the Deployment has started some,
// and none runs to be asked about its database yet (pulling, starting).
// Not while it has started none: the ReplicaSet's pods (or its failure to
// make them) change the Deployment's status, which is watched; and on
// envtest, which runs no pods, 1,000 integrations would otherwise be
// looked at again every poll for ever.
func awaitingPods(o observation) bool {
	return o.deployment != nil && !o.suspended && o.problem == nil && o.wantReplicas > 0 && o.db == nil && o.podsStarted
}

// reconcileChildren checks the prerequisites and brings each child in line.
// A problem the user must fix is returned in the observation, not as an
// error, so it does not spin in the error backoff.
func (r *EHRIntegrationReconciler) reconcileChildren(ctx context.Context, e *v1alpha1.EHRIntegration) (observation, error) {
	obs := observation{wantReplicas: desiredReplicas(e)}
	var written []string
	err := r.reconcileChildrenInto(ctx, e, &obs, &written)
	if !obs.routeChecked {
		// The route was left as it is (suspended, a problem, an error on the
		// way): its Gateways may have gained a plain HTTP listener since,
		// and plain HTTP may have been turned off since the Ingress was made.
		err = errors.Join(err, r.guardRoute(ctx, e, &written), r.guardIngress(ctx, e, &written))
	}
	if len(written) > 0 {
		// One Event per pass, not one per object: creating 200 receivers
		// should not cost 1,000 Events.
		r.Recorder.Eventf(e, nil, corev1.EventTypeNormal, "Reconciled", "Reconcile", "%s", strings.Join(written, ", "))
	}
	return obs, err
}

// reconcileChildrenInto is reconcileChildren's work, recording what it
// found in obs and the children it wrote in written.
func (r *EHRIntegrationReconciler) reconcileChildrenInto(ctx context.Context, e *v1alpha1.EHRIntegration, obs *observation, written *[]string) error {
	if e.Spec.Suspend {
		obs.suspended = true
		d, err := r.suspend(ctx, e)
		obs.deployment = d
		return err
	}

	// A duplicate comes first, whatever else is wrong with it: two
	// receivers of one EHR would write the same rows, so the loser's stops
	// serving, even one that ran before.
	if p, err := r.duplicate(ctx, e); err != nil || p != nil {
		obs.problem = p
		if err == nil {
			obs.wantReplicas = 0
			obs.deployment, err = r.scaleToZero(ctx, e, p.reason)
		}
		return err
	}

	image, versions, p, err := r.prerequisites(ctx, e)
	if err != nil || p != nil {
		obs.problem = p
		if err == nil {
			// Report the receiver that still runs, if any.
			obs.deployment, err = r.currentDeployment(ctx, e)
		}
		return err
	}

	err = r.applyChildren(ctx, e, image, versions, obs, written)
	var conflict *ownershipConflictError
	if errors.As(err, &conflict) {
		obs.problem = &problem{reason: v1alpha1.ReasonOwnershipConflict, message: conflict.Error(), retry: true}
		return nil
	}
	if apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) {
		// A spec the CRD let through but the object built from it is not
		// (an Ingress annotation, resources, a toleration): say so in the
		// status, not only in the operator's log, and do not spin. The
		// children applied before it are as the spec asks; the rest, and a
		// receiver already running, are left as they were.
		obs.problem = &problem{reason: v1alpha1.ReasonChildRejected, message: err.Error(), retry: true}
		if obs.deployment == nil {
			obs.deployment, err = r.currentDeployment(ctx, e)
			return err
		}
		return nil
	}
	return err
}

// prerequisites returns the receiver image and the versions of the Secrets
// it reads, or the problem that stops the receiver from being made.
func (r *EHRIntegrationReconciler) prerequisites(ctx context.Context, e *v1alpha1.EHRIntegration) (string, v1alpha1.SecretVersions, *problem, error) {
	var none v1alpha1.SecretVersions
	// The checks of the spec alone come first: they need no API call.
	tz := withDefaults(e).Spec.TimeZone
	if _, err := time.LoadLocation(tz); err != nil || tz == "Local" {
		return "", none, &problem{reason: v1alpha1.ReasonInvalidTimeZone,
			message: fmt.Sprintf("timeZone %q is not an IANA time zone name such as America/New_York", tz)}, nil
	}
	// Its syntax, which the CRD does not check, before the API server
	// refuses the Deployment with an error only the operator's log shows.
	if err := validatePodTemplate(e.Spec.PodTemplate, field.NewPath("spec", "podTemplate")); err != nil {
		return "", none, &problem{reason: v1alpha1.ReasonInvalidPodTemplate, message: err.Error()}, nil
	}
	if p := memoryProblem(e); p != nil {
		return "", none, p, nil
	}
	image := e.Spec.Image
	if image == "" {
		image = r.ReceiverImage
	}
	if image == "" {
		return "", none, &problem{reason: v1alpha1.ReasonNoReceiverImage,
			message: "spec.image is empty and the operator was started without --receiver-image (RECEIVER_IMAGE)"}, nil
	}
	versions, p, err := r.readSecrets(ctx, e)
	return image, versions, p, err
}

// memoryProblem refuses limits whose worst case cannot fit the receiver's
// memory: one body of maxBodyBytes in flight, by the rule the receiver itself
// applies at start (receiver/sizing). Without a memory limit nothing is known.
func memoryProblem(e *v1alpha1.EHRIntegration) *problem {
	d := withDefaults(e)
	limits := receiverResources(d).Limits
	memory := limits.Memory().Value()
	if err := sizing.CheckLimits(memory, d.Spec.Limits.MaxBodyBytes); err != nil {
		return &problem{reason: v1alpha1.ReasonLimitsExceedMemory, message: err.Error()}
	}
	return nil
}

// duplicate reports DuplicateEHR when an older EHRIntegration anywhere the
// manager's cache sees (the cluster, or the watched namespaces) has the
// same spec.ehr: both would write the same rows.
func (r *EHRIntegrationReconciler) duplicate(ctx context.Context, e *v1alpha1.EHRIntegration) (*problem, error) {
	var list v1alpha1.EHRIntegrationList
	if err := r.List(ctx, &list, client.MatchingFields{indexEHR: e.Spec.EHR}); err != nil {
		return nil, fmt.Errorf("while listing EHRIntegrations with ehr %q: %w", e.Spec.EHR, err)
	}
	for i := range list.Items {
		o := &list.Items[i]
		if o.UID == e.UID || !o.DeletionTimestamp.IsZero() {
			continue
		}
		if older(o, e) {
			// Another tenant's namespace and names are not this one's to read.
			which := "an EHRIntegration in another namespace (`kubectl get ehrintegrations -A` shows it)"
			if o.Namespace == e.Namespace {
				which = "EHRIntegration " + o.Name
			}
			return &problem{reason: v1alpha1.ReasonDuplicateEHR,
				message: fmt.Sprintf("%s, created earlier, already serves ehr %q; this one runs no receiver until that one is deleted",
					which, e.Spec.EHR)}, nil
		}
	}
	return nil, nil
}

// older orders EHRIntegrations by creationTimestamp, then namespace/name,
// so that exactly one of a set with the same ehr wins.
func older(a, b *v1alpha1.EHRIntegration) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

// readSecrets checks that the referenced Secrets and keys exist and that the
// credentials are long enough (an empty webhook secret would let anyone
// sign, a short one be guessed), and returns the Secrets' versions.
func (r *EHRIntegrationReconciler) readSecrets(ctx context.Context, e *v1alpha1.EHRIntegration) (v1alpha1.SecretVersions, *problem, error) {
	var none v1alpha1.SecretVersions
	e = withDefaults(e)
	ref := e.Spec.Database.SecretRef
	const credsField = "credentialsSecretRef"
	creds, p, err := r.secret(ctx, e.Namespace, e.Spec.CredentialsSecretRef.Name, credsField,
		keyAPIKey, keyWebhookSecret)
	if err != nil || p != nil {
		return none, p, err
	}
	if p := credentialLengths(creds, credsField); p != nil {
		return none, p, nil
	}
	db, p, err := r.secret(ctx, e.Namespace, ref.Name, "database.secretRef", ref.Key)
	if err != nil || p != nil {
		return none, p, err
	}
	if p, err := r.databaseCA(ctx, e); err != nil || p != nil {
		return none, p, err
	}
	return v1alpha1.SecretVersions{Credentials: creds.ResourceVersion, Database: db.ResourceVersion}, nil, nil
}

// credentialLengths refuses an API key or webhook secret, current or
// previous, shorter than MinCredentialBytes as the receiver reads it (one
// trailing newline dropped). The message names the key, never the value
// or its length.
func credentialLengths(s *corev1.Secret, field string) *problem {
	for _, k := range []string{keyAPIKey, keyAPIKeyPrevious, keyWebhookSecret, keyWebhookSecretPrevious} {
		v, ok := s.Data[k]
		if !ok || (len(v) == 0 && (k == keyAPIKeyPrevious || k == keyWebhookSecretPrevious)) {
			continue // an absent or empty previous one is none
		}
		if len(strings.TrimRight(string(v), "\r\n")) < v1alpha1.MinCredentialBytes {
			return &problem{reason: v1alpha1.ReasonCredentialTooShort, retry: true,
				message: fmt.Sprintf("Secret %s (%s): the value of key %s is shorter than %d bytes; use a random one, e.g. `openssl rand -hex 32`",
					s.Name, field, k, v1alpha1.MinCredentialBytes)}
		}
	}
	return nil
}

// databaseCA checks that the CA of spec.database.ca exists with its key:
// a pod whose volume names a missing one never starts (FailedMount), which
// the status would otherwise only show as a rollout stuck ten minutes
// later. The CA is not watched: the problem's backoff (up to 5 min) sees
// it appear. Only by name (get), as the API reader reads the Secrets.
func (r *EHRIntegrationReconciler) databaseCA(ctx context.Context, e *v1alpha1.EHRIntegration) (*problem, error) {
	ca := e.Spec.Database.CA
	switch {
	case ca == nil:
		return nil, nil
	case ca.SecretKeyRef != nil:
		_, p, err := r.secret(ctx, e.Namespace, ca.SecretKeyRef.Name, "database.ca.secretKeyRef", ca.SecretKeyRef.Key)
		return p, err
	case ca.ConfigMapKeyRef != nil:
		ref := ca.ConfigMapKeyRef
		var cm corev1.ConfigMap
		if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: e.Namespace, Name: ref.Name}, &cm); err != nil {
			if apierrors.IsNotFound(err) {
				return &problem{reason: v1alpha1.ReasonConfigMapNotFound, retry: true,
					message: fmt.Sprintf("ConfigMap %s (database.ca.configMapKeyRef) not found", ref.Name)}, nil
			}
			return nil, fmt.Errorf("while getting ConfigMap %s/%s: %w", e.Namespace, ref.Name, err)
		}
		if cm.Data[ref.Key] == "" && len(cm.BinaryData[ref.Key]) == 0 {
			return &problem{reason: v1alpha1.ReasonConfigMapKeyMissing, retry: true,
				message: fmt.Sprintf("ConfigMap %s (database.ca.configMapKeyRef) has no value for key %s", ref.Name, ref.Key)}, nil
		}
	}
	return nil, nil
}

func (r *EHRIntegrationReconciler) secret(ctx context.Context, ns, name, field string, keys ...string) (*corev1.Secret, *problem, error) {
	var s corev1.Secret
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &problem{reason: v1alpha1.ReasonSecretNotFound, retry: true,
				message: fmt.Sprintf("Secret %s (%s) not found", name, field)}, nil
		}
		return nil, nil, fmt.Errorf("while getting Secret %s/%s: %w", ns, name, err)
	}
	for _, k := range keys {
		if len(s.Data[k]) == 0 {
			return nil, &problem{reason: v1alpha1.ReasonSecretKeyMissing, retry: true,
				message: fmt.Sprintf("Secret %s (%s) has no value for key %s", name, field, k)}, nil
		}
	}
	return &s, nil, nil
}

// applyChildren creates or corrects every child, and deletes the
// NetworkPolicy, Ingress, HTTPRoute and PodDisruptionBudget when they are no
// longer wanted.
func (r *EHRIntegrationReconciler) applyChildren(ctx context.Context, e *v1alpha1.EHRIntegration, image string,
	versions v1alpha1.SecretVersions, obs *observation, written *[]string) error {
	sa, res, err := applyChild(ctx, r.Client, e, buildServiceAccount(r.withManagerDefaults(e)), &corev1.ServiceAccount{}, corev1ac.ExtractServiceAccount, nil)
	if err != nil {
		return err
	}
	wrote(ctx, written, sa, res)

	// The NetworkPolicy comes before the Deployment, so that no receiver pod
	// runs unfenced.
	if np := buildNetworkPolicy(e, r.NetworkPolicy); np != nil {
		obj, res, err := applyChild(ctx, r.Client, e, np, &networkingv1.NetworkPolicy{}, networkingv1ac.ExtractNetworkPolicy, nil)
		if err != nil {
			return err
		}
		wrote(ctx, written, obj, res)
	} else if err := r.deleteChild(ctx, e, written, &networkingv1.NetworkPolicy{}); err != nil {
		return err
	}

	dep := buildDeployment(r.withManagerDefaults(e), image, versions)
	var keepReplicas func(*appsv1.Deployment, *appsv1ac.DeploymentApplyConfiguration)
	if e.Annotations[v1alpha1.AnnotationExternalReplicas] == "true" {
		// An autoscaler owns replicas: leave them, unless the Deployment is
		// new or at zero (an autoscaler does not scale up from zero). Their
		// ownership stays as it is: dropping replicas the operator alone
		// owns would reset them to the default, 1; an autoscaler's first
		// change takes them over.
		keepReplicas = func(live *appsv1.Deployment, owned *appsv1ac.DeploymentApplyConfiguration) {
			if live.Spec.Replicas == nil || *live.Spec.Replicas == 0 {
				return
			}
			dep.Spec.Replicas = nil
			if owned.Spec != nil {
				dep.Spec.Replicas = owned.Spec.Replicas
			}
			obs.wantReplicas = *live.Spec.Replicas
		}
	}
	d, res, err := applyChild(ctx, r.Client, e, dep, &appsv1.Deployment{}, appsv1ac.ExtractDeployment, keepReplicas)
	if err != nil {
		return err
	}
	wrote(ctx, written, d, res)
	obs.deployment = d

	svc, res, err := applyChild(ctx, r.Client, e, buildService(e), &corev1.Service{}, corev1ac.ExtractService, nil)
	if err != nil {
		return err
	}
	wrote(ctx, written, svc, res)

	ing := buildIngress(e)
	if ing != nil && ing.Spec.TLS == nil && !r.AllowInsecureHTTP {
		obs.problem = &problem{reason: v1alpha1.ReasonInsecureHTTPForbidden,
			message: "spec.ingress has no tlsSecretName and this operator serves no receiver over plain HTTP " +
				"(its --allow-insecure-http, the chart's allowInsecureHTTP, is false), so the receiver has no Ingress: " +
				"set spec.ingress.tlsSecretName to the Secret holding the host's certificate (cert-manager can fill it)"}
		ing = nil
	}
	if ing != nil {
		obj, res, err := applyChild(ctx, r.Client, e, ing, &networkingv1.Ingress{}, networkingv1ac.ExtractIngress, nil)
		if err != nil {
			return err
		}
		wrote(ctx, written, obj, res)
		// One being deleted (an ingress controller's finalizer) will not serve.
		obs.ingressMissing = obj.GetDeletionTimestamp() != nil
		// Nor one of a class no controller has, or without its certificate.
		if obs.problem, err = r.ingressProblem(ctx, e, obj); err != nil {
			return err
		}
	} else if err := r.deleteChild(ctx, e, written, &networkingv1.Ingress{}); err != nil {
		return err
	}

	if pdb := buildPDB(e, obs.wantReplicas); pdb != nil {
		obj, res, err := applyChild(ctx, r.Client, e, pdb, &policyv1.PodDisruptionBudget{}, policyv1ac.ExtractPodDisruptionBudget, nil)
		if err != nil {
			return err
		}
		wrote(ctx, written, obj, res)
	} else if err := r.deleteChild(ctx, e, written, &policyv1.PodDisruptionBudget{}); err != nil {
		return err
	}

	// The route comes last: its problems (no Gateway API, no Gateway, a
	// plain HTTP listener) concern it alone.
	obs.routeChecked = true
	if e.Spec.Gateway != nil {
		return r.reconcileRoute(ctx, e, obs, written)
	}
	if r.gateways.known() {
		// Without the Gateway API served there can be no route to delete,
		// and asking would cost a discovery request on every pass.
		return r.deleteChild(ctx, e, written, &gwv1.HTTPRoute{})
	}
	return nil
}

// wrote logs a write of obj and adds it to written (e.g. "updated
// Deployment nexus-receiver").
func wrote(ctx context.Context, written *[]string, obj client.Object, res applyResult) {
	if res == applyUnchanged {
		return
	}
	kind := reflect.TypeOf(obj).Elem().Name()
	logf.FromContext(ctx).Info("Wrote child", "kind", kind, "child", obj.GetName(), "operation", res)
	*written = append(*written, fmt.Sprintf("%s %s %s", res, kind, obj.GetName()))
}

// deleteChild deletes e's child of obj's kind when e controls it.
func (r *EHRIntegrationReconciler) deleteChild(ctx context.Context, e *v1alpha1.EHRIntegration, written *[]string, obj client.Object) error {
	obj.SetNamespace(e.Namespace)
	obj.SetName(childName(e))
	deleted, err := deleteOwned(ctx, r.Client, e, obj)
	if deleted {
		kind := reflect.TypeOf(obj).Elem().Name()
		logf.FromContext(ctx).Info("Deleted child", "kind", kind, "child", obj.GetName())
		*written = append(*written, fmt.Sprintf("deleted %s %s", kind, obj.GetName()))
	}
	return err
}

// currentDeployment returns e's receiver Deployment, nil when there is none.
func (r *EHRIntegrationReconciler) currentDeployment(ctx context.Context, e *v1alpha1.EHRIntegration) (*appsv1.Deployment, error) {
	var d appsv1.Deployment
	if err := r.Get(ctx, types.NamespacedName{Namespace: e.Namespace, Name: childName(e)}, &d); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("while getting Deployment %s: %w", childName(e), err)
	}
	if ref := metav1.GetControllerOf(&d); ref == nil || ref.UID != e.UID {
		return nil, nil
	}
	return &d, nil
}

// suspend scales the receiver Deployment, if there is one, to zero and
// touches nothing else.
func (r *EHRIntegrationReconciler) suspend(ctx context.Context, e *v1alpha1.EHRIntegration) (*appsv1.Deployment, error) {
	return r.scaleToZero(ctx, e, v1alpha1.ReasonSuspended)
}

// scaleToZero scales the receiver Deployment, if there is one, to zero as
// its own field manager, touching nothing else; the next apply takes the
// replicas back. reason names why in the Event.
func (r *EHRIntegrationReconciler) scaleToZero(ctx context.Context, e *v1alpha1.EHRIntegration, reason string) (*appsv1.Deployment, error) {
	d, err := r.currentDeployment(ctx, e)
	if err != nil || d == nil || (d.Spec.Replicas != nil && *d.Spec.Replicas == 0) {
		return d, err
	}
	scale := appsv1ac.Deployment(d.Name, d.Namespace).WithSpec(appsv1ac.DeploymentSpec().WithReplicas(0))
	if err := r.Apply(ctx, scale, client.FieldOwner(suspendFieldOwner), client.ForceOwnership); err != nil {
		return nil, fmt.Errorf("while scaling Deployment %s to zero: %w", d.Name, err)
	}
	name := d.Name
	if d, err = asObject(scale, d); err != nil {
		return nil, fmt.Errorf("while reading Deployment %s scaled to zero: %w", name, err)
	}
	logf.FromContext(ctx).Info("Scaled receiver to zero", "child", d.Name, "reason", reason)
	r.Recorder.Eventf(e, d, corev1.EventTypeNormal, reason, "ScaleToZero", "Scaled Deployment %s to zero", d.Name)
	return d, nil
}

// recordTransition emits an Event when Ready changes reason, so `kubectl
// describe` tells why without repeating it on every pass.
func (r *EHRIntegrationReconciler) recordTransition(e *v1alpha1.EHRIntegration, st v1alpha1.EHRIntegrationStatus) {
	now := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady)
	before := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady)
	if now == nil || (before != nil && before.Reason == now.Reason && before.Status == now.Status) {
		return
	}
	typ := corev1.EventTypeNormal
	if meta.IsStatusConditionTrue(st.Conditions, v1alpha1.ConditionDegraded) {
		typ = corev1.EventTypeWarning
	}
	r.Recorder.Eventf(e, nil, typ, now.Reason, "Reconcile", "%s", now.Message)
}

// SetupWithManager registers the reconciler, its indexes and its watches.
func (r *EHRIntegrationReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	return r.setupWithManager(ctx, mgr, r)
}

// setupWithManager registers do as the controller's reconciler: r itself,
// or r wrapped by a test that watches each reconcile.
func (r *EHRIntegrationReconciler) setupWithManager(ctx context.Context, mgr ctrl.Manager, do reconcile.Reconciler) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &v1alpha1.EHRIntegration{}, indexSecretNames, func(o client.Object) []string {
		e := o.(*v1alpha1.EHRIntegration)
		names := []string{e.Spec.CredentialsSecretRef.Name, e.Spec.Database.SecretRef.Name}
		if e.Spec.Ingress != nil && e.Spec.Ingress.TLSSecretName != "" {
			names = append(names, e.Spec.Ingress.TLSSecretName)
		}
		return names
	}); err != nil {
		return fmt.Errorf("while indexing EHRIntegrations by Secret: %w", err)
	}
	if err := idx.IndexField(ctx, &v1alpha1.EHRIntegration{}, indexIngressClass, func(o client.Object) []string {
		return ingressClassKeys(o.(*v1alpha1.EHRIntegration))
	}); err != nil {
		return fmt.Errorf("while indexing EHRIntegrations by IngressClass: %w", err)
	}
	if err := idx.IndexField(ctx, &v1alpha1.EHRIntegration{}, indexEHR, func(o client.Object) []string {
		return []string{o.(*v1alpha1.EHRIntegration).Spec.EHR}
	}); err != nil {
		return fmt.Errorf("while indexing EHRIntegrations by ehr: %w", err)
	}
	if err := idx.IndexField(ctx, &v1alpha1.EHRIntegration{}, indexGateways, func(o client.Object) []string {
		return gatewayKeys(o.(*v1alpha1.EHRIntegration))
	}); err != nil {
		return fmt.Errorf("while indexing EHRIntegrations by Gateway: %w", err)
	}
	changed := builder.WithPredicates(predicate.ResourceVersionChangedPredicate{})
	c, err := ctrl.NewControllerManagedBy(mgr).
		// A resync re-delivers every EHRIntegration, which is enough to put
		// back drift nobody told us about; resyncs of the other kinds (same
		// resourceVersion) would only repeat that, so they are dropped.
		For(&v1alpha1.EHRIntegration{}).
		Owns(&corev1.ServiceAccount{}, changed).
		Owns(&appsv1.Deployment{}, changed).
		Owns(&corev1.Service{}, changed).
		Owns(&networkingv1.Ingress{}, changed).
		Owns(&policyv1.PodDisruptionBudget{}, changed).
		Owns(&networkingv1.NetworkPolicy{}, changed).
		// Only Secrets' metadata is cached: enough to notice a change.
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.forSecret), builder.OnlyMetadata, changed).
		// IngressClasses are cluster-scoped and few; one appearing, going or
		// becoming the default settles or makes an IngressClassNotFound.
		Watches(&networkingv1.IngressClass{}, handler.EnqueueRequestsFromMapFunc(r.forIngressClass), changed).
		// A change to one EHRIntegration may settle another's DuplicateEHR.
		Watches(&v1alpha1.EHRIntegration{}, handler.EnqueueRequestsFromMapFunc(r.sameEHR), changed).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1)}).
		Named("ehrintegration").
		Build(do)
	if err != nil {
		return err
	}
	// HTTPRoutes and Gateways are watched only once the cluster serves them.
	return r.setupGatewayAPI(ctx, mgr, c)
}

// forSecret maps a Secret to the EHRIntegrations of its namespace that
// reference it.
func (r *EHRIntegrationReconciler) forSecret(ctx context.Context, s client.Object) []reconcile.Request {
	return r.requestsFor(ctx, client.MatchingFields{indexSecretNames: s.GetName()}, "", client.InNamespace(s.GetNamespace()))
}

// sameEHR maps an EHRIntegration to the others with the same spec.ehr, in
// every namespace: one's deletion lets a duplicate take over.
func (r *EHRIntegrationReconciler) sameEHR(ctx context.Context, o client.Object) []reconcile.Request {
	e, ok := o.(*v1alpha1.EHRIntegration)
	if !ok {
		return nil
	}
	return r.requestsFor(ctx, client.MatchingFields{indexEHR: e.Spec.EHR}, e.UID)
}

func (r *EHRIntegrationReconciler) requestsFor(ctx context.Context, match client.MatchingFields, except types.UID, opts ...client.ListOption) []reconcile.Request {
	var list v1alpha1.EHRIntegrationList
	if err := r.List(ctx, &list, append(opts, match)...); err != nil {
		logf.FromContext(ctx).Error(err, "Cannot list EHRIntegrations to enqueue")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, e := range list.Items {
		if e.UID != except {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: e.Namespace, Name: e.Name}})
		}
	}
	return reqs
}

// withManagerDefaults fills what the spec leaves to the manager's
// chart-wide settings; the resource's own settings win.
func (r *EHRIntegrationReconciler) withManagerDefaults(e *v1alpha1.EHRIntegration) *v1alpha1.EHRIntegration {
	logLevel := e.Spec.LogLevel == "" && r.ReceiverLogLevel != ""
	if !logLevel && r.ReceiverPodDefaults == nil {
		return e
	}
	e = e.DeepCopy()
	if logLevel {
		e.Spec.LogLevel = r.ReceiverLogLevel
	}
	e.Spec.PodTemplate = mergePodTemplate(r.ReceiverPodDefaults, e.Spec.PodTemplate)
	return e
}
