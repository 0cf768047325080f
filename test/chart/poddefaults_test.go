package chart

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/controllers"
)

const podDefaultsFlag = "--receiver-pod-defaults=/etc/ehr-operator/receiver-pod-defaults/pod-defaults.yaml"

// receiverPodDefaults renders the chart with args and reads the receivers'
// pod defaults the way the manager does, from the file its flag names.
func receiverPodDefaults(t *testing.T, args ...string) (*v1alpha1.ReceiverPodTemplate, *unstructured.Unstructured) {
	t.Helper()
	objs := helmTemplate(t, "ehr-operator", "ops", args...)
	// The manager's Deployment is named as the release's objects are.
	deps := ofKind(objs, "Deployment")
	if len(deps) != 1 {
		t.Fatalf("%d Deployments rendered", len(deps))
	}
	cm := find(t, objs, "ConfigMap", deps[0].GetName()+"-receiver-pod-defaults")
	text, _, _ := unstructured.NestedString(cm.Object, "data", "pod-defaults.yaml")
	path := filepath.Join(t.TempDir(), "pod-defaults.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := controllers.LoadReceiverPodDefaults(path)
	if err != nil {
		t.Fatalf("the manager refuses the chart's pod defaults file: %v\n%s", err, text)
	}
	return p, deps[0]
}

// checkConfigMapMount: the manager mounts ConfigMap cm, as volume vol, at dir.
func checkConfigMapMount(t *testing.T, d *unstructured.Unstructured, vol, dir, cm string) {
	t.Helper()
	mounts, _ := managerContainer(t, d)["volumeMounts"].([]any)
	vols, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "volumes")
	mounted := slices.ContainsFunc(mounts, func(m any) bool {
		mm, _ := m.(map[string]any)
		return mm["name"] == vol && mm["mountPath"] == dir
	})
	named := slices.ContainsFunc(vols, func(v any) bool {
		vv, _ := v.(map[string]any)
		c, _ := vv["configMap"].(map[string]any)
		return vv["name"] == vol && c["name"] == cm
	})
	if !mounted || !named {
		t.Errorf("ConfigMap %s is not mounted at %s: mounts %v, volumes %v", cm, dir, mounts, vols)
	}
}

// The chart hands the manager a pod defaults file it accepts, mounted
// where the flag says; empty by default, and as all-on.yaml sets it, with
// numbers given to maps turned into strings.
func TestReceiverPodDefaultsFile(t *testing.T) {
	def, d := receiverPodDefaults(t)
	if !cmp.Equal(def, &v1alpha1.ReceiverPodTemplate{}) {
		t.Errorf("default pod defaults %+v, want none", def)
	}
	if args := stringsOf(managerContainer(t, d)["args"]); !slices.Contains(args, podDefaultsFlag) {
		t.Errorf("manager args %q lack %s", args, podDefaultsFlag)
	}
	checkConfigMapMount(t, d, "receiver-pod-defaults", "/etc/ehr-operator/receiver-pod-defaults", "ehr-operator-receiver-pod-defaults")

	all, d2 := receiverPodDefaults(t, "-f", "testdata/all-on.yaml")
	if all.Labels["example.com/revision"] != "3" || all.Labels["team"] != "integrations" {
		t.Errorf("labels %v", all.Labels)
	}
	if !cmp.Equal(all.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}) || all.PriorityClassName != "ehr-receivers" ||
		len(all.Tolerations) != 1 || all.Affinity == nil || all.Affinity.NodeAffinity == nil || len(all.TopologySpreadConstraints) != 1 ||
		all.NodeSelector["pool"] != "receivers" || all.Annotations["example.com/owner"] != "sre" ||
		all.ServiceAccount == nil || all.ServiceAccount.Annotations["eks.amazonaws.com/role-arn"] == "" {
		t.Errorf("all-on pod defaults incomplete: %+v", all)
	}

	// As the e2e and the docs set a pull secret.
	set, d3 := receiverPodDefaults(t, "--set", "receivers.podTemplate.imagePullSecrets[0].name=regcred",
		"--set", `receivers.podTemplate.nodeSelector.example\.com/gen=2`)
	if !cmp.Equal(set.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}) || set.NodeSelector["example.com/gen"] != "2" {
		t.Errorf("--set pod defaults %+v", set)
	}
	// A change of the defaults rolls the manager, which reads them at start.
	checksum := func(d *unstructured.Unstructured) string {
		a, _, _ := unstructured.NestedStringMap(d.Object, "spec", "template", "metadata", "annotations")
		return a["checksum/receiver-pod-defaults"]
	}
	if checksum(d) == "" || checksum(d) == checksum(d2) || checksum(d2) == checksum(d3) {
		t.Errorf("pod template checksums %q, %q, %q: want each set of defaults to differ", checksum(d), checksum(d2), checksum(d3))
	}
}

// The schema refuses, naming receivers, what the manager would refuse at
// start: an unknown field, the operator's labels and annotations, a pull
// secret without a name.
func TestReceiverPodDefaultsSchema(t *testing.T) {
	for _, set := range []string{
		`receivers.podTemplate={"nodeSelecter":{"pool":"receivers"}}`,
		`receivers.podTemplate={"labels":{"app.kubernetes.io/instance":"x"}}`,
		`receivers.podTemplate={"labels":{"ehr.insighthealth.io/ehr":"x"}}`,
		`receivers.podTemplate={"annotations":{"ehr.insighthealth.io/credentials-secret-version":"1"}}`,
		`receivers.podTemplate={"imagePullSecrets":[{"secret":"regcred"}]}`,
		`receivers.podTemplate={"serviceAccount":{"annotation":{"a":"b"}}}`,
		`receivers.podTemplate={"tolerations":{"key":"a"}}`,
		`receivers.podTemplate={"tolerations":[{"key":"a","operater":"Exists"}]}`,
		`receivers.podTemplate={"tolerations":[{"key":"a","operator":"Exist"}]}`,
		`receivers.podTemplate={"tolerations":[{"key":"a","operator":"Exists","effect":"NoSchedul"}]}`,
		`receivers.podTemplate={"tolerations":[{"key":"a","operator":"Equal","value":1}]}`,
		`receivers.podTemplate={"tolerations":[{"key":"a","operator":"Exists","effect":"NoExecute","tolerationSeconds":"5m"}]}`,
		`receivers={"podTemplates":{}}`,
	} {
		if _, err := run(helmBin(t), "template", "x", chartDir, "--set-json", set); err == nil {
			t.Errorf("helm accepted --set-json %s", set)
		} else if !strings.Contains(err.Error(), "receivers") {
			t.Errorf("--set-json %s refused for another reason: %v", set, err)
		}
	}
	// A whole toleration is fine, as is one that matches every taint.
	tol, _ := receiverPodDefaults(t, "--set-json",
		`receivers.podTemplate={"tolerations":[{"key":"a","operator":"Equal","value":"b","effect":"NoExecute","tolerationSeconds":30},{"operator":"Exists"}]}`)
	if len(tol.Tolerations) != 2 || tol.Tolerations[0].TolerationSeconds == nil || *tol.Tolerations[0].TolerationSeconds != 30 {
		t.Errorf("tolerations = %+v", tol.Tolerations)
	}
	// Others' app.kubernetes.io/ labels and annotations are fine.
	if _, err := run(helmBin(t), "template", "x", chartDir, "--set-json",
		`receivers.podTemplate={"labels":{"app.kubernetes.io/version":"1"},"annotations":{"app.kubernetes.io/name":"x"}}`); err != nil {
		t.Errorf("helm refused a label the operator does not set: %v", err)
	}
}
