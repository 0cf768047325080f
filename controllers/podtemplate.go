package controllers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// operatorKeyPrefix is the prefix of the labels and annotations the
// operator sets on receiver pods (the EHR label, the Secret versions).
const operatorKeyPrefix = "ehr.insighthealth.io/"

// operatorLabels are the app.kubernetes.io/ labels the operator sets on
// receiver pods; two of them select the pods. The CRD's rule on
// spec.podTemplate.labels lists the same keys (TestPodTemplateRefusesOperatorKeys).
var operatorLabels = []string{labelName, labelInstance, labelComponent, labelPartOf, labelManagedBy}

// LoadReceiverPodDefaults reads the file of --receiver-pod-defaults (YAML
// or JSON, shaped like spec.podTemplate). An unknown key is an error, so
// that a typo is not silently ignored on every receiver; so is a key the
// operator sets itself, or a malformed label or annotation.
func LoadReceiverPodDefaults(path string) (*v1alpha1.ReceiverPodTemplate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("while reading the receivers' pod defaults: %w", err)
	}
	var t v1alpha1.ReceiverPodTemplate
	if err := yaml.UnmarshalStrict(bytes.TrimSpace(b), &t); err != nil {
		return nil, fmt.Errorf("while parsing the receivers' pod defaults %s (the shape of spec.podTemplate): %w", path, err)
	}
	if err := validatePodTemplate(&t, nil); err != nil {
		return nil, fmt.Errorf("receivers' pod defaults %s: %w", path, err)
	}
	return &t, nil
}

// validatePodTemplate refuses what the CRD refuses in spec.podTemplate,
// for the manager's defaults, which no API server checks, and what the
// API server would refuse on the Deployment. Field paths start at root
// (nil: at the template itself).
func validatePodTemplate(t *v1alpha1.ReceiverPodTemplate, root *field.Path) error {
	if t == nil {
		return nil
	}
	var errs field.ErrorList
	for _, k := range slices.Sorted(maps.Keys(t.Labels)) {
		if slices.Contains(operatorLabels, k) || strings.HasPrefix(k, operatorKeyPrefix) {
			errs = append(errs, field.Forbidden(root.Child("labels").Key(k), "set by the operator (it selects or identifies the receiver pods)"))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(t.Annotations)) {
		if strings.HasPrefix(k, operatorKeyPrefix) {
			errs = append(errs, field.Forbidden(root.Child("annotations").Key(k), "the "+operatorKeyPrefix+" prefix is the operator's"))
		}
	}
	errs = append(errs, metav1validation.ValidateLabels(t.Labels, root.Child("labels"))...)
	errs = append(errs, metav1validation.ValidateLabels(t.NodeSelector, root.Child("nodeSelector"))...)
	errs = append(errs, apivalidation.ValidateAnnotations(t.Annotations, root.Child("annotations"))...)
	if t.ServiceAccount != nil {
		errs = append(errs, apivalidation.ValidateAnnotations(t.ServiceAccount.Annotations, root.Child("serviceAccount", "annotations"))...)
	}
	return errs.ToAggregate()
}

// mergePodTemplate is the pod settings a receiver gets: own (the
// resource's spec.podTemplate) over def (the manager's defaults). Maps
// merge key by key, own's value winning; a list or the affinity own sets,
// even empty, replaces def's; own's priorityClassName wins when not empty.
// Neither argument is changed.
func mergePodTemplate(def, own *v1alpha1.ReceiverPodTemplate) *v1alpha1.ReceiverPodTemplate {
	if def == nil {
		return own.DeepCopy()
	}
	out := def.DeepCopy()
	if own == nil {
		return out
	}
	own = own.DeepCopy()
	out.Labels = mergeMaps(out.Labels, own.Labels)
	out.Annotations = mergeMaps(out.Annotations, own.Annotations)
	out.NodeSelector = mergeMaps(out.NodeSelector, own.NodeSelector)
	if own.ImagePullSecrets != nil {
		out.ImagePullSecrets = own.ImagePullSecrets
	}
	if own.Tolerations != nil {
		out.Tolerations = own.Tolerations
	}
	if own.TopologySpreadConstraints != nil {
		out.TopologySpreadConstraints = own.TopologySpreadConstraints
	}
	if own.Affinity != nil {
		out.Affinity = own.Affinity
	}
	if own.PriorityClassName != "" {
		out.PriorityClassName = own.PriorityClassName
	}
	if own.ServiceAccount != nil {
		if out.ServiceAccount == nil {
			out.ServiceAccount = &v1alpha1.ReceiverServiceAccount{}
		}
		out.ServiceAccount.Annotations = mergeMaps(out.ServiceAccount.Annotations, own.ServiceAccount.Annotations)
	}
	return out
}

// mergeMaps is base with over's entries added or replacing; nil when both
// are empty.
func mergeMaps(base, over map[string]string) map[string]string {
	if len(base) == 0 && len(over) == 0 {
		return nil
	}
	out := make(map[string]string, len(base)+len(over))
	maps.Copy(out, base)
	maps.Copy(out, over)
	return out
}

// serviceAccountAnnotations are the annotations t puts on the receiver's
// ServiceAccount.
func serviceAccountAnnotations(t *v1alpha1.ReceiverPodTemplate) map[string]string {
	if t == nil || t.ServiceAccount == nil {
		return nil
	}
	return t.ServiceAccount.Annotations
}

// applyPodTemplate adds t's settings to the receiver's pod template. Only
// what t sets is added (an empty map or list is left out), so that the
// operator's owned fields, read back from the stored Deployment, equal
// what it builds and an idle resync writes nothing. The operator's own
// labels and annotations are added after t's, so they win (the CRD and
// validatePodTemplate refuse them in t already).
func applyPodTemplate(t *v1alpha1.ReceiverPodTemplate, tmpl *corev1ac.PodTemplateSpecApplyConfiguration, pod *corev1ac.PodSpecApplyConfiguration) {
	if t == nil {
		return
	}
	if len(t.Labels) > 0 {
		tmpl.WithLabels(t.Labels)
	}
	if len(t.Annotations) > 0 {
		tmpl.WithAnnotations(t.Annotations)
	}
	for _, s := range t.ImagePullSecrets {
		pod.WithImagePullSecrets(corev1ac.LocalObjectReference().WithName(s.Name))
	}
	if len(t.NodeSelector) > 0 {
		pod.WithNodeSelector(t.NodeSelector)
	}
	for _, tol := range t.Tolerations {
		ac := convert(tol, corev1ac.Toleration())
		pod.WithTolerations(ac)
	}
	if a := t.Affinity; a != nil && (a.NodeAffinity != nil || a.PodAffinity != nil || a.PodAntiAffinity != nil) {
		ac := convert(a, corev1ac.Affinity())
		pod.WithAffinity(ac)
	}
	if t.TopologySpreadConstraints != nil {
		// They replace the operator's spread over nodes.
		pod.TopologySpreadConstraints = nil
		for _, c := range t.TopologySpreadConstraints {
			ac := convert(c, corev1ac.TopologySpreadConstraint())
			pod.WithTopologySpreadConstraints(ac)
		}
	}
	if t.PriorityClassName != "" {
		pod.WithPriorityClassName(t.PriorityClassName)
	}
}

// convert fills the apply configuration into with the fields of in, a
// core/v1 value of the same shape: both have the same JSON form, so a
// failure is a programming error (the tests cover every converted type).
func convert[AC any](in any, into *AC) *AC {
	b, err := json.Marshal(in)
	if err == nil {
		err = json.Unmarshal(b, into)
	}
	if err != nil {
		panic(fmt.Sprintf("converting %T to its apply configuration: %v", in, err))
	}
	return into
}
