package chart

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

const allOnValues = "testdata/all-on.yaml"

type chartMeta struct {
	Version    string `json:"version"`
	AppVersion string `json:"appVersion"`
}

func readChartMeta(t *testing.T) chartMeta {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var m chartMeta
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatalf("Chart.yaml: %v", err)
	}
	return m
}

// The chart's version and appVersion are one release: version is the SemVer,
// appVersion the tag "v"+version, which is also the default image tag.
func TestChartVersionMatchesAppVersion(t *testing.T) {
	m := readChartMeta(t)
	semver := regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$`)
	if !semver.MatchString(m.Version) {
		t.Errorf("Chart.yaml version %q is not SemVer without a leading v", m.Version)
	}
	if m.AppVersion != "v"+m.Version {
		t.Errorf("Chart.yaml appVersion %q, want %q: stamp both with `make chart-version VERSION=v%s`", m.AppVersion, "v"+m.Version, m.Version)
	}
	// config/manager's image is the same release.
	b, err := os.ReadFile(filepath.Join(repoRoot, "config/manager/kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Images []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("config/manager/kustomization.yaml: %v", err)
	}
	if len(k.Images) != 1 || k.Images[0].Name != "controller" || k.Images[0].NewTag != m.AppVersion {
		t.Errorf("config/manager/kustomization.yaml images = %+v, want controller tagged %s (`make chart-version`)", k.Images, m.AppVersion)
	}
}

func TestHelmLint(t *testing.T) {
	helm := helmBin(t)
	for name, args := range map[string][]string{
		"default values": nil,
		"every option":   {"-f", allOnValues},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := run(helm, append([]string{"lint", "--strict", chartDir}, args...)...)
			if err != nil {
				t.Fatalf("helm lint: %v", err)
			}
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Errorf("helm lint did not report success:\n%s", out)
			}
		})
	}
}

// Mistakes in values are refused by values.schema.json, by lint and by
// template (so by install) alike, naming the offending key.
func TestSchemaRefusesBadValues(t *testing.T) {
	helm := helmBin(t)
	for _, tc := range []struct {
		name, set, want string
	}{
		{"string for an integer", "replicaCount=two", "replicaCount"},
		{"unknown top-level key", "replicas=2", "replicas"},
		{"unknown nested key", "image.name=x", "name"},
		{"string for a boolean", "crds.install=yes", "install"},
		{"pull policy outside the enum", "image.pullPolicy=Sometimes", "pullPolicy"},
		{"port out of range", "metrics.port=70000", "port"},
		{"malformed digest", "image.digest=latest", "digest"},
		{"object as an annotation value", "podAnnotations.a.b=c", "podAnnotations"},
		{"a selector label in podLabels", `podLabels.app\.kubernetes\.io/instance=x`, "podLabels"},
		{"misspelt toleration field", "tolerations[0].operater=Exists", "operater"},
		{"toleration operator outside the enum", "tolerations[0].operator=Exist", "operator"},
		{"toleration effect outside the enum", "tolerations[0].effect=NoSchedul", "effect"},
		{"string for tolerationSeconds", "tolerations[0].tolerationSeconds=soon", "tolerationSeconds"},
		{"misspelt peer field of the manager's policy", "networkPolicy.metricsFrom[0].podSelektor.a=b", "podSelektor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, cmd := range [][]string{
				{"lint", "--strict", chartDir, "--set", tc.set},
				{"template", "bad", chartDir, "--set", tc.set},
			} {
				_, err := run(helm, cmd...)
				if err == nil {
					t.Fatalf("helm %s accepted --set %s", cmd[0], tc.set)
				}
				if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("helm %s --set %s: want a schema error naming %q, got: %v", cmd[0], tc.set, tc.want, err)
				}
			}
		})
	}
}

func TestTemplateDefaults(t *testing.T) {
	objs := helmTemplate(t, "ehr-operator", "ehr-operator-system")
	meta := readChartMeta(t)
	wantImage := "ghcr.io/insighthealth/ehr-operator:" + meta.AppVersion

	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		if o.GetKind() != "CustomResourceDefinition" && !strings.HasPrefix(o.GetKind(), "Cluster") && o.GetNamespace() != "ehr-operator-system" {
			t.Errorf("%s/%s is in namespace %q, want the release namespace", o.GetKind(), o.GetName(), o.GetNamespace())
		}
	}
	wantKinds := map[string]int{
		"CustomResourceDefinition": 1, "ServiceAccount": 1, "ClusterRole": 5, "ClusterRoleBinding": 2,
		"Role": 1, "RoleBinding": 1, "Deployment": 1, "Service": 1, "ConfigMap": 2, // the receivers' network policy and pod defaults
	}
	if !reflect.DeepEqual(kinds, wantKinds) {
		t.Errorf("rendered kinds %v, want %v", kinds, wantKinds)
	}

	crd := find(t, objs, "CustomResourceDefinition", "ehrintegrations.ehr.insighthealth.io")
	if got := crd.GetAnnotations()["helm.sh/resource-policy"]; got != "keep" {
		t.Errorf("CRD annotation helm.sh/resource-policy = %q, want keep", got)
	}

	d := find(t, objs, "Deployment", "ehr-operator")
	if n, _, _ := unstructured.NestedInt64(d.Object, "spec", "replicas"); n != 1 {
		t.Errorf("replicas = %d, want 1", n)
	}
	if sa, _, _ := unstructured.NestedString(d.Object, "spec", "template", "spec", "serviceAccountName"); sa != "ehr-operator" {
		t.Errorf("serviceAccountName = %q, want ehr-operator", sa)
	}
	c := managerContainer(t, d)
	if c["image"] != wantImage {
		t.Errorf("image = %v, want %s", c["image"], wantImage)
	}
	args := stringsOf(c["args"])
	for _, want := range []string{"manager", "--leader-elect", "--metrics-bind-address=:8443",
		"--health-probe-bind-address=:8081", "--receiver-image=" + wantImage} {
		if !slices.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if slices.Contains(args, "--allow-insecure-http") {
		t.Errorf("args %q: plain HTTP allowed by default", args)
	}
	if args[0] != "manager" {
		t.Errorf("first arg %q, want the subcommand manager", args[0])
	}
	if v, _ := envValue(c, "OPERATOR_IMAGE"); v != wantImage {
		t.Errorf("OPERATOR_IMAGE = %q, want %s", v, wantImage)
	}
	assertRestricted(t, d)
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		p, _ := c[probe].(map[string]any)
		get, _ := p["httpGet"].(map[string]any)
		if get["path"] != path || get["port"] != "health" {
			t.Errorf("%s = %v, want GET %s on port health", probe, p, path)
		}
	}
	if port := containerPort(c, "health"); port != 8081 {
		t.Errorf("health containerPort = %d, want 8081", port)
	}

	svc := find(t, objs, "Service", "ehr-operator-metrics")
	if sel, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector"); !reflect.DeepEqual(sel, podLabels(t, d, sel)) {
		t.Errorf("metrics Service selector %v does not select the manager pods", sel)
	}
}

func TestTemplateEveryOption(t *testing.T) {
	objs := helmTemplate(t, "all-on", "ehr-platform", "-f", allOnValues)
	for _, kind := range []string{"ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy"} {
		if n := len(ofKind(objs, kind)); n != 1 {
			t.Errorf("%d %s objects rendered, want 1", n, kind)
		}
	}
	d := find(t, objs, "Deployment", "all-on")
	c := managerContainer(t, d)
	const image = "registry.example.com/platform/ehr-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if c["image"] != image {
		t.Errorf("image = %v, want the digest %s", c["image"], image)
	}
	if c["imagePullPolicy"] != "Always" {
		t.Errorf("imagePullPolicy = %v, want Always", c["imagePullPolicy"])
	}
	args := stringsOf(c["args"])
	for _, want := range []string{"--receiver-image=registry.example.com/platform/ehr-receiver:v9.9.9",
		"--metrics-bind-address=:8090", "--health-probe-bind-address=:8091", "--zap-log-level=debug", "--allow-insecure-http"} {
		if !slices.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	if v, _ := envValue(c, "GOMEMLIMIT"); v != "200MiB" {
		t.Errorf("extraEnv GOMEMLIMIT = %q, want 200MiB", v)
	}
	spec, _, _ := unstructured.NestedMap(d.Object, "spec", "template", "spec")
	for _, field := range []string{"nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "imagePullSecrets", "priorityClassName"} {
		if spec[field] == nil {
			t.Errorf("pod spec lacks %s", field)
		}
	}
	if spec["serviceAccountName"] != "all-on-manager" {
		t.Errorf("serviceAccountName = %v, want all-on-manager", spec["serviceAccountName"])
	}
	if n, _, _ := unstructured.NestedInt64(d.Object, "spec", "replicas"); n != 2 {
		t.Errorf("replicas = %d, want 2", n)
	}
	annotations, _, _ := unstructured.NestedStringMap(d.Object, "spec", "template", "metadata", "annotations")
	labels, _, _ := unstructured.NestedStringMap(d.Object, "spec", "template", "metadata", "labels")
	if annotations["example.com/scrape"] != "true" || annotations["example.com/revision"] != "3" || labels["team"] != "platform" {
		t.Errorf("pod annotations %v / labels %v lack podAnnotations / podLabels", annotations, labels)
	}
	assertRestricted(t, d)

	sm := find(t, objs, "ServiceMonitor", "all-on")
	if sm.GetLabels()["release"] != "prometheus" {
		t.Errorf("ServiceMonitor labels %v lack release: prometheus", sm.GetLabels())
	}
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["interval"] != "15s" || eps[0].(map[string]any)["port"] != "metrics" {
		t.Errorf("ServiceMonitor endpoints = %v, want port metrics every 15s", eps)
	}
	checkMonitoring(t, objs)
	svc := find(t, objs, "Service", "all-on-metrics")
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	if len(ports) != 1 || ports[0].(map[string]any)["port"] != int64(9090) {
		t.Errorf("metrics Service ports = %v, want 9090", ports)
	}
	np := find(t, objs, "NetworkPolicy", "all-on")
	ingress, _, _ := unstructured.NestedSlice(np.Object, "spec", "ingress")
	if len(ingress) != 2 || ingress[0].(map[string]any)["from"] == nil {
		t.Errorf("NetworkPolicy ingress = %v, want metrics from the given peers and the probe port", ingress)
	}
}

// Switches that remove objects or flags.
func TestTemplateToggles(t *testing.T) {
	objs := helmTemplate(t, "ehr-operator", "ops", "--set", "crds.install=false",
		"--set", "leaderElection.enabled=false", "--set", "rbac.aggregateToDefaultRoles=false",
		"--set", "metrics.service.enabled=false", "--set", "serviceAccount.create=false",
		"--set", "serviceAccount.name=existing")
	for _, kind := range []string{"CustomResourceDefinition", "Role", "RoleBinding", "Service", "ServiceAccount"} {
		if n := len(ofKind(objs, kind)); n != 0 {
			t.Errorf("%d %s objects rendered, want none", n, kind)
		}
	}
	if n := len(ofKind(objs, "ClusterRole")); n != 3 {
		t.Errorf("%d ClusterRoles, want only the manager's and the metrics endpoint's two", n)
	}
	d := find(t, objs, "Deployment", "ehr-operator")
	if args := stringsOf(managerContainer(t, d)["args"]); slices.Contains(args, "--leader-elect") {
		t.Errorf("args %q have --leader-elect with leaderElection.enabled=false", args)
	}
	if sa, _, _ := unstructured.NestedString(d.Object, "spec", "template", "spec", "serviceAccountName"); sa != "existing" {
		t.Errorf("serviceAccountName = %q, want existing", sa)
	}
	binding := find(t, objs, "ClusterRoleBinding", "ehr-operator-manager")
	subjects, _, _ := unstructured.NestedSlice(binding.Object, "subjects")
	if len(subjects) != 1 || subjects[0].(map[string]any)["name"] != "existing" || subjects[0].(map[string]any)["namespace"] != "ops" {
		t.Errorf("ClusterRoleBinding subjects = %v, want ServiceAccount ops/existing", subjects)
	}

	objs = helmTemplate(t, "ehr-operator", "ops", "--set", "crds.keep=false")
	crd := find(t, objs, "CustomResourceDefinition", "ehrintegrations.ehr.insighthealth.io")
	if _, ok := crd.GetAnnotations()["helm.sh/resource-policy"]; ok {
		t.Error("CRD keeps helm.sh/resource-policy with crds.keep=false")
	}

	// One port for metrics and probes is refused.
	if _, err := run(helmBin(t), "template", "x", chartDir, "--set", "metrics.port=8081"); err == nil ||
		!strings.Contains(err.Error(), "must differ") {
		t.Errorf("metrics.port equal to healthProbePort was not refused: %v", err)
	}
	// A PodDisruptionBudget that allows no eviction (drains would hang) and
	// several managers without leader election are refused.
	for _, tc := range []struct {
		want string
		sets []string
	}{
		{"allows no eviction", []string{"podDisruptionBudget.enabled=true"}},
		{"allows no eviction", []string{"podDisruptionBudget.enabled=true", "replicaCount=2", "podDisruptionBudget.minAvailable=51%"}},
		{"needs leaderElection.enabled", []string{"replicaCount=2", "leaderElection.enabled=false"}},
	} {
		args := []string{"template", "x", chartDir}
		for _, s := range tc.sets {
			args = append(args, "--set", s)
		}
		if _, err := run(helmBin(t), args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--set %v: want an error saying %q, got %v", tc.sets, tc.want, err)
		}
	}
	pdb := find(t, helmTemplate(t, "ehr-operator", "ops", "--set", "podDisruptionBudget.enabled=true", "--set", "replicaCount=2",
		"--set", "podDisruptionBudget.minAvailable=50%"), "PodDisruptionBudget", "ehr-operator")
	if m, _, _ := unstructured.NestedString(pdb.Object, "spec", "minAvailable"); m != "50%" {
		t.Errorf("PodDisruptionBudget minAvailable = %q, want 50%% of 2 replicas", m)
	}
	// A token from a Secret instead of Prometheus' own token file, which a
	// Prometheus Operator denying file access refuses.
	sm := find(t, helmTemplate(t, "ehr-operator", "ops", "--set", "metrics.serviceMonitor.enabled=true",
		"--set", "metrics.serviceMonitor.bearerTokenSecret.name=scraper-token"), "ServiceMonitor", "ehr-operator")
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor endpoints = %v", eps)
	}
	ep := eps[0].(map[string]any)
	creds, _, _ := unstructured.NestedStringMap(ep, "authorization", "credentials")
	if _, file := ep["bearerTokenFile"]; file || creds["name"] != "scraper-token" || creds["key"] != "token" {
		t.Errorf("ServiceMonitor endpoint %v: want authorization.credentials scraper-token/token and no bearerTokenFile", ep)
	}
	// A ServiceMonitor without the Service it scrapes is refused.
	if _, err := run(helmBin(t), "template", "x", chartDir, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"); err == nil ||
		!strings.Contains(err.Error(), "metrics.service.enabled") {
		t.Errorf("a ServiceMonitor without the metrics Service was not refused: %v", err)
	}
}

// assertRestricted checks the manager pod against the Pod Security Standard
// "restricted" by its fields (the envtest test also has the API server's
// PodSecurity admission judge it).
func assertRestricted(t *testing.T, d *unstructured.Unstructured) {
	t.Helper()
	pod, _, _ := unstructured.NestedMap(d.Object, "spec", "template", "spec", "securityContext")
	c := managerContainer(t, d)
	sc, _ := c["securityContext"].(map[string]any)
	if pod["runAsNonRoot"] != true {
		t.Errorf("pod securityContext %v lacks runAsNonRoot", pod)
	}
	if seccomp, _ := pod["seccompProfile"].(map[string]any); seccomp["type"] != "RuntimeDefault" {
		t.Errorf("pod seccompProfile = %v, want RuntimeDefault", pod["seccompProfile"])
	}
	if sc["allowPrivilegeEscalation"] != false || sc["readOnlyRootFilesystem"] != true {
		t.Errorf("container securityContext %v must forbid privilege escalation and have a read-only root", sc)
	}
	caps, _ := sc["capabilities"].(map[string]any)
	if drop := stringsOf(caps["drop"]); !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("dropped capabilities %v, want [ALL]", drop)
	}
}

func containerPort(c map[string]any, name string) int64 {
	ports, _ := c["ports"].([]any)
	for _, p := range ports {
		m, _ := p.(map[string]any)
		if m["name"] == name {
			n, _ := m["containerPort"].(int64)
			return n
		}
	}
	return 0
}

// podLabels returns the pod template labels of d restricted to the keys of sel.
func podLabels(t *testing.T, d *unstructured.Unstructured, sel map[string]string) map[string]string {
	t.Helper()
	labels, _, _ := unstructured.NestedStringMap(d.Object, "spec", "template", "metadata", "labels")
	out := map[string]string{}
	for k := range sel {
		if v, ok := labels[k]; ok {
			out[k] = v
		}
	}
	return out
}

// The Dockerfile stamps the version into the same variable as `make build`.
func TestDockerfileStampsVersionLikeMakefile(t *testing.T) {
	makefile, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	dockerfile, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^LDFLAGS := (.*)\$\(VERSION\)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("Makefile has no `LDFLAGS := … $(VERSION)` line")
	}
	want := string(m[1]) + "${VERSION}"
	if !strings.Contains(string(dockerfile), want) {
		t.Errorf("Dockerfile does not build with the Makefile's ldflags %q", want)
	}
	for _, s := range []string{"CGO_ENABLED=0", `ENTRYPOINT ["/ehr-operator"]`, `CMD ["manager"]`, "USER 65532:65532"} {
		if !strings.Contains(string(dockerfile), s) {
			t.Errorf("Dockerfile lacks %s", s)
		}
	}
}

// With watchNamespaces the PodMonitor looks only there (checkMonitoring,
// all-on.yaml): a pod elsewhere that copies the receivers' labels would
// otherwise feed (and silence) their alerts. Without them, everywhere.
func TestPodMonitorFollowsWatchNamespaces(t *testing.T) {
	objs := helmTemplate(t, "wide", "ehr-system", "--set", "monitoring.podMonitor.enabled=true")
	pm := find(t, objs, "PodMonitor", "wide-ehr-operator-receivers")
	names, _, _ := unstructured.NestedStringSlice(pm.Object, "spec", "namespaceSelector", "matchNames")
	anyNS, _, _ := unstructured.NestedBool(pm.Object, "spec", "namespaceSelector", "any")
	if len(names) != 0 || !anyNS {
		t.Errorf("PodMonitor namespaceSelector %v, want any: true", pm.Object["spec"])
	}
}

// checkMonitoring: the PodMonitor selects the receivers the operator makes,
// and the PrometheusRule and the dashboard ConfigMap carry the shipped files
// unchanged.
func checkMonitoring(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	pm := find(t, objs, "PodMonitor", "all-on-receivers")
	sel, _, _ := unstructured.NestedStringMap(pm.Object, "spec", "selector", "matchLabels")
	if want := map[string]string{"app.kubernetes.io/name": "ehr-receiver", "app.kubernetes.io/managed-by": "ehr-operator"}; !reflect.DeepEqual(sel, want) {
		t.Errorf("PodMonitor selector %v, want the receivers' labels %v", sel, want)
	}
	// all-on.yaml watches ehr-a and ehr-b: the PodMonitor looks there alone.
	if names, _, _ := unstructured.NestedStringSlice(pm.Object, "spec", "namespaceSelector", "matchNames"); !reflect.DeepEqual(names, []string{"ehr-a", "ehr-b"}) || pm.GetLabels()["release"] != "prometheus" {
		t.Errorf("PodMonitor should look in the watched namespaces and carry its labels: %v", pm.Object)
	}
	var rules map[string]any
	raw, err := os.ReadFile(filepath.Join(chartDir, "files/prometheus-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	pr := find(t, objs, "PrometheusRule", "all-on")
	if got, _, _ := unstructured.NestedSlice(pr.Object, "spec", "groups"); !reflect.DeepEqual(got, rules["groups"]) {
		t.Errorf("the PrometheusRule's groups differ from files/prometheus-rules.yaml")
	}
	dash, err := os.ReadFile(filepath.Join(chartDir, "files/dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	cm := find(t, objs, "ConfigMap", "all-on-dashboard")
	if got, _, _ := unstructured.NestedString(cm.Object, "data", "ehr-operator.json"); got != strings.TrimSpace(string(dash)) || cm.GetLabels()["grafana_dashboard"] != "1" {
		t.Errorf("the dashboard ConfigMap does not hold files/dashboard.json with label grafana_dashboard=1")
	}
	other := helmTemplate(t, "x", "ops", "--set", "monitoring.dashboard.enabled=true", "--set", "monitoring.dashboard.namespace=grafana")
	if ns := find(t, other, "ConfigMap", "x-ehr-operator-dashboard").GetNamespace(); ns != "grafana" {
		t.Errorf("monitoring.dashboard.namespace=grafana put the ConfigMap in %q", ns)
	}
}
