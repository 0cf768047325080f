package chart

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/cmd"
	"github.com/insighthealth/ehr-operator/cmd/managercmd"
)

// helmTestHook runs what the chart's `helm test` pod runs (`ehr-operator
// chart-test`) against a release installed on the API server, as the
// hook's own ServiceAccount with only the RBAC the hook grants: it fails
// while the manager has no available pod (envtest runs no pods), and
// passes once the Deployment reports one.
func helmTestHook(t *testing.T, ctx context.Context, c client.Client, kubeconfig, release, namespace string) {
	out, err := run(helmBin(t), "template", release, chartDir, "--namespace", namespace, "--show-only", "templates/tests/chart-test.yaml")
	if err != nil {
		t.Fatalf("helm template of the test hook: %v", err)
	}
	objs, err := decodeObjects([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	var pod *unstructured.Unstructured
	for _, o := range objs {
		if o.GetAnnotations()["helm.sh/hook"] != "test" {
			t.Errorf("%s %s is not a test hook", o.GetKind(), o.GetName())
		}
		if o.GetKind() == "Pod" {
			pod = o
			continue
		}
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("creating the hook's %s: %v", o.GetKind(), err)
		}
	}
	if pod == nil {
		t.Fatal("the test hook has no Pod")
	}
	args, _, _ := unstructured.NestedSlice(pod.Object, "spec", "containers")
	argv := []string{}
	for _, a := range args[0].(map[string]any)["args"].([]any) {
		argv = append(argv, a.(string))
	}
	sa, _, _ := unstructured.NestedString(pod.Object, "spec", "serviceAccountName")

	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range cfg.AuthInfos {
		u.Impersonate = "system:serviceaccount:" + namespace + ":" + sa
	}
	asHook := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, asHook); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", asHook)
	chartTest := func(extra ...string) (string, error) {
		root := cmd.NewRootCommand(managercmd.Commands()...)
		var buf bytes.Buffer
		root.SetOut(&buf)
		root.SetArgs(append(append([]string{}, argv...), extra...))
		err := root.ExecuteContext(ctx)
		return buf.String(), err
	}

	if _, err := chartTest("--timeout=3s"); err == nil || !strings.Contains(err.Error(), "is not serving") {
		t.Errorf("chart-test with no manager pod available: err = %v, want it not serving", err)
	}
	d := &unstructured.Unstructured{}
	d.SetAPIVersion("apps/v1")
	d.SetKind("Deployment")
	name := strings.TrimPrefix(argv[len(argv)-1], "--deployment=")
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, d); err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedMap(d.Object, map[string]any{"observedGeneration": d.GetGeneration(),
		"replicas": int64(1), "updatedReplicas": int64(1), "readyReplicas": int64(1), "availableReplicas": int64(1)}, "status")
	if err := c.Status().Update(ctx, d); err != nil {
		t.Fatal(err)
	}
	out, err = chartTest()
	if err != nil {
		t.Fatalf("chart-test with the manager available: %v\n%s", err, out)
	}
	for _, want := range []string{"manager " + namespace + "/" + name + " has 1 available pod", "a valid EHRIntegration is accepted", "an invalid EHRIntegration is refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("chart-test output lacks %q:\n%s", want, out)
		}
	}
	var list unstructured.UnstructuredList
	list.SetAPIVersion("ehr.insighthealth.io/v1alpha1")
	list.SetKind("EHRIntegrationList")
	if err := c.List(ctx, &list, client.InNamespace(namespace)); err != nil || len(list.Items) != 0 {
		t.Errorf("chart-test stored EHRIntegrations (it should only dry-run): %d, %v", len(list.Items), err)
	}
	_ = os.Unsetenv("KUBECONFIG")
}
