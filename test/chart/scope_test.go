package chart

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/internal/gatewayapi"
	"github.com/insighthealth/ehr-operator/internal/harness"
)

// TestManagerRunsAsTheChartsRBAC runs the real `ehr-operator manager`, with
// the args of the chart's Deployment, as the chart's ServiceAccount (a token
// from the TokenRequest API, as in a pod) holding exactly the RBAC the chart
// renders, in each mode: cluster-wide (watchNamespaces empty) and namespaced.
// It shows what the manager reconciles, which Secrets its identity can read,
// and that its metrics answer only an authenticated, authorized scraper.
func TestManagerRunsAsTheChartsRBAC(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ehr-operator")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("while building ehr-operator: %v\n%s", err, out)
	}
	modes := []struct {
		name, release, operatorNS, watched, other string
		namespaced                                bool
	}{
		{name: "cluster-wide", release: "wide", operatorNS: "op-wide", watched: "wide-a", other: "wide-b"},
		{name: "namespaced", release: "scoped", operatorNS: "op-scoped", watched: "scoped-a", other: "scoped-b", namespaced: true},
	}
	// Render before starting the API server: a template error needs none.
	rendered := make([][]*unstructured.Unstructured, len(modes))
	for i, m := range modes {
		args := []string{"--set", "metrics.readers[0].name=prometheus", "--set", "metrics.readers[0].namespace=monitoring",
			// Pod defaults, which the manager reads from the chart's file.
			"--set", "receivers.podTemplate.imagePullSecrets[0].name=regcred",
			"--set", `receivers.podTemplate.serviceAccount.annotations.eks\.amazonaws\.com/role-arn=` + roleARN}
		if m.namespaced {
			args = append(args, "--set", "watchNamespaces={"+m.watched+"}")
		}
		rendered[i] = helmTemplate(t, m.release, m.operatorNS, args...)
	}
	c, warnings, _ := startAPIServer(t)
	cfg := adminConfig(t, c)
	ctx := context.Background()
	// The Gateway API, so that a route's Gateway in a namespace of its own
	// is read in both modes (checkGatewayElsewhere).
	if _, err := gatewayapi.InstallCRDs(cfg); err != nil {
		t.Fatal(err)
	}

	for i, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			objs := rendered[i]
			// The identity and rights, as the chart grants them; nothing else.
			var rbac []*unstructured.Unstructured
			for _, o := range objs {
				switch o.GetKind() {
				case "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
					rbac = append(rbac, o)
				}
			}
			if got := len(ofKind(objs, "Role")); m.namespaced != (got > 1) {
				t.Fatalf("%d Roles rendered (the leader election's and the watched namespaces')", got)
			}
			createAll(t, ctx, c, warnings, m.operatorNS, rbac)
			saName := find(t, objs, "ServiceAccount", m.release+"-ehr-operator").GetName()
			for _, ns := range []string{"monitoring", m.watched, m.other} {
				ensureNamespace(t, ctx, c, ns)
			}
			for _, sa := range []types.NamespacedName{{Namespace: "monitoring", Name: "prometheus"}, {Namespace: "monitoring", Name: "stranger"}} {
				if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: sa.Namespace, Name: sa.Name}}); err != nil && !apierrors.IsAlreadyExists(err) {
					t.Fatal(err)
				}
			}
			managerToken := serviceAccountToken(t, cfg, m.operatorNS, saName)

			args := stringsOf(managerContainer(t, find(t, objs, "Deployment", m.release+"-ehr-operator"))["args"])
			// The receivers' NetworkPolicy file, as the chart's ConfigMap mounts it.
			policy, _, _ := unstructured.NestedString(find(t, objs, "ConfigMap", m.release+"-ehr-operator-receiver-network-policy").Object, "data", "policy.yaml")
			policyFile := filepath.Join(t.TempDir(), "policy.yaml")
			if err := os.WriteFile(policyFile, []byte(policy), 0o600); err != nil {
				t.Fatal(err)
			}
			// And the receivers' pod defaults.
			podDefaults, _, _ := unstructured.NestedString(find(t, objs, "ConfigMap", m.release+"-ehr-operator-receiver-pod-defaults").Object, "data", "pod-defaults.yaml")
			podDefaultsFile := filepath.Join(t.TempDir(), "pod-defaults.yaml")
			if err := os.WriteFile(podDefaultsFile, []byte(podDefaults), 0o600); err != nil {
				t.Fatal(err)
			}
			for i, a := range args {
				switch {
				case strings.HasPrefix(a, "--receiver-network-policy="):
					args[i] = "--receiver-network-policy=" + policyFile
				case strings.HasPrefix(a, "--receiver-pod-defaults="):
					args[i] = "--receiver-pod-defaults=" + podDefaultsFile
				}
			}
			mgr := startManager(t, bin, args, cfg, managerToken, m.operatorNS)

			for _, ns := range []string{m.watched, m.other} {
				createIntegration(t, ctx, c, ns)
			}
			waitReconciled(t, ctx, c, m.watched, mgr)
			checkPodDefaults(t, ctx, c, m.watched)
			if m.namespaced {
				// The watched one was reconciled; give the other as long again.
				time.Sleep(3 * time.Second)
				if st := statusOf(t, ctx, c, m.other, "nexus"); st != nil {
					t.Errorf("the EHRIntegration in unwatched namespace %s got a status: %v", m.other, st)
				}
				if err := c.Get(ctx, types.NamespacedName{Namespace: m.other, Name: "nexus-receiver"}, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "apps/v1", "kind": "Deployment"}}); !apierrors.IsNotFound(err) {
					t.Errorf("a receiver Deployment in unwatched namespace %s: %v", m.other, err)
				}
			} else {
				waitReconciled(t, ctx, c, m.other, mgr)
			}
			checkGatewayElsewhere(t, ctx, c, m.watched, "edge-"+m.release, mgr)
			checkIngressClass(t, ctx, c, m.watched, "edge-"+m.release, mgr)

			// What the manager's identity can read: a real get with its token,
			// and the API server's own answer for the same question.
			asManager, err := kubernetes.NewForConfig(tokenConfig(cfg, managerToken))
			if err != nil {
				t.Fatal(err)
			}
			for ns, want := range map[string]bool{m.watched: true, m.other: !m.namespaced, m.operatorNS: !m.namespaced} {
				// The operator's namespace has no such Secret: NotFound is allowed.
				_, err := asManager.CoreV1().Secrets(ns).Get(ctx, "nexus-webhook", metav1.GetOptions{})
				if allowed := err == nil || apierrors.IsNotFound(err); allowed != want || (!want && !apierrors.IsForbidden(err)) {
					t.Errorf("get Secret %s/nexus-webhook with the manager's token: err %v, want allowed=%v", ns, err, want)
				}
				for _, verb := range []string{"get", "list", "watch"} {
					if got := canI(t, cfg, m.operatorNS, saName, verb, ns); got != want {
						t.Errorf("SubjectAccessReview: manager may %s Secrets in %s = %v, want %v", verb, ns, got, want)
					}
				}
			}
			if got := canI(t, cfg, m.operatorNS, saName, "list", ""); got != !m.namespaced {
				t.Errorf("SubjectAccessReview: manager may list Secrets in every namespace = %v, want %v", got, !m.namespaced)
			}

			checkMetricsAuth(t, cfg, mgr)
			mgr.stop(t)
		})
	}
}

// checkMetricsAuth scrapes the manager's HTTPS metrics with no token, with
// the token of a ServiceAccount the chart does not bind, and with that of
// the one in metrics.readers.
func checkMetricsAuth(t *testing.T, cfg *rest.Config, mgr *manager) {
	t.Helper()
	scrape := func(token string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, "https://"+mgr.metricsAddr+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		// The chart's default: a self-signed certificate made at start.
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, Proxy: nil}} //nolint:gosec // the test scrapes the self-signed default
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("scraping %s: %v", req.URL, err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Plain HTTP is not served at all.
	if resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}).Get("http://" + mgr.metricsAddr + "/metrics"); err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the metrics endpoint answered 200 over plain HTTP")
		}
	}
	if code, body := scrape(""); code != http.StatusUnauthorized {
		t.Errorf("scrape without a token: %d, want 401\n%.300s", code, body)
	}
	if code, body := scrape(serviceAccountToken(t, cfg, "monitoring", "stranger")); code != http.StatusForbidden {
		t.Errorf("scrape as a ServiceAccount without metrics-reader: %d, want 403\n%.300s", code, body)
	}
	code, body := scrape(serviceAccountToken(t, cfg, "monitoring", "prometheus"))
	if code != http.StatusOK || !strings.Contains(body, "controller_runtime_reconcile_total") {
		t.Errorf("scrape as metrics.readers' ServiceAccount: %d, want 200 with controller_runtime_reconcile_total\n%.300s", code, body)
	}
}

// manager is a running `ehr-operator manager` process.
type manager struct {
	cmd         *exec.Cmd
	out         *syncBuffer
	metricsAddr string
	done        chan error
	exitErr     error // the process's exit, once stopped
	stopOnce    sync.Once
}

// startManager runs the binary with the Deployment's args, its listeners
// moved to free local ports, as the holder of token.
func startManager(t *testing.T, bin string, args []string, admin *rest.Config, token, podNamespace string) *manager {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	writeTokenKubeconfig(t, kubeconfig, admin, token)
	addrs, err := harness.FreeAddrs(2)
	if err != nil {
		t.Fatal(err)
	}
	m := &manager{out: &syncBuffer{}, done: make(chan error, 1), metricsAddr: addrs[0]}
	var final []string
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "--metrics-bind-address="):
			a = "--metrics-bind-address=" + m.metricsAddr
		case strings.HasPrefix(a, "--health-probe-bind-address="):
			a = "--health-probe-bind-address=" + addrs[1]
		}
		final = append(final, a)
	}
	final = append(final, "--kubeconfig="+kubeconfig)
	m.cmd = exec.Command(bin, final...)
	m.cmd.Env = append(os.Environ(), "POD_NAMESPACE="+podNamespace)
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("starting the manager: %v", err)
	}
	go func() { m.done <- m.cmd.Wait() }()
	t.Cleanup(func() {
		m.stop(t)
		if t.Failed() {
			t.Logf("manager args %q; its log:\n%s", final, m.out.String())
		}
	})
	return m
}

func (m *manager) stop(t *testing.T) {
	m.stopOnce.Do(func() {
		_ = m.cmd.Process.Signal(os.Interrupt)
		select {
		case m.exitErr = <-m.done:
		case <-time.After(15 * time.Second):
			_ = m.cmd.Process.Kill()
			m.exitErr = <-m.done
			t.Error("the manager did not stop within 15s of SIGINT")
		}
	})
}

// roleARN is the receivers' cloud IAM role the chart's pod defaults name.
const roleARN = "arn:aws:iam::111122223333:role/ehr-receiver"

// checkPodDefaults: the chart's receivers.podTemplate, rendered into the
// file the manager reads, reached the receiver in ns.
func checkPodDefaults(t *testing.T, ctx context.Context, c client.Client, ns string) {
	t.Helper()
	var d appsv1.Deployment
	var sa corev1.ServiceAccount
	for _, o := range []client.Object{&d, &sa} {
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "nexus-receiver"}, o); err != nil {
			t.Fatal(err)
		}
	}
	if s := d.Spec.Template.Spec.ImagePullSecrets; len(s) != 1 || s[0].Name != "regcred" {
		t.Errorf("receiver imagePullSecrets %v, want regcred from receivers.podTemplate", s)
	}
	if got := sa.Annotations["eks.amazonaws.com/role-arn"]; got != roleARN {
		t.Errorf("receiver ServiceAccount role-arn %q, want %q from receivers.podTemplate", got, roleARN)
	}
}

// createIntegration makes the Secrets and the EHRIntegration "nexus" in ns.
func createIntegration(t *testing.T, ctx context.Context, c client.Client, ns string) {
	t.Helper()
	objs, err := decodeObjects([]byte(fmt.Sprintf(`
apiVersion: v1
kind: Secret
metadata: {name: nexus-webhook, namespace: %[1]s}
stringData:
  api-key: 0123456789abcdef0123456789abcdef-api-key
  webhook-secret: 0123456789abcdef0123456789abcdef-secret
---
apiVersion: v1
kind: Secret
metadata: {name: appointments-db, namespace: %[1]s}
stringData:
  uri: postgres://appointments@appointments-rw.%[1]s.svc:5432/appointments?sslmode=require
---
apiVersion: ehr.insighthealth.io/v1alpha1
kind: EHRIntegration
metadata: {name: nexus, namespace: %[1]s}
spec:
  ehr: nexus-%[1]s
  credentialsSecretRef: {name: nexus-webhook}
  database:
    secretRef: {name: appointments-db, key: uri}
`, ns)))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("creating %s %s/%s: %v", o.GetKind(), ns, o.GetName(), err)
		}
	}
}

// waitReconciled waits until the manager has made the receiver's children
// and written a status for the current generation: as far as Ready goes
// without pods (envtest runs no kubelet).
func waitReconciled(t *testing.T, ctx context.Context, c client.Client, ns string, mgr *manager) {
	t.Helper()
	waitManager(t, mgr, "the EHRIntegration in "+ns+" reconciled", func() (missing []string) {
		for _, kind := range []struct{ apiVersion, kind string }{{"apps/v1", "Deployment"}, {"v1", "Service"}, {"v1", "ServiceAccount"}} {
			o := &unstructured.Unstructured{}
			o.SetAPIVersion(kind.apiVersion)
			o.SetKind(kind.kind)
			if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "nexus-receiver"}, o); err != nil {
				missing = append(missing, kind.kind+": "+err.Error())
			}
		}
		st := statusOf(t, ctx, c, ns, "nexus")
		if st == nil {
			missing = append(missing, "no status")
		} else if conds, _ := st["conditions"].([]any); len(conds) == 0 {
			missing = append(missing, "no conditions")
		}
		return missing
	})
}

// waitManager polls missing every 100 ms until it reports nothing, and
// fails after a minute with what it still reports and the manager's log.
func waitManager(t *testing.T, mgr *manager, what string, missing func() []string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m := missing()
		if len(m) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, not yet %s: %s\nmanager log:\n%s", what, strings.Join(m, "; "), mgr.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// statusOf returns the status of EHRIntegration name in ns, nil if none.
func statusOf(t *testing.T, ctx context.Context, c client.Client, ns, name string) map[string]any {
	t.Helper()
	e := &unstructured.Unstructured{}
	e.SetAPIVersion("ehr.insighthealth.io/v1alpha1")
	e.SetKind("EHRIntegration")
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, e); err != nil {
		t.Fatalf("reading EHRIntegration %s/%s: %v", ns, name, err)
	}
	st, _, _ := unstructured.NestedMap(e.Object, "status")
	if len(st) == 0 {
		return nil
	}
	return st
}

// canI asks the API server whether ServiceAccount ns/name may verb Secrets
// in secretsNS ("" for every namespace).
func canI(t *testing.T, admin *rest.Config, ns, name, verb, secretsNS string) bool {
	t.Helper()
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:" + ns + ":" + name,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: secretsNS, Verb: verb, Resource: "secrets",
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return sar.Status.Allowed
}

// serviceAccountToken asks the TokenRequest API for a token of ns/name, as
// the kubelet does for a pod.
func serviceAccountToken(t *testing.T, admin *rest.Config, ns, name string) string {
	t.Helper()
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s (envtest's API server signs ServiceAccount tokens): %v", ns, name, err)
	}
	return tr.Status.Token
}

// tokenConfig is admin's server and CA with a bearer token instead of its
// client certificate.
func tokenConfig(admin *rest.Config, token string) *rest.Config {
	return &rest.Config{Host: admin.Host, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: admin.CAData}}
}

func writeTokenKubeconfig(t *testing.T, path string, admin *rest.Config, token string) {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: admin.Host, CertificateAuthorityData: admin.CAData}
	kc.AuthInfos["manager"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["manager"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "manager"}
	kc.CurrentContext = "manager"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
}

// adminConfig is the rest.Config of the envtest client c was made from.
func adminConfig(t *testing.T, c client.Client) *rest.Config {
	t.Helper()
	cfg, ok := adminConfigs.Load(c)
	if !ok {
		t.Fatal("no rest.Config recorded for the API server's client")
	}
	return cfg.(*rest.Config)
}

// adminConfigs maps the clients startAPIServer returns to their config.
var adminConfigs sync.Map

// syncBuffer is a bytes.Buffer safe for a process' output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// checkGatewayElsewhere: an EHRIntegration in ns whose route attaches to
// a Gateway in gwNS, a namespace the manager does not watch (the platform's
// edge), is reconciled to RoutePending (no Gateway controller runs here):
// the manager read the Gateway with the chart's RBAC, in either mode.
func checkGatewayElsewhere(t *testing.T, ctx context.Context, c client.Client, ns, gwNS string, mgr *manager) {
	t.Helper()
	ensureNamespace(t, ctx, c, gwNS)
	objs, err := decodeObjects([]byte(fmt.Sprintf(`
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: %[2]s}
spec:
  gatewayClassName: edge
  listeners:
  - name: routed
    hostname: routed.example.test
    port: 8443
    protocol: HTTPS
    tls: {mode: Terminate, certificateRefs: [{name: routed-tls}]}
    allowedRoutes: {namespaces: {from: All}}
---
apiVersion: ehr.insighthealth.io/v1alpha1
kind: EHRIntegration
metadata: {name: routed, namespace: %[1]s}
spec:
  ehr: routed-%[1]s
  credentialsSecretRef: {name: nexus-webhook}
  database:
    secretRef: {name: appointments-db, key: uri}
  gateway:
    parentRefs: [{name: edge, namespace: %[2]s}]
    hostnames: [routed.example.test]
`, ns, gwNS)))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("creating %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	waitManager(t, mgr, "RoutePending on the EHRIntegration routed to Gateway "+gwNS+"/edge", func() []string {
		var reasons []string
		conds, _ := statusOf(t, ctx, c, ns, "routed")["conditions"].([]any)
		for _, ci := range conds {
			cm, _ := ci.(map[string]any)
			if cm["type"] == "RouteAccepted" && cm["reason"] == "RoutePending" {
				return nil
			}
			reasons = append(reasons, fmt.Sprint(cm["type"], "=", cm["reason"]))
		}
		return append(reasons, "no RouteAccepted=RoutePending")
	})
}

// checkIngressClass exposes a receiver in ns by an Ingress of IngressClass
// class, which does not exist yet: the manager reads IngressClasses
// (cluster-scoped, so granted by a ClusterRole in both modes) and says
// IngressClassNotFound, then, once the class is made, watches it and
// clears the problem.
func checkIngressClass(t *testing.T, ctx context.Context, c client.Client, ns, class string, mgr *manager) {
	t.Helper()
	objs, err := decodeObjects([]byte(fmt.Sprintf(`
apiVersion: v1
kind: Secret
metadata: {name: exposed-tls, namespace: %[1]s}
type: kubernetes.io/tls
stringData: {tls.crt: certificate, tls.key: key}
---
apiVersion: ehr.insighthealth.io/v1alpha1
kind: EHRIntegration
metadata: {name: exposed, namespace: %[1]s}
spec:
  ehr: exposed-%[1]s
  credentialsSecretRef: {name: nexus-webhook}
  database:
    secretRef: {name: appointments-db, key: uri}
  ingress: {host: exposed.example.test, className: %[2]s, tlsSecretName: exposed-tls}
`, ns, class)))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("creating %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	waitDegraded(t, ctx, c, ns, "exposed", "IngressClassNotFound", mgr)
	ic := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
		"metadata": map[string]any{"name": class}, "spec": map[string]any{"controller": "example.com/edge"}}}
	if err := c.Create(ctx, ic); err != nil {
		t.Fatalf("creating IngressClass %s: %v", class, err)
	}
	waitDegraded(t, ctx, c, ns, "exposed", "Reconciled", mgr)
}

// waitDegraded waits until EHRIntegration name in ns has a Degraded
// condition of reason.
func waitDegraded(t *testing.T, ctx context.Context, c client.Client, ns, name, reason string, mgr *manager) {
	t.Helper()
	waitManager(t, mgr, "Degraded="+reason+" on EHRIntegration "+ns+"/"+name, func() []string {
		var reasons []string
		conds, _ := statusOf(t, ctx, c, ns, name)["conditions"].([]any)
		for _, ci := range conds {
			cm, _ := ci.(map[string]any)
			if cm["type"] == "Degraded" && cm["reason"] == reason {
				return nil
			}
			reasons = append(reasons, fmt.Sprint(cm["type"], "=", cm["reason"]))
		}
		return append(reasons, "no Degraded="+reason)
	})
}
