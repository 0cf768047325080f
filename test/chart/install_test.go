package chart

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// TestInstallOnAPIServer creates, for real, on an envtest API server, what
// each install path produces: `helm install`/`upgrade`/`uninstall` of the
// chart, its rendered manifests with default values and with every option
// on, `kubectl kustomize config/default`, and the onboarding examples
// (chart examples/ and config/samples) against the generated CRD. Creation
// uses strict field validation, so a misspelt field fails, and the API
// server's PodSecurity admission must not warn about any pod template.
func TestInstallOnAPIServer(t *testing.T) {
	// Render first: a rendering failure needs no API server.
	sets := []struct{ name, namespace string }{
		{"chart default values", "ehr-operator"},
		{"chart every option", "ehr-platform"},
		{"kustomize config/default", ""},
		{"chart example onboard-nexus", ""},
		{"config/samples", "samples"},
	}
	rendered := [][]*unstructured.Unstructured{
		helmTemplate(t, "ehr-operator", sets[0].namespace),
		helmTemplate(t, "all-on", sets[1].namespace, "-f", allOnValues),
		kustomize(t, filepath.Join(repoRoot, "config/default")),
		readObjects(t, filepath.Join(chartDir, "examples/onboard-nexus.yaml")),
		kustomize(t, filepath.Join(repoRoot, "config/samples")),
	}
	for _, kind := range []string{"ServiceMonitor", "PodMonitor", "PrometheusRule"} {
		if len(ofKind(rendered[1], kind)) != 1 {
			t.Fatalf("the every-option chart rendered no %s", kind)
		}
	}
	if len(ofKind(rendered[3], "EHRIntegration")) != 1 || len(ofKind(rendered[4], "EHRIntegration")) != 1 {
		t.Fatal("an onboarding example has no EHRIntegration")
	}

	c, warnings, kubeconfig := startAPIServer(t)
	ctx := context.Background()
	t.Run("PodSecurity warnings are seen", func(t *testing.T) { checkPodSecurityWarns(t, ctx, c, warnings) })

	// The Prometheus Operator's ServiceMonitor kind, so the chart's
	// ServiceMonitor is created rather than skipped.
	createAll(t, ctx, c, warnings, "", readObjects(t, "testdata/servicemonitor-crd.yaml"))
	createAll(t, ctx, c, warnings, "", readObjects(t, "testdata/monitoring-crds.yaml"))

	t.Run("helm install, upgrade, uninstall", func(t *testing.T) { helmLifecycle(t, ctx, c, kubeconfig) })

	for i, set := range sets {
		t.Run(set.name, func(t *testing.T) {
			createAll(t, ctx, c, warnings, set.namespace, rendered[i])
		})
	}

	// What was created is what was rendered, as the API server stored it.
	d := &unstructured.Unstructured{}
	d.SetAPIVersion("apps/v1")
	d.SetKind("Deployment")
	if err := c.Get(ctx, types.NamespacedName{Namespace: "ehr-operator-system", Name: "ehr-operator-controller-manager"}, d); err != nil {
		t.Fatalf("the kustomize Deployment was not created: %v", err)
	}
	c0 := managerContainer(t, d)
	if v, _ := envValue(c0, "OPERATOR_IMAGE"); v == "" || v != c0["image"] {
		t.Errorf("kustomize Deployment: OPERATOR_IMAGE = %q, want the manager's image %v", v, c0["image"])
	}
	e := &unstructured.Unstructured{}
	e.SetAPIVersion("ehr.insighthealth.io/v1alpha1")
	e.SetKind("EHRIntegration")
	if err := c.Get(ctx, types.NamespacedName{Namespace: "ehr", Name: "nexus"}, e); err != nil {
		t.Fatalf("the example EHRIntegration was not created: %v", err)
	}
	if host, _, _ := unstructured.NestedString(e.Object, "spec", "ingress", "host"); host != "nexus.webhooks.example.com" {
		t.Errorf("stored example spec.ingress.host = %q", host)
	}
}

// helmLifecycle is what an SRE does: install with default values, upgrade
// to every option, uninstall; the CRD (and so every EHRIntegration) stays.
func helmLifecycle(t *testing.T, ctx context.Context, c client.Client, kubeconfig string) {
	helm := helmBin(t)
	common := []string{"--namespace", "helm-flow", "--kubeconfig", kubeconfig}
	out, err := run(helm, append([]string{"install", "flow", chartDir, "--create-namespace"}, common...)...)
	if err != nil {
		t.Fatalf("helm install: %v", err)
	}
	for _, want := range []string{"NOTES:", "kubectl -n ehr get ehrintegrations", "examples/onboard-nexus.yaml",
		`receiverNetworkPolicy.webhookFrom, now:`, `"podSelector":{"matchLabels":{"app.kubernetes.io/name":"traefik"}}`} {
		if !strings.Contains(out, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "docker-registry") {
		t.Errorf("helm install output asks for a pull Secret the values do not name:\n%s", out)
	}
	deployment := func(name string) (*unstructured.Unstructured, error) {
		d := &unstructured.Unstructured{}
		d.SetAPIVersion("apps/v1")
		d.SetKind("Deployment")
		return d, c.Get(ctx, types.NamespacedName{Namespace: "helm-flow", Name: name}, d)
	}
	if _, err := deployment("flow-ehr-operator"); err != nil {
		t.Fatalf("helm install made no manager Deployment: %v", err)
	}
	t.Run("helm test hook", func(t *testing.T) { helmTestHook(t, ctx, c, kubeconfig, "flow", "helm-flow") })

	// Every option, under another full name so as not to clash with the
	// rendered every-option set created later. Its Roles go into the
	// watched namespaces, which helm does not create: before they exist the
	// upgrade is refused, naming the first, with nothing written (helm
	// alone failed half-way, leaving a failed revision and the new
	// cluster-wide objects, which no later revision owned).
	upgradeAllOn := append([]string{"upgrade", "flow", chartDir, "-f", allOnValues, "--set", "fullnameOverride=flow-all-on"}, common...)
	if _, err := run(helm, upgradeAllOn...); err == nil || !strings.Contains(err.Error(), "watchNamespaces: namespace ehr-a does not exist") {
		t.Errorf("helm upgrade watching namespaces that do not exist: err = %v, want the chart to refuse it naming ehr-a", err)
	}
	if out, err := run(helm, append([]string{"history", "flow", "-o", "json"}, common...)...); err != nil || strings.Count(out, `"revision"`) != 1 {
		t.Errorf("after the refused upgrade, helm history = %s (%v), want the install alone", out, err)
	}
	gateways := &unstructured.Unstructured{}
	gateways.SetAPIVersion("rbac.authorization.k8s.io/v1")
	gateways.SetKind("ClusterRole")
	if err := c.Get(ctx, client.ObjectKey{Name: "flow-all-on-manager-gateways"}, gateways); !apierrors.IsNotFound(err) {
		t.Errorf("the refused upgrade wrote ClusterRole flow-all-on-manager-gateways: %v", err)
	}
	for _, ns := range []string{"ehr-a", "ehr-b"} {
		ensureNamespace(t, ctx, c, ns)
	}
	out, err = run(helm, upgradeAllOn...)
	if err != nil {
		t.Fatalf("helm upgrade to every option: %v", err)
	}
	// The NOTES' example is in a watched namespace, with the receivers'
	// pull Secret made there first.
	for _, want := range []string{"kubectl -n ehr-a get ehrintegrations", "kubectl -n ehr-a create secret docker-registry regcred"} {
		if !strings.Contains(out, want) {
			t.Errorf("helm upgrade output with every option lacks %q:\n%s", want, out)
		}
	}
	d, err := deployment("flow-all-on")
	if err != nil {
		t.Fatalf("helm upgrade made no Deployment flow-all-on: %v", err)
	}
	if n, _, _ := unstructured.NestedInt64(d.Object, "spec", "replicas"); n != 2 {
		t.Errorf("upgraded Deployment has %d replicas, want 2", n)
	}
	if _, err := deployment("flow-ehr-operator"); !apierrors.IsNotFound(err) {
		t.Errorf("the Deployment of the first install is still there after the upgrade renamed it: %v", err)
	}

	if _, err := run(helm, append([]string{"uninstall", "flow"}, common...)...); err != nil {
		t.Fatalf("helm uninstall: %v", err)
	}
	if _, err := deployment("flow-all-on"); !apierrors.IsNotFound(err) {
		t.Errorf("the manager Deployment survived helm uninstall: %v", err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := c.Get(ctx, client.ObjectKey{Name: "ehrintegrations.ehr.insighthealth.io"}, crd); err != nil {
		t.Errorf("helm uninstall removed the CRD despite crds.keep: %v", err)
	}
	// One release per cluster: another release may not take the CRD, which
	// still names flow, and is told so.
	if _, err := run(helm, "install", "other", chartDir, "--namespace", "helm-other", "--create-namespace", "--kubeconfig", kubeconfig); err == nil ||
		!strings.Contains(err.Error(), "belongs to Helm release flow in namespace helm-flow") {
		t.Errorf("a second release was not refused the CRD of release flow: %v", err)
	}
}

// checkPodSecurityWarns shows that the warning check can fail: a privileged
// pod template in a namespace that warns on "restricted" draws a warning.
func checkPodSecurityWarns(t *testing.T, ctx context.Context, c client.Client, warnings *warningRecorder) {
	objs, err := decodeObjects([]byte(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: privileged, namespace: psa-check}
spec:
  selector: {matchLabels: {app: privileged}}
  template:
    metadata: {labels: {app: privileged}}
    spec:
      containers:
        - name: c
          image: example.com/x:1
          securityContext: {privileged: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	ensureNamespace(t, ctx, c, "psa-check")
	warnings.reset()
	if err := c.Create(ctx, objs[0]); err != nil {
		t.Fatal(err)
	}
	if got := warnings.take(); !strings.Contains(strings.Join(got, "\n"), `violate PodSecurity "restricted`) {
		t.Errorf("no PodSecurity warning for a privileged pod template; got %q", got)
	}
}

// startAPIServer starts kube-apiserver and etcd from KUBEBUILDER_ASSETS and
// returns a client whose API warnings are recorded.
func startAPIServer(t *testing.T) (client.Client, *warningRecorder, string) {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make setup-envtest` (fills ~/.local/share/kubebuilder-envtest/k8s/<version>-linux-amd64) and point KUBEBUILDER_ASSETS there, or run `make test`")
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
			t.Fatalf("KUBEBUILDER_ASSETS=%s has no %s: run `make setup-envtest`", assets, bin)
		}
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("while starting the envtest API server: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("while stopping the envtest API server: %v", err)
		}
	})
	warnings := &warningRecorder{}
	cfg.WarningHandlerWithContext = warnings
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatalf("while creating a client: %v", err)
	}
	adminConfigs.Store(c, cfg)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	return c, warnings, kubeconfig
}

// createAll creates objs: CRDs first (updated when another set created them
// already) and waits until they are served, then Namespaces, then the rest.
// Namespaced objects without a namespace go into defaultNS.
func createAll(t *testing.T, ctx context.Context, c client.Client, warnings *warningRecorder, defaultNS string, objs []*unstructured.Unstructured) {
	t.Helper()
	var crds, namespaces, rest []*unstructured.Unstructured
	for _, o := range objs {
		switch o.GetKind() {
		case "CustomResourceDefinition":
			crds = append(crds, o)
		case "Namespace":
			namespaces = append(namespaces, o)
		default:
			rest = append(rest, o)
		}
	}
	for _, o := range crds {
		createOrUpdateCRD(t, ctx, c, o)
	}
	for _, o := range namespaces {
		// Warn about pod templates that break the restricted standard.
		labels := o.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels["pod-security.kubernetes.io/warn"] = "restricted"
		o.SetLabels(labels)
		create(t, ctx, c, warnings, o)
	}
	for _, o := range rest {
		namespaced, err := c.IsObjectNamespaced(o)
		if err != nil {
			t.Fatalf("%s/%s: kind unknown to the API server: %v", o.GetKind(), o.GetName(), err)
		}
		if namespaced && o.GetNamespace() == "" {
			if defaultNS == "" {
				t.Fatalf("%s/%s has no namespace", o.GetKind(), o.GetName())
			}
			o.SetNamespace(defaultNS)
		}
		if namespaced {
			ensureNamespace(t, ctx, c, o.GetNamespace())
		}
		create(t, ctx, c, warnings, o)
	}
}

func create(t *testing.T, ctx context.Context, c client.Client, warnings *warningRecorder, o *unstructured.Unstructured) {
	t.Helper()
	warnings.reset()
	if err := c.Create(ctx, o, client.FieldValidation("Strict")); err != nil {
		t.Errorf("while creating %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		return
	}
	for _, w := range warnings.take() {
		t.Errorf("creating %s %s/%s drew the API warning: %s", o.GetKind(), o.GetNamespace(), o.GetName(), w)
	}
}

func createOrUpdateCRD(t *testing.T, ctx context.Context, c client.Client, o *unstructured.Unstructured) {
	t.Helper()
	err := c.Create(ctx, o.DeepCopy(), client.FieldValidation("Strict"))
	if apierrors.IsAlreadyExists(err) {
		existing := &apiextensionsv1.CustomResourceDefinition{}
		if err = c.Get(ctx, client.ObjectKey{Name: o.GetName()}, existing); err == nil {
			u := o.DeepCopy()
			u.SetResourceVersion(existing.ResourceVersion)
			err = c.Update(ctx, u, client.FieldValidation("Strict"))
		}
	}
	if err != nil {
		t.Fatalf("while creating CRD %s: %v", o.GetName(), err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := c.Get(ctx, client.ObjectKey{Name: o.GetName()}, crd); err != nil {
			return false, err
		}
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD %s was not established: %v", o.GetName(), err)
	}
}

func ensureNamespace(t *testing.T, ctx context.Context, c client.Client, name string) {
	t.Helper()
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName(name)
	ns.SetLabels(map[string]string{"pod-security.kubernetes.io/warn": "restricted"})
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("while creating namespace %s: %v", name, err)
	}
}

// warningRecorder keeps the warnings the API server sends (PodSecurity
// admission, deprecations).
type warningRecorder struct {
	mu       sync.Mutex
	messages []string
}

func (w *warningRecorder) HandleWarningHeaderWithContext(_ context.Context, code int, _, message string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.messages = append(w.messages, fmt.Sprintf("%d %s", code, message))
}

func (w *warningRecorder) reset() { w.take() }

func (w *warningRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.messages
	w.messages = nil
	return m
}
