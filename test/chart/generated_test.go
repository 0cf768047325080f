package chart

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

const (
	crdBases      = "../../config/crd/bases"
	generatedRole = "../../config/rbac/role.yaml"
	chartCRDs     = "../../charts/ehr-operator/generated/crds"
	chartRole     = "../../charts/ehr-operator/generated/rbac/role.yaml"
)

// The chart's copies of controller-gen's output are byte-for-byte current.
func TestChartCopiesOfGeneratedFilesAreCurrent(t *testing.T) {
	want, err := filepath.Glob(filepath.Join(crdBases, "*.yaml"))
	if err != nil || len(want) == 0 {
		t.Fatalf("no CRDs in config/crd/bases (%v): run `make manifests`", err)
	}
	got, _ := filepath.Glob(filepath.Join(chartCRDs, "*.yaml"))
	if len(got) != len(want) {
		t.Errorf("the chart has %d CRD files, config/crd/bases %d: run `make manifests`", len(got), len(want))
	}
	pairs := map[string]string{generatedRole: chartRole}
	for _, w := range want {
		pairs[w] = filepath.Join(chartCRDs, filepath.Base(w))
	}
	for src, dst := range pairs {
		a, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("%v: run `make manifests`", err)
		}
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Errorf("the chart lacks %s: run `make manifests`", dst)
			continue
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from %s: run `make manifests` (never edit either by hand)", dst, src)
		}
	}
}

// The CRD the chart installs is controller-gen's, with only Helm's
// annotation and the chart's labels added.
func TestRenderedCRDIsGenerated(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(crdBases, "*.yaml"))
	var want []map[string]any
	for _, f := range files {
		for _, o := range readObjects(t, f) {
			want = append(want, o.Object)
		}
	}
	var got []map[string]any
	for _, o := range ofKind(helmTemplate(t, "ehr-operator", "ehr-operator-system"), "CustomResourceDefinition") {
		ann := o.GetAnnotations()
		if ann["helm.sh/resource-policy"] != "keep" {
			t.Errorf("CRD %s lacks helm.sh/resource-policy: keep", o.GetName())
		}
		delete(ann, "helm.sh/resource-policy")
		o.SetAnnotations(ann)
		if o.GetLabels()["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("CRD %s lacks the chart's labels", o.GetName())
		}
		o.SetLabels(nil)
		got = append(got, o.Object)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rendered CRDs differ from config/crd/bases (-want +got):\n%s", diff)
	}
}

// The chart's ClusterRole grants exactly what the generated role grants.
func TestChartClusterRoleIsGeneratedRole(t *testing.T) {
	generated := readObjects(t, generatedRole)
	if len(generated) != 1 || generated[0].GetKind() != "ClusterRole" {
		t.Fatalf("config/rbac/role.yaml holds %s; the chart expects exactly one ClusterRole (namespaced rbac markers need the chart's clusterrole.yaml extended)", describe(generated))
	}
	want := rulesOf(t, generated[0].Object)
	if len(want) == 0 {
		t.Fatal("config/rbac/role.yaml has no rules")
	}
	t.Run("default values", func(t *testing.T) {
		manager := find(t, helmTemplate(t, "rbac", "ops"), "ClusterRole", "rbac-ehr-operator-manager").Object
		if diff := cmp.Diff(want, rulesOf(t, manager)); diff != "" {
			t.Errorf("chart ClusterRole rules differ from config/rbac/role.yaml (-want +got):\n%s", diff)
		}
	})
	// Namespaced mode: the same rules, in a Role in each watched namespace.
	t.Run("every option", func(t *testing.T) {
		objs := helmTemplate(t, "rbac", "ops", "-f", allOnValues)
		var namespaces []string
		for _, r := range ofKind(objs, "Role") {
			if r.GetName() != "all-on-manager" {
				continue
			}
			namespaces = append(namespaces, r.GetNamespace())
			if diff := cmp.Diff(want, rulesOf(t, r.Object)); diff != "" {
				t.Errorf("chart Role %s rules differ from config/rbac/role.yaml (-want +got):\n%s", r.GetNamespace(), diff)
			}
		}
		if !slices.Equal(namespaces, []string{"ehr-a", "ehr-b"}) {
			t.Errorf("manager Roles in %q, want the watched namespaces ehr-a and ehr-b", namespaces)
		}
		for _, r := range ofKind(objs, "ClusterRole") {
			if r.GetName() == "all-on-manager" {
				t.Error("namespaced mode rendered the manager's ClusterRole")
			}
		}
	})
}

func rulesOf(t *testing.T, obj map[string]any) []rbacv1.PolicyRule {
	t.Helper()
	var role rbacv1.ClusterRole
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj, &role); err != nil {
		t.Fatal(err)
	}
	return role.Rules
}
