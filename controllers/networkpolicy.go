package controllers

import (
	"bytes"
	"fmt"
	"net"
	"os"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// NetworkPolicyConfig is what each receiver's NetworkPolicy admits: the
// manager reads it from the file named by --receiver-network-policy (the
// chart renders it from its values). Peers are NetworkPolicyPeers as in a
// NetworkPolicy; an empty list of peers admits any address on the rule's
// ports, as in Kubernetes.
type NetworkPolicyConfig struct {
	// Enabled makes a NetworkPolicy per receiver; false deletes the ones
	// the operator made.
	Enabled bool `json:"enabled"`
	// WebhookFrom may open the webhook port (8080): the ingress controller's pods.
	WebhookFrom []networkingv1.NetworkPolicyPeer `json:"webhookFrom,omitempty"`
	// MetricsFrom may open the metrics port (9090): Prometheus, and the
	// operator itself, which asks the receivers GET /dbz there.
	MetricsFrom []networkingv1.NetworkPolicyPeer `json:"metricsFrom,omitempty"`
	// DNS and Database are the only destinations a receiver may open.
	DNS      EgressTarget `json:"dns"`
	Database EgressTarget `json:"database"`
}

// EgressTarget is one destination a receiver may connect to.
type EgressTarget struct {
	To    []networkingv1.NetworkPolicyPeer `json:"to,omitempty"`
	Ports []networkingv1.NetworkPolicyPort `json:"ports,omitempty"`
}

// LoadNetworkPolicyConfig reads the file of --receiver-network-policy
// (YAML or JSON); an unknown key is an error, so a typo cannot silently
// widen the policy.
func LoadNetworkPolicyConfig(path string) (*NetworkPolicyConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("while reading the receivers' network policy: %w", err)
	}
	var c NetworkPolicyConfig
	if err := yaml.UnmarshalStrict(bytes.TrimSpace(b), &c); err != nil {
		return nil, fmt.Errorf("while parsing the receivers' network policy %s: %w", path, err)
	}
	if c.Enabled && (len(c.DNS.Ports) == 0 || len(c.Database.Ports) == 0) {
		// A rule without ports would admit every port of its peers.
		return nil, fmt.Errorf("receivers' network policy %s: dns.ports and database.ports must not be empty", path)
	}
	// Refused here, at start, rather than by the API server on every
	// receiver's NetworkPolicy (each reconcile failing ChildRejected).
	var errs field.ErrorList
	errs = append(errs, validatePeers(c.WebhookFrom, field.NewPath("webhookFrom"))...)
	errs = append(errs, validatePeers(c.MetricsFrom, field.NewPath("metricsFrom"))...)
	errs = append(errs, validatePeers(c.DNS.To, field.NewPath("dns", "to"))...)
	errs = append(errs, validatePeers(c.Database.To, field.NewPath("database", "to"))...)
	if len(errs) > 0 {
		return nil, fmt.Errorf("receivers' network policy %s: %w", path, errs.ToAggregate())
	}
	return &c, nil
}

// validatePeers checks what the API server would refuse in peers: label
// selectors (keys, values, operators) and CIDRs.
func validatePeers(peers []networkingv1.NetworkPolicyPeer, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, p := range peers {
		at := path.Index(i)
		opts := metav1validation.LabelSelectorValidationOptions{}
		errs = append(errs, metav1validation.ValidateLabelSelector(p.PodSelector, opts, at.Child("podSelector"))...)
		errs = append(errs, metav1validation.ValidateLabelSelector(p.NamespaceSelector, opts, at.Child("namespaceSelector"))...)
		if b := p.IPBlock; b != nil {
			for j, cidr := range append([]string{b.CIDR}, b.Except...) {
				if _, _, err := net.ParseCIDR(cidr); err != nil {
					f := at.Child("ipBlock", "cidr")
					if j > 0 {
						f = at.Child("ipBlock", "except").Index(j - 1)
					}
					errs = append(errs, field.Invalid(f, cidr, "not a CIDR with its /prefix"))
				}
			}
		}
	}
	return errs
}

// networkPolicyWanted says whether e gets a NetworkPolicy: the manager's
// setting, unless e opts out with AnnotationNetworkPolicy: "disabled".
func networkPolicyWanted(e *v1alpha1.EHRIntegration, c *NetworkPolicyConfig) bool {
	return c != nil && c.Enabled && e.Annotations[v1alpha1.AnnotationNetworkPolicy] != v1alpha1.NetworkPolicyDisabled
}

// buildNetworkPolicy makes the receiver's NetworkPolicy, or returns nil when
// e gets none. It selects the receiver pods and admits only: the webhook
// port from c.WebhookFrom, the metrics port from c.MetricsFrom, and
// connections out to c.DNS and c.Database. The kubelet's probes come from
// the node, which NetworkPolicy implementations admit by themselves.
func buildNetworkPolicy(e *v1alpha1.EHRIntegration, c *NetworkPolicyConfig) *networkingv1ac.NetworkPolicyApplyConfiguration {
	if !networkPolicyWanted(e, c) {
		return nil
	}
	tcp := func(port int32) *networkingv1ac.NetworkPolicyPortApplyConfiguration {
		return networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(port))
	}
	spec := networkingv1ac.NetworkPolicySpec().
		WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(e))).
		WithPolicyTypes(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress).
		WithIngress(
			networkingv1ac.NetworkPolicyIngressRule().WithPorts(tcp(httpPort)).WithFrom(peers(c.WebhookFrom)...),
			networkingv1ac.NetworkPolicyIngressRule().WithPorts(tcp(metricsPort)).WithFrom(peers(c.MetricsFrom)...),
		).
		WithEgress(egressRule(c.DNS), egressRule(c.Database))
	return networkingv1ac.NetworkPolicy(childName(e), e.Namespace).
		WithLabels(commonLabels(e)).
		WithOwnerReferences(ownerReference(e)).
		WithSpec(spec)
}

func egressRule(t EgressTarget) *networkingv1ac.NetworkPolicyEgressRuleApplyConfiguration {
	r := networkingv1ac.NetworkPolicyEgressRule().WithTo(peers(t.To)...)
	for _, p := range t.Ports {
		ac := networkingv1ac.NetworkPolicyPort().WithProtocol(protocolOf(p))
		if p.Port != nil {
			ac.WithPort(*p.Port)
		}
		if p.EndPort != nil {
			ac.WithEndPort(*p.EndPort)
		}
		r.WithPorts(ac)
	}
	return r
}

// protocolOf is p's protocol, TCP when unset: the API server defaults it
// so, and the applied value must equal the stored one.
func protocolOf(p networkingv1.NetworkPolicyPort) corev1.Protocol {
	if p.Protocol == nil {
		return corev1.ProtocolTCP
	}
	return *p.Protocol
}

func peers(in []networkingv1.NetworkPolicyPeer) []*networkingv1ac.NetworkPolicyPeerApplyConfiguration {
	out := make([]*networkingv1ac.NetworkPolicyPeerApplyConfiguration, 0, len(in))
	for _, p := range in {
		ac := networkingv1ac.NetworkPolicyPeer()
		if p.PodSelector != nil {
			ac.WithPodSelector(selectorConfig(p.PodSelector))
		}
		if p.NamespaceSelector != nil {
			ac.WithNamespaceSelector(selectorConfig(p.NamespaceSelector))
		}
		if b := p.IPBlock; b != nil {
			ac.WithIPBlock(networkingv1ac.IPBlock().WithCIDR(b.CIDR).WithExcept(b.Except...))
		}
		out = append(out, ac)
	}
	return out
}

func selectorConfig(s *metav1.LabelSelector) *metav1ac.LabelSelectorApplyConfiguration {
	ac := metav1ac.LabelSelector()
	if len(s.MatchLabels) > 0 {
		ac.WithMatchLabels(s.MatchLabels)
	}
	for _, r := range s.MatchExpressions {
		ac.WithMatchExpressions(metav1ac.LabelSelectorRequirement().
			WithKey(r.Key).WithOperator(r.Operator).WithValues(r.Values...))
	}
	return ac
}
