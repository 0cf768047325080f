package controllers

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// testNetworkPolicyYAML is the suite manager's --receiver-network-policy:
// the chart's defaults, with the database as the local cluster's (a CIDR).
// The database port leaves its protocol out, which the API server defaults.
const testNetworkPolicyYAML = `
enabled: true
webhookFrom:
- namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: traefik}}
  podSelector: {matchLabels: {app.kubernetes.io/name: traefik}}
metricsFrom:
- namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
- namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ehr-system}}
  podSelector: {matchExpressions: [{key: app.kubernetes.io/name, operator: In, values: [ehr-operator]}]}
dns:
  to:
  - namespaceSelector: {}
    podSelector: {matchLabels: {k8s-app: kube-dns}}
  ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
database:
  to: [{ipBlock: {cidr: 10.231.0.1/32}}]
  ports: [{port: 5432}]
`

// loadTestNetworkPolicy reads testNetworkPolicyYAML as the manager reads
// its file.
func loadTestNetworkPolicy() (*NetworkPolicyConfig, error) {
	dir, err := os.MkdirTemp("", "netpol")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "netpol.yaml")
	if err := os.WriteFile(path, []byte(testNetworkPolicyYAML), 0o600); err != nil {
		return nil, err
	}
	return LoadNetworkPolicyConfig(path)
}

func testNetworkPolicy(t testing.TB) *NetworkPolicyConfig {
	t.Helper()
	c, err := loadTestNetworkPolicy()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// wantNetworkPolicySpec is the spec the API server stores for
// testNetworkPolicyYAML and EHRIntegration nexus.
func wantNetworkPolicySpec() networkingv1.NetworkPolicySpec {
	tcp, udp := ptr.To(corev1.ProtocolTCP), ptr.To(corev1.ProtocolUDP)
	port := func(p int32, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Protocol: proto, Port: ptr.To(intstr.FromInt32(p))}
	}
	sel := func(kv ...string) *metav1.LabelSelector {
		s := &metav1.LabelSelector{}
		if len(kv) > 0 {
			s.MatchLabels = map[string]string{kv[0]: kv[1]}
		}
		return s
	}
	return networkingv1.NetworkPolicySpec{
		PodSelector: *sel(labelName, receiverAppName),
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		Ingress: []networkingv1.NetworkPolicyIngressRule{
			{Ports: []networkingv1.NetworkPolicyPort{port(8080, tcp)}, From: []networkingv1.NetworkPolicyPeer{
				{NamespaceSelector: sel("kubernetes.io/metadata.name", "traefik"), PodSelector: sel("app.kubernetes.io/name", "traefik")}}},
			{Ports: []networkingv1.NetworkPolicyPort{port(9090, tcp)}, From: []networkingv1.NetworkPolicyPeer{
				{NamespaceSelector: sel("kubernetes.io/metadata.name", "monitoring")},
				{NamespaceSelector: sel("kubernetes.io/metadata.name", "ehr-system"), PodSelector: &metav1.LabelSelector{
					MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app.kubernetes.io/name", Operator: metav1.LabelSelectorOpIn, Values: []string{"ehr-operator"}}}}}}},
		},
		Egress: []networkingv1.NetworkPolicyEgressRule{
			{Ports: []networkingv1.NetworkPolicyPort{port(53, udp), port(53, tcp)}, To: []networkingv1.NetworkPolicyPeer{
				{NamespaceSelector: sel(), PodSelector: sel("k8s-app", "kube-dns")}}},
			{Ports: []networkingv1.NetworkPolicyPort{port(5432, tcp)}, To: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.231.0.1/32"}}}},
		},
	}
}

func TestLoadNetworkPolicyConfigRefusesWhatWouldWidenIt(t *testing.T) {
	for name, text := range map[string]string{
		"unknown key":         "enabled: true\nwebhookFrmo: []\n",
		"no database ports":   "enabled: true\ndns: {ports: [{port: 53}]}\ndatabase: {to: [{ipBlock: {cidr: 10.0.0.1/32}}]}\n",
		"no DNS ports":        "enabled: true\ndns: {}\ndatabase: {ports: [{port: 5432}]}\n",
		"not a policy at all": "- 1\n",
		// What the API server would refuse on every receiver's policy.
		"a CIDR without its prefix": "enabled: true\ndns: {ports: [{port: 53}]}\ndatabase: {to: [{ipBlock: {cidr: 10.0.0.5}}], ports: [{port: 5432}]}\n",
		"an except not a CIDR":      "enabled: true\ndns: {ports: [{port: 53}]}\ndatabase: {to: [{ipBlock: {cidr: 10.0.0.0/8, except: [nope]}}], ports: [{port: 5432}]}\n",
		"a label value with a space": "enabled: true\nwebhookFrom: [{podSelector: {matchLabels: {app: 'a b'}}}]\n" +
			"dns: {ports: [{port: 53}]}\ndatabase: {ports: [{port: 5432}]}\n",
		"an unknown operator": "enabled: true\nmetricsFrom: [{namespaceSelector: {matchExpressions: [{key: a, operator: Has}]}}]\n" +
			"dns: {ports: [{port: 53}]}\ndatabase: {ports: [{port: 5432}]}\n",
	} {
		path := filepath.Join(t.TempDir(), "netpol.yaml")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if c, err := LoadNetworkPolicyConfig(path); err == nil {
			t.Errorf("%s: loaded %+v, want an error", name, c)
		}
	}
	// Turned off, nothing else is needed.
	path := filepath.Join(t.TempDir(), "off.yaml")
	if err := os.WriteFile(path, []byte("enabled: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := LoadNetworkPolicyConfig(path); err != nil || c.Enabled {
		t.Errorf("enabled: false gave %+v, %v", c, err)
	}
}

func TestBuildNetworkPolicyOnlyWhenWanted(t *testing.T) {
	c := testNetworkPolicy(t)
	e := integration("ns", "nexus", "nexus")
	if buildNetworkPolicy(e, c) == nil {
		t.Error("no NetworkPolicy with the policy enabled")
	}
	if buildNetworkPolicy(e, nil) != nil {
		t.Error("a NetworkPolicy without --receiver-network-policy")
	}
	off := *c
	off.Enabled = false
	if buildNetworkPolicy(e, &off) != nil {
		t.Error("a NetworkPolicy with enabled: false")
	}
	e.Annotations = map[string]string{v1alpha1.AnnotationNetworkPolicy: v1alpha1.NetworkPolicyDisabled}
	if buildNetworkPolicy(e, c) != nil {
		t.Errorf("a NetworkPolicy despite %s: %s", v1alpha1.AnnotationNetworkPolicy, v1alpha1.NetworkPolicyDisabled)
	}
}

// TestNetworkPolicyOfAReceiver: the operator makes the receiver's
// NetworkPolicy as configured, deletes it when the EHRIntegration opts out,
// and makes it again when it opts back in.
func TestNetworkPolicyOfAReceiver(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns))
	e := integration(ns, "nexus", "nexus")
	create(t, e)

	var np networkingv1.NetworkPolicy
	child(t, ns, "nexus", &np)
	want := wantNetworkPolicySpec()
	want.PodSelector.MatchLabels[labelInstance] = "nexus"
	if diff := cmp.Diff(want, np.Spec); diff != "" {
		t.Errorf("NetworkPolicy spec (-want +got):\n%s", diff)
	}
	if ref := metav1.GetControllerOf(&np); ref == nil || ref.UID != e.UID {
		t.Errorf("NetworkPolicy owner = %+v, want EHRIntegration nexus", ref)
	}
	// It selects exactly the receiver's pods.
	var dep appsv1.Deployment
	child(t, ns, "nexus", &dep)
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Errorf("pod selector %s does not select the receiver's pods %v", sel, dep.Spec.Template.Labels)
	}

	update(t, e, func(e *v1alpha1.EHRIntegration) {
		e.Annotations = map[string]string{v1alpha1.AnnotationNetworkPolicy: v1alpha1.NetworkPolicyDisabled}
	})
	gone(t, ns, "nexus-receiver", &networkingv1.NetworkPolicy{})

	update(t, e, func(e *v1alpha1.EHRIntegration) { delete(e.Annotations, v1alpha1.AnnotationNetworkPolicy) })
	child(t, ns, "nexus", &np)
	if diff := cmp.Diff(want, np.Spec); diff != "" {
		t.Errorf("NetworkPolicy made again (-want +got):\n%s", diff)
	}
}

// TestNetworkPolicyOfAnotherControllerIsLeftAlone: opting out deletes only
// the operator's own NetworkPolicy, never one of the same name it does not
// control.
func TestNetworkPolicyOfAnotherControllerIsLeftAlone(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	mine := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nexus-receiver"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	create(t, credsSecret(ns), dbSecret(ns), mine)
	e := integration(ns, "nexus", "nexus")
	e.Annotations = map[string]string{v1alpha1.AnnotationNetworkPolicy: v1alpha1.NetworkPolicyDisabled}
	create(t, e)
	// The Deployment comes after the NetworkPolicy step of the same pass.
	child(t, ns, "nexus", &appsv1.Deployment{})
	var np networkingv1.NetworkPolicy
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &np); err != nil {
		t.Fatalf("the unowned NetworkPolicy is gone: %v", err)
	}
	if np.UID != mine.UID || metav1.GetControllerOf(&np) != nil {
		t.Errorf("the unowned NetworkPolicy was replaced or adopted: %+v", np.ObjectMeta)
	}
}
