package controllers

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/utils/ptr"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// fullPodTemplate sets every field of spec.podTemplate, with shapes that
// exercise the conversion to apply configurations (pointers, nested
// selectors, lists inside lists).
func fullPodTemplate() *v1alpha1.ReceiverPodTemplate {
	return &v1alpha1.ReceiverPodTemplate{
		Labels:           map[string]string{"team": "integrations", "cost-center": "ehr"},
		Annotations:      map[string]string{"example.com/owner": "sre"},
		ImagePullSecrets: []corev1.LocalObjectReference{{Name: "regcred"}},
		NodeSelector:     map[string]string{"pool": "receivers"},
		Tolerations: []corev1.Toleration{
			{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "receivers", Effect: corev1.TaintEffectNoSchedule},
			{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](30)},
		},
		Affinity: &corev1.Affinity{
			NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: "kubernetes.io/arch", Operator: corev1.NodeSelectorOpIn, Values: []string{"amd64", "arm64"}}}}}}},
			PodAntiAffinity: &corev1.PodAntiAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
				Weight: 50, PodAffinityTerm: corev1.PodAffinityTerm{TopologyKey: "topology.kubernetes.io/zone",
					LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "integrations"}}}}}},
		},
		TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: "topology.kubernetes.io/zone", WhenUnsatisfiable: corev1.DoNotSchedule,
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "ehr-receiver"}}}},
		PriorityClassName: "receivers",
		ServiceAccount: &v1alpha1.ReceiverServiceAccount{Annotations: map[string]string{
			"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/ehr-receiver"}},
	}
}

func TestMergePodTemplate(t *testing.T) {
	tolA := []corev1.Toleration{{Key: "a", Operator: corev1.TolerationOpExists}}
	tolB := []corev1.Toleration{{Key: "b", Operator: corev1.TolerationOpExists}}
	zone := &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{}}
	arch := &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{}}
	sa := func(m map[string]string) *v1alpha1.ReceiverServiceAccount {
		return &v1alpha1.ReceiverServiceAccount{Annotations: m}
	}
	for _, tt := range []struct {
		name           string
		def, own, want *v1alpha1.ReceiverPodTemplate
	}{
		{"neither", nil, nil, nil},
		{"defaults only", &v1alpha1.ReceiverPodTemplate{PriorityClassName: "low", Tolerations: tolA}, nil,
			&v1alpha1.ReceiverPodTemplate{PriorityClassName: "low", Tolerations: tolA}},
		{"resource only", nil, &v1alpha1.ReceiverPodTemplate{NodeSelector: map[string]string{"a": "1"}},
			&v1alpha1.ReceiverPodTemplate{NodeSelector: map[string]string{"a": "1"}}},
		{"maps merge key by key, the resource winning",
			&v1alpha1.ReceiverPodTemplate{
				Labels: map[string]string{"team": "platform", "tier": "web"}, Annotations: map[string]string{"x": "1"},
				NodeSelector: map[string]string{"pool": "default", "os": "linux"}, ServiceAccount: sa(map[string]string{"iam": "chart", "keep": "k"})},
			&v1alpha1.ReceiverPodTemplate{
				Labels: map[string]string{"team": "integrations"}, Annotations: map[string]string{"y": "2"},
				NodeSelector: map[string]string{"pool": "receivers"}, ServiceAccount: sa(map[string]string{"iam": "own"})},
			&v1alpha1.ReceiverPodTemplate{
				Labels: map[string]string{"team": "integrations", "tier": "web"}, Annotations: map[string]string{"x": "1", "y": "2"},
				NodeSelector: map[string]string{"pool": "receivers", "os": "linux"}, ServiceAccount: sa(map[string]string{"iam": "own", "keep": "k"})}},
		{"lists and affinity are replaced whole",
			&v1alpha1.ReceiverPodTemplate{Tolerations: tolA, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "chart"}, {Name: "other"}},
				TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 1}}, Affinity: zone},
			&v1alpha1.ReceiverPodTemplate{Tolerations: tolB, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "own"}},
				TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 2}}, Affinity: arch},
			&v1alpha1.ReceiverPodTemplate{Tolerations: tolB, ImagePullSecrets: []corev1.LocalObjectReference{{Name: "own"}},
				TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 2}}, Affinity: arch}},
		{"an empty list in the resource clears the default",
			&v1alpha1.ReceiverPodTemplate{Tolerations: tolA}, &v1alpha1.ReceiverPodTemplate{Tolerations: []corev1.Toleration{}},
			&v1alpha1.ReceiverPodTemplate{Tolerations: []corev1.Toleration{}}},
		{"unset in the resource keeps the default",
			&v1alpha1.ReceiverPodTemplate{Tolerations: tolA, Affinity: zone, PriorityClassName: "low"}, &v1alpha1.ReceiverPodTemplate{},
			&v1alpha1.ReceiverPodTemplate{Tolerations: tolA, Affinity: zone, PriorityClassName: "low"}},
		{"priorityClassName: the resource's when set",
			&v1alpha1.ReceiverPodTemplate{PriorityClassName: "low"}, &v1alpha1.ReceiverPodTemplate{PriorityClassName: "high"},
			&v1alpha1.ReceiverPodTemplate{PriorityClassName: "high"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defBefore, ownBefore := tt.def.DeepCopy(), tt.own.DeepCopy()
			got := mergePodTemplate(tt.def, tt.own)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("merge (-want +got):\n%s", diff)
			}
			if !cmp.Equal(defBefore, tt.def) || !cmp.Equal(ownBefore, tt.own) {
				t.Error("merge changed its input")
			}
			// The result shares no map with the input: a later change to it
			// must not reach the manager's defaults.
			if got != nil && tt.def != nil && got.Labels != nil {
				got.Labels["mutated"] = "x"
				if tt.def.Labels["mutated"] != "" {
					t.Error("the result shares the defaults' labels")
				}
			}
		})
	}
}

// TestBuildDeploymentWithPodTemplate: each setting lands where a pod gets
// it, the operator's labels and annotations stay, and topology spread
// constraints replace the operator's own.
func TestBuildDeploymentWithPodTemplate(t *testing.T) {
	e := sample()
	plain := object(t, buildDeployment(e, "img", v1alpha1.SecretVersions{Credentials: "1", Database: "2"}), &appsv1.Deployment{})
	e.Spec.PodTemplate = fullPodTemplate()
	d := object(t, buildDeployment(e, "img", v1alpha1.SecretVersions{Credentials: "1", Database: "2"}), &appsv1.Deployment{})
	pt := e.Spec.PodTemplate
	tmpl := d.Spec.Template

	for k, v := range commonLabels(e) {
		if tmpl.Labels[k] != v {
			t.Errorf("pod label %s = %q, want the operator's %q", k, tmpl.Labels[k], v)
		}
	}
	for k, v := range pt.Labels {
		if tmpl.Labels[k] != v {
			t.Errorf("pod label %s = %q, want %q", k, tmpl.Labels[k], v)
		}
	}
	if diff := cmp.Diff(selectorLabels(e), d.Spec.Selector.MatchLabels); diff != "" {
		t.Errorf("selector changed (-want +got):\n%s", diff)
	}
	want := map[string]string{annotationCredentialsVersion: "1", annotationDatabaseVersion: "2", "example.com/owner": "sre"}
	if diff := cmp.Diff(want, tmpl.Annotations); diff != "" {
		t.Errorf("pod annotations (-want +got):\n%s", diff)
	}
	s := tmpl.Spec
	for _, c := range []struct {
		field     string
		want, got any
	}{
		{"imagePullSecrets", pt.ImagePullSecrets, s.ImagePullSecrets},
		{"nodeSelector", pt.NodeSelector, s.NodeSelector},
		{"tolerations", pt.Tolerations, s.Tolerations},
		{"affinity", pt.Affinity, s.Affinity},
		{"topologySpreadConstraints", pt.TopologySpreadConstraints, s.TopologySpreadConstraints},
		{"priorityClassName", pt.PriorityClassName, s.PriorityClassName},
	} {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.field, diff)
		}
	}
	// Everything else is as without a podTemplate.
	s.ImagePullSecrets, s.NodeSelector, s.Tolerations, s.Affinity, s.PriorityClassName = nil, nil, nil, nil, ""
	s.TopologySpreadConstraints = plain.Spec.Template.Spec.TopologySpreadConstraints
	if diff := cmp.Diff(plain.Spec.Template.Spec, s); diff != "" {
		t.Errorf("the podTemplate changed other pod settings (-without +with):\n%s", diff)
	}

	sa := object(t, buildServiceAccount(e), &corev1.ServiceAccount{})
	if diff := cmp.Diff(pt.ServiceAccount.Annotations, sa.Annotations); diff != "" {
		t.Errorf("ServiceAccount annotations (-want +got):\n%s", diff)
	}
	e.Spec.PodTemplate = nil
	if a := object(t, buildServiceAccount(e), &corev1.ServiceAccount{}).Annotations; a != nil {
		t.Errorf("ServiceAccount annotations without a podTemplate: %v", a)
	}
}

func TestValidatePodTemplate(t *testing.T) {
	if err := validatePodTemplate(fullPodTemplate(), nil); err != nil {
		t.Errorf("a valid podTemplate refused: %v", err)
	}
	for _, tt := range []struct {
		name string
		t    v1alpha1.ReceiverPodTemplate
		want string
	}{
		{"selector label", v1alpha1.ReceiverPodTemplate{Labels: map[string]string{labelInstance: "x"}}, "labels[app.kubernetes.io/instance]"},
		{"identity label", v1alpha1.ReceiverPodTemplate{Labels: map[string]string{labelManagedBy: "helm"}}, "labels[app.kubernetes.io/managed-by]"},
		{"operator prefix label", v1alpha1.ReceiverPodTemplate{Labels: map[string]string{labelEHR: "x"}}, "labels[ehr.insighthealth.io/ehr]"},
		{"version annotation", v1alpha1.ReceiverPodTemplate{Annotations: map[string]string{annotationCredentialsVersion: "1"}},
			"annotations[ehr.insighthealth.io/credentials-secret-version]"},
		{"malformed label value", v1alpha1.ReceiverPodTemplate{Labels: map[string]string{"team": "has space"}}, "labels"},
		{"malformed node selector key", v1alpha1.ReceiverPodTemplate{NodeSelector: map[string]string{"bad key": "x"}}, "nodeSelector"},
		{"malformed ServiceAccount annotation", v1alpha1.ReceiverPodTemplate{ServiceAccount: &v1alpha1.ReceiverServiceAccount{
			Annotations: map[string]string{"/nope": "x"}}}, "serviceAccount.annotations"},
	} {
		err := validatePodTemplate(&tt.t, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error naming %s", tt.name, err, tt.want)
		}
	}
}

func TestLoadReceiverPodDefaults(t *testing.T) {
	write := func(s string) string {
		p := filepath.Join(t.TempDir(), "pod-defaults.yaml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := LoadReceiverPodDefaults(write(`
imagePullSecrets: [{name: regcred}]
nodeSelector: {pool: receivers}
tolerations: [{key: dedicated, operator: Equal, value: receivers, effect: NoSchedule}]
priorityClassName: receivers
serviceAccount:
  annotations: {iam.gke.io/gcp-service-account: receiver@project.iam.gserviceaccount.com}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &v1alpha1.ReceiverPodTemplate{
		ImagePullSecrets:  []corev1.LocalObjectReference{{Name: "regcred"}},
		NodeSelector:      map[string]string{"pool": "receivers"},
		Tolerations:       []corev1.Toleration{{Key: "dedicated", Operator: "Equal", Value: "receivers", Effect: "NoSchedule"}},
		PriorityClassName: "receivers",
		ServiceAccount:    &v1alpha1.ReceiverServiceAccount{Annotations: map[string]string{"iam.gke.io/gcp-service-account": "receiver@project.iam.gserviceaccount.com"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("loaded (-want +got):\n%s", diff)
	}
	// What the chart renders when receivers.podTemplate is empty.
	if got, err := LoadReceiverPodDefaults(write("{}\n")); err != nil || !cmp.Equal(got, &v1alpha1.ReceiverPodTemplate{}) {
		t.Errorf("empty defaults: %+v, %v", got, err)
	}
	for _, tt := range []struct{ file, want string }{
		{"tolerations: [{key: a, opertor: Exists}]\n", `unknown field "opertor"`},
		{"serviceAccount: {annotation: {a: b}}\n", `unknown field "annotation"`},
		{"labels: {app.kubernetes.io/name: x}\n", "labels[app.kubernetes.io/name]"},
		{"nodeSelector: [pool]\n", "nodeSelector"},
	} {
		if _, err := LoadReceiverPodDefaults(write(tt.file)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want an error saying %s", tt.file, err, tt.want)
		}
	}
	if _, err := LoadReceiverPodDefaults(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("a missing file was accepted")
	}
}

// TestPodTemplateRefusesOperatorKeys: the API server refuses, by name,
// every label and annotation the operator sets on receiver pods.
func TestPodTemplateRefusesOperatorKeys(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	var labels, annotations []string
	for k := range commonLabels(e) {
		labels = append(labels, k)
	}
	for k := range versionAnnotations(v1alpha1.SecretVersions{}) {
		annotations = append(annotations, k)
	}
	for i, k := range labels {
		e := integration(ns, fmt.Sprintf("label-%d", i), "nexus")
		e.Spec.PodTemplate = &v1alpha1.ReceiverPodTemplate{Labels: map[string]string{"team": "a", k: "x"}}
		createRefused(t, e, "label "+k+" is set by the operator")
		// The manager's defaults are checked the same.
		if err := validatePodTemplate(e.Spec.PodTemplate, nil); err == nil {
			t.Errorf("validatePodTemplate accepted label %s", k)
		}
	}
	for i, k := range annotations {
		e := integration(ns, fmt.Sprintf("annotation-%d", i), "nexus")
		e.Spec.PodTemplate = &v1alpha1.ReceiverPodTemplate{Annotations: map[string]string{k: "1"}}
		createRefused(t, e, "annotation "+k+" is in the ehr.insighthealth.io/ prefix")
		if err := validatePodTemplate(e.Spec.PodTemplate, nil); err == nil {
			t.Errorf("validatePodTemplate accepted annotation %s", k)
		}
	}
	// Others' app.kubernetes.io/ labels are fine, e.g. version.
	ok := integration(ns, "fine", "nexus")
	ok.Spec.PodTemplate = &v1alpha1.ReceiverPodTemplate{Labels: map[string]string{"app.kubernetes.io/version": "1"}}
	create(t, ok)
}

// TestPodTemplateReachesThePods: with the manager running, every field of
// spec.podTemplate lands on the Deployment's pod template or the
// ServiceAccount; changing it rolls the pods (a new template), and a field
// removed from the spec goes from both, while what others set stays.
func TestPodTemplateReachesThePods(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.PodTemplate = fullPodTemplate()
	create(t, credsSecret(ns), dbSecret(ns), e)
	pt := e.Spec.PodTemplate

	var d appsv1.Deployment
	child(t, ns, "nexus", &d)
	s := d.Spec.Template.Spec
	if diff := cmp.Diff(pt.ImagePullSecrets, s.ImagePullSecrets); diff != "" {
		t.Errorf("imagePullSecrets (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(pt.NodeSelector, s.NodeSelector); diff != "" {
		t.Errorf("nodeSelector (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(pt.Tolerations, s.Tolerations); diff != "" {
		t.Errorf("tolerations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(pt.Affinity, s.Affinity); diff != "" {
		t.Errorf("affinity (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(pt.TopologySpreadConstraints, s.TopologySpreadConstraints); diff != "" {
		t.Errorf("topologySpreadConstraints (-want +got):\n%s", diff)
	}
	if s.PriorityClassName != "receivers" {
		t.Errorf("priorityClassName %q", s.PriorityClassName)
	}
	if d.Spec.Template.Labels["team"] != "integrations" || d.Spec.Template.Labels[labelInstance] != "nexus" ||
		d.Spec.Template.Annotations["example.com/owner"] != "sre" || d.Spec.Template.Annotations[annotationCredentialsVersion] == "" {
		t.Errorf("pod template metadata: labels %v, annotations %v", d.Spec.Template.Labels, d.Spec.Template.Annotations)
	}
	var sa corev1.ServiceAccount
	child(t, ns, "nexus", &sa)
	if got := sa.Annotations["eks.amazonaws.com/role-arn"]; got != pt.ServiceAccount.Annotations["eks.amazonaws.com/role-arn"] {
		t.Errorf("ServiceAccount role annotation %q", got)
	}
	// Someone else's annotation on the ServiceAccount and toleration-free
	// edit elsewhere must survive the removals below.
	update(t, &sa, func(sa *corev1.ServiceAccount) { sa.Annotations["example.com/audited"] = "yes" })

	generation := d.Generation
	update(t, e, func(e *v1alpha1.EHRIntegration) {
		p := e.Spec.PodTemplate
		p.Tolerations, p.Affinity, p.TopologySpreadConstraints, p.ImagePullSecrets = nil, nil, nil, nil
		p.NodeSelector, p.PriorityClassName = nil, ""
		delete(p.Labels, "cost-center")
		p.Annotations = nil
		p.ServiceAccount = nil
	})
	eventually(t, waitFor, "the removed settings to go", func() error {
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &d); err != nil {
			return err
		}
		s := d.Spec.Template.Spec
		if s.Tolerations != nil || s.Affinity != nil || s.ImagePullSecrets != nil || s.NodeSelector != nil || s.PriorityClassName != "" {
			return fmt.Errorf("still set: tolerations %v, affinity %v, pull secrets %v, node selector %v, priority class %q",
				s.Tolerations, s.Affinity, s.ImagePullSecrets, s.NodeSelector, s.PriorityClassName)
		}
		if _, ok := d.Spec.Template.Labels["cost-center"]; ok || d.Spec.Template.Labels["team"] != "integrations" {
			return fmt.Errorf("labels %v", d.Spec.Template.Labels)
		}
		if _, ok := d.Spec.Template.Annotations["example.com/owner"]; ok {
			return fmt.Errorf("annotations %v", d.Spec.Template.Annotations)
		}
		// Back to the operator's own spread over nodes.
		if c := s.TopologySpreadConstraints; len(c) != 1 || c[0].TopologyKey != corev1.LabelHostname {
			return fmt.Errorf("topologySpreadConstraints %v", c)
		}
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &sa); err != nil {
			return err
		}
		if want := map[string]string{"example.com/audited": "yes"}; !cmp.Equal(sa.Annotations, want) {
			return fmt.Errorf("ServiceAccount annotations %v, want %v", sa.Annotations, want)
		}
		return nil
	})
	if d.Generation == generation {
		t.Error("changing spec.podTemplate did not change the Deployment's pod template")
	}
}

// TestPodDefaultsOnTheAPIServer: the manager's defaults merged with a
// resource's settings, applied as the reconciler applies them, are stored
// as merged; applying the same again sends nothing; a default dropped
// from the manager's file goes from the Deployment. (The suite's manager
// runs without defaults; this drives applyChild directly, for an owner
// that does not exist, which the manager therefore leaves alone.)
func TestPodDefaultsOnTheAPIServer(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := withDefaults(integration(ns, "ghost", "ghost"))
	e.UID = types.UID("00000000-0000-0000-0000-00000000d0d0")
	e.Spec.PodTemplate = &v1alpha1.ReceiverPodTemplate{
		Labels:       map[string]string{"team": "integrations"},
		NodeSelector: map[string]string{"pool": "receivers"},
		Tolerations:  []corev1.Toleration{{Key: "own", Operator: corev1.TolerationOpExists}},
	}
	defaults := &v1alpha1.ReceiverPodTemplate{
		Labels:            map[string]string{"team": "platform", "env": "prod"},
		NodeSelector:      map[string]string{"pool": "default", "os": "linux"},
		Tolerations:       []corev1.Toleration{{Key: "chart", Operator: corev1.TolerationOpExists}},
		ImagePullSecrets:  []corev1.LocalObjectReference{{Name: "regcred"}},
		PriorityClassName: "receivers",
		ServiceAccount:    &v1alpha1.ReceiverServiceAccount{Annotations: map[string]string{"iam.gke.io/gcp-service-account": "r@p.iam.gserviceaccount.com"}},
	}
	versions := v1alpha1.SecretVersions{Credentials: "1", Database: "1"}
	apply := func(r *EHRIntegrationReconciler) (*appsv1.Deployment, *corev1.ServiceAccount, applyResult) {
		t.Helper()
		merged := r.withManagerDefaults(e)
		sa, saRes, err := applyChild(ctx, suite.client, e, buildServiceAccount(merged), &corev1.ServiceAccount{}, corev1ac.ExtractServiceAccount, nil)
		if err != nil {
			t.Fatal(err)
		}
		d, res, err := applyChild(ctx, suite.client, e, buildDeployment(merged, testImage, versions), &appsv1.Deployment{}, appsv1ac.ExtractDeployment, nil)
		if err != nil {
			t.Fatal(err)
		}
		if saRes != applyUnchanged {
			res = saRes
		}
		return d, sa, res
	}

	d, sa, _ := apply(&EHRIntegrationReconciler{ReceiverPodDefaults: defaults})
	tmpl := d.Spec.Template
	if tmpl.Labels["team"] != "integrations" || tmpl.Labels["env"] != "prod" {
		t.Errorf("labels %v: want the resource's team and the default env", tmpl.Labels)
	}
	if want := map[string]string{"pool": "receivers", "os": "linux"}; !cmp.Equal(tmpl.Spec.NodeSelector, want) {
		t.Errorf("nodeSelector %v, want %v", tmpl.Spec.NodeSelector, want)
	}
	if want := e.Spec.PodTemplate.Tolerations; !cmp.Equal(tmpl.Spec.Tolerations, want) {
		t.Errorf("tolerations %v, want the resource's %v (lists are replaced)", tmpl.Spec.Tolerations, want)
	}
	if !cmp.Equal(tmpl.Spec.ImagePullSecrets, defaults.ImagePullSecrets) || tmpl.Spec.PriorityClassName != "receivers" {
		t.Errorf("defaults the resource leaves unset: pull secrets %v, priority class %q", tmpl.Spec.ImagePullSecrets, tmpl.Spec.PriorityClassName)
	}
	if !cmp.Equal(sa.Annotations, defaults.ServiceAccount.Annotations) {
		t.Errorf("ServiceAccount annotations %v", sa.Annotations)
	}

	// The stored objects read back from the API server equal what is
	// built: nothing to send.
	for range 2 {
		if d, sa, res := apply(&EHRIntegrationReconciler{ReceiverPodDefaults: defaults}); res != applyUnchanged {
			t.Errorf("applying the same settings again: %s\n(Deployment %v, ServiceAccount %v)", res, d.ManagedFields, sa.ManagedFields)
		}
	}

	// The manager restarted with fewer defaults.
	d, sa, res := apply(&EHRIntegrationReconciler{ReceiverPodDefaults: &v1alpha1.ReceiverPodTemplate{Labels: map[string]string{"env": "prod"}}})
	if res != applyUpdated {
		t.Errorf("new defaults: %s, want updated", res)
	}
	s := d.Spec.Template.Spec
	if s.ImagePullSecrets != nil || s.PriorityClassName != "" || sa.Annotations != nil {
		t.Errorf("dropped defaults stayed: pull secrets %v, priority class %q, ServiceAccount annotations %v", s.ImagePullSecrets, s.PriorityClassName, sa.Annotations)
	}
	if want := map[string]string{"pool": "receivers"}; !cmp.Equal(s.NodeSelector, want) {
		t.Errorf("nodeSelector %v, want %v", s.NodeSelector, want)
	}
}

// TestInvalidPodTemplate: a label the API server would refuse on the pods
// is refused with a clear reason and no receiver; fixing it makes one.
func TestInvalidPodTemplate(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.PodTemplate = &v1alpha1.ReceiverPodTemplate{Labels: map[string]string{"team": "not a label value"}}
	create(t, credsSecret(ns), dbSecret(ns), e)
	got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonInvalidPodTemplate)
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady); !strings.Contains(c.Message, "spec.podTemplate.labels") {
		t.Errorf("message %q does not name spec.podTemplate.labels", c.Message)
	}
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Deployment with an invalid podTemplate: err = %v", err)
	}
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.PodTemplate.Labels["team"] = "integrations" })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
}

// TestChildRejectedByTheAPIServer: a spec the CRD accepts but the API
// server refuses on the receiver's objects (a toleration with a value and
// operator Exists) is reported in the status with the API server's
// message, the receiver already running is left as it was, and fixing the
// spec clears it.
func TestChildRejectedByTheAPIServer(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	create(t, credsSecret(ns), dbSecret(ns), e)
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	update(t, e, func(e *v1alpha1.EHRIntegration) {
		e.Spec.PodTemplate = &v1alpha1.ReceiverPodTemplate{Tolerations: []corev1.Toleration{
			{Key: "pool", Operator: corev1.TolerationOpExists, Value: "receivers"}}}
	})
	got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonChildRejected)
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionDegraded); c.Status != metav1.ConditionTrue ||
		!strings.Contains(c.Message, "tolerations") {
		t.Errorf("Degraded %s %q, want True naming the tolerations", c.Status, c.Message)
	}
	if got.Status.ObservedGeneration != got.Generation {
		t.Errorf("observedGeneration %d, want %d", got.Status.ObservedGeneration, got.Generation)
	}
	var dep appsv1.Deployment
	child(t, ns, "nexus", &dep)
	if len(dep.Spec.Template.Spec.Tolerations) != 0 {
		t.Errorf("the running receiver's Deployment changed: %v", dep.Spec.Template.Spec.Tolerations)
	}
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.PodTemplate.Tolerations[0].Value = "" })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
}
