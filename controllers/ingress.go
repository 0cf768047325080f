package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// The Ingress is served only by the ingress controller of its class, and
// over HTTPS only with a TLS Secret that holds a certificate and its key.
// Neither is part of the Ingress object, so its existing says nothing about
// either: a class typo got a 404 from every controller, a missing Secret
// the controller's default certificate, while the status said Available
// (docs/decisions.md, "An Ingress is Ready once its class and TLS Secret
// exist").

// indexIngressClass: the IngressClass an EHRIntegration's spec.ingress
// names, or defaultIngressClassKey when it names none (the cluster's
// default then serves it), so an IngressClass's change finds the
// EHRIntegrations to look at again.
const indexIngressClass = ".spec.ingress.className"

// defaultIngressClassKey is indexIngressClass's value for an Ingress
// without className; not a valid IngressClass name, so it matches none.
const defaultIngressClassKey = "(default)"

// ingressClassKeys is e's indexIngressClass value.
func ingressClassKeys(e *v1alpha1.EHRIntegration) []string {
	switch {
	case e.Spec.Ingress == nil:
		return nil
	case e.Spec.Ingress.ClassName != "":
		return []string{e.Spec.Ingress.ClassName}
	}
	return []string{defaultIngressClassKey}
}

// forIngressClass maps an IngressClass to the EHRIntegrations that name it
// and to every one that names none: whether a class is the default may
// have changed, and the API server may have given their Ingress that class.
func (r *EHRIntegrationReconciler) forIngressClass(ctx context.Context, ic client.Object) []reconcile.Request {
	return append(r.requestsFor(ctx, client.MatchingFields{indexIngressClass: ic.GetName()}, ""),
		r.requestsFor(ctx, client.MatchingFields{indexIngressClass: defaultIngressClassKey}, "")...)
}

// ingressProblem reports why live, e's Ingress as stored, will not be
// served as the status would promise: its IngressClass does not exist
// (IngressClassNotFound), or its TLS Secret does not exist or lacks
// tls.crt or tls.key (TLSSecretNotFound, TLSSecretKeyMissing). The Ingress
// is made all the same, so that it serves as soon as they appear (and
// cert-manager's ingress-shim, which fills the Secret, needs the Ingress
// first). The IngressClass and Secret watches bring e back then.
func (r *EHRIntegrationReconciler) ingressProblem(ctx context.Context, e *v1alpha1.EHRIntegration, live *networkingv1.Ingress) (*problem, error) {
	if p, err := r.ingressClassProblem(ctx, e, live); err != nil || p != nil {
		return p, err
	}
	return r.tlsSecretProblem(ctx, e)
}

// ingressClassProblem: the class spec.ingress.className names must exist.
// Without className, the class the API server gave the Ingress when it was
// made (the default class of that moment) must exist. An Ingress given
// none is not checked: controllers differ on serving classless Ingresses
// (Traefik does by default, ingress-nginx with a flag, and the legacy
// kubernetes.io/ingress.class annotation names a class the API does not
// know), so a problem there could be false. IngressClasses are read from
// the manager's cache (watched, cluster-scoped; a handful per cluster).
func (r *EHRIntegrationReconciler) ingressClassProblem(ctx context.Context, e *v1alpha1.EHRIntegration, live *networkingv1.Ingress) (*problem, error) {
	name, field := e.Spec.Ingress.ClassName, "spec.ingress.className"
	if name == "" && live.Spec.IngressClassName != nil {
		name, field = *live.Spec.IngressClassName, "the Ingress's spec.ingressClassName, the cluster's default class when the Ingress was made; spec.ingress.className is unset"
	}
	if name == "" {
		return nil, nil
	}
	var ic networkingv1.IngressClass
	if err := r.Get(ctx, types.NamespacedName{Name: name}, &ic); err != nil {
		if apierrors.IsNotFound(err) {
			return &problem{reason: v1alpha1.ReasonIngressClassNotFound,
				message: fmt.Sprintf("IngressClass %s (%s) not found: no ingress controller serves the Ingress; "+
					"`kubectl get ingressclass` lists the cluster's", name, field)}, nil
		}
		return nil, fmt.Errorf("while getting IngressClass %s: %w", name, err)
	}
	return nil, nil
}

// tlsSecretProblem: the Secret of spec.ingress.tlsSecretName, when set,
// must exist in e's namespace with a non-empty tls.crt and tls.key, the
// keys ingress controllers read (a kubernetes.io/tls Secret's). It is read
// as the other referenced Secrets are, by the API reader; only the keys'
// presence is looked at. Watched through indexSecretNames; the problem's
// backoff looks again besides, as for the other Secrets.
func (r *EHRIntegrationReconciler) tlsSecretProblem(ctx context.Context, e *v1alpha1.EHRIntegration) (*problem, error) {
	name := e.Spec.Ingress.TLSSecretName
	if name == "" {
		return nil, nil
	}
	_, p, err := r.secret(ctx, e.Namespace, name, "spec.ingress.tlsSecretName", corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	if p == nil {
		return nil, err
	}
	// The Secret problems of the receiver's own Secrets, named for the
	// Ingress and saying what the vendor meets.
	switch p.reason {
	case v1alpha1.ReasonSecretNotFound:
		p.reason = v1alpha1.ReasonTLSSecretNotFound
		p.message += ": the ingress controller serves the host with its default certificate or not at all; " +
			"create it (kubernetes.io/tls), or let cert-manager fill it"
	case v1alpha1.ReasonSecretKeyMissing:
		p.reason = v1alpha1.ReasonTLSSecretKeyMissing
		p.message += ": the ingress controller cannot serve the host's certificate from it"
	}
	return p, nil
}

// guardIngress deletes e's Ingress, when it has one without TLS and the
// manager serves nothing over plain HTTP. Like guardRoute it runs on the
// passes that leave the children as they are: after an upgrade that turned
// plain HTTP off, such an Ingress would otherwise carry patient data in
// the clear for as long as a problem stands or the receiver is suspended.
func (r *EHRIntegrationReconciler) guardIngress(ctx context.Context, e *v1alpha1.EHRIntegration, written *[]string) error {
	if r.AllowInsecureHTTP {
		return nil
	}
	var ing networkingv1.Ingress
	if err := r.Get(ctx, client.ObjectKey{Namespace: e.Namespace, Name: childName(e)}, &ing); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(&ing, e) || len(ing.Spec.TLS) > 0 {
		return nil
	}
	return r.deleteChild(ctx, e, written, &networkingv1.Ingress{})
}
