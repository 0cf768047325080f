package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	uberzap "go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// The envtest suite: a real kube-apiserver and etcd with the generated CRD,
// and a manager running the real reconciler. Tests act through their own
// client and assert on what the API server stores. envtest runs no other
// controllers: no pods, no garbage collector, no Deployment status unless a
// test writes it.

const (
	// testSyncPeriod is the manager's resync period: short, so the idle test
	// sees resyncs happen.
	testSyncPeriod = 2 * time.Second
	testImage      = "registry.example.com/ehr-operator:test"
	// testDatabasePollInterval: short, so DatabaseReachable follows the
	// fake receiver quickly.
	testDatabasePollInterval = 300 * time.Millisecond
)

// testWorkers is the manager's MaxConcurrentReconciles: the manager's
// default, or TEST_WORKERS, to compare worker counts in the scale benchmark.
var testWorkers = func() int {
	if n, err := strconv.Atoi(os.Getenv("TEST_WORKERS")); err == nil && n > 0 {
		return n
	}
	return 8
}()

var (
	suiteOnce sync.Once
	suiteErr  error
	suite     struct {
		env    *envtest.Environment
		cfg    *rest.Config
		client client.Client
		scheme *runtime.Scheme
		writes *writeCounter
		// reconciles records when each request was last reconciled.
		reconciles *reconcileLog
		stopMgr    context.CancelFunc
		mgrDone    chan error
		// reconciler is the manager's, for tests of its watches' mappings.
		reconciler *EHRIntegrationReconciler
		// dbz answers the reconciler's GET /dbz for every pod: envtest
		// runs none, so a test's pod points at 127.0.0.1 and this server.
		dbz *fakeDBZ
	}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if suite.stopMgr != nil {
		logLevel.SetLevel(zapcore.FatalLevel)
		suite.stopMgr()
		if err := <-suite.mgrDone; err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}
	if suite.env != nil {
		if err := suite.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}
	os.Exit(code)
}

// startSuite starts envtest and the manager once for every test that needs
// them; pure tests of this package run without.
func startSuite(t testing.TB) {
	t.Helper()
	suiteOnce.Do(func() { suiteErr = setupSuite() })
	if suiteErr != nil {
		t.Fatal(suiteErr)
	}
}

func setupSuite() error {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return fmt.Errorf("KUBEBUILDER_ASSETS is not set: the controller tests need kube-apiserver and etcd; " +
			"run `make test`, or `make setup-envtest` and then " +
			"KUBEBUILDER_ASSETS=$HOME/.local/share/kubebuilder-envtest/k8s/1.37.2-linux-amd64 go test ./controllers/")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return fmt.Errorf("KUBEBUILDER_ASSETS=%s has no %s: run `make setup-envtest`", assets, b)
		}
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(logLevel)))

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
	utilruntime.Must(gwv1.Install(scheme))
	// The Gateway API's CRDs are not installed here: the manager must start
	// without them, and TestGatewayAPI installs them while it runs.
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	// envtest's default, a /24, has room for 254 Services; the scale
	// benchmark makes 1,000.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.0.0.0/16")
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("while starting envtest from %s: %w", assets, err)
	}
	suite.env, suite.cfg, suite.scheme = env, cfg, scheme
	if suite.client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return fmt.Errorf("while creating the test client: %w", err)
	}

	if err := createIngressClasses(); err != nil {
		return err
	}

	// The manager runs as a user holding only the generated ClusterRole
	// (config/rbac/role.yaml), so a missing permission fails the tests.
	mcfg, err := managerConfig(env)
	if err != nil {
		return err
	}
	// The manager's requests go through a counter, to see its writes.
	suite.writes = &writeCounter{}
	mcfg.QPS = -1 // as ctrl.GetConfig does: the API server's fairness, no client-side limit
	mcfg.WrapTransport = suite.writes.wrap
	sync := testSyncPeriod
	mgr, err := ctrl.NewManager(mcfg, ctrl.Options{
		Scheme:  scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   cache.Options{SyncPeriod: &sync},
	})
	if err != nil {
		return fmt.Errorf("while creating the manager: %w", err)
	}
	suite.dbz = newFakeDBZ()
	netpol, err := loadTestNetworkPolicy()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &EHRIntegrationReconciler{
		Client:                  mgr.GetClient(),
		APIReader:               mgr.GetAPIReader(),
		Recorder:                mgr.GetEventRecorder("ehr-operator"),
		ReceiverImage:           testImage,
		MaxConcurrentReconciles: testWorkers,
		DBZPort:                 suite.dbz.port,
		DatabasePollInterval:    testDatabasePollInterval,
		NetworkPolicy:           netpol,
		// The tests' Ingresses are mostly plain HTTP; the default, false,
		// has TestInsecureHTTPForbidden.
		AllowInsecureHTTP: true,
	}
	suite.reconciler = r
	suite.reconciles = &reconcileLog{}
	if err := r.setupWithManager(ctx, mgr, suite.reconciles.wrap(r)); err != nil {
		cancel()
		return fmt.Errorf("while setting up the reconciler: %w", err)
	}
	suite.stopMgr = cancel
	suite.mgrDone = make(chan error, 1)
	go func() { suite.mgrDone <- mgr.Start(ctx) }()
	return waitForController()
}

// IngressClasses every test may use: an Ingress is served (Ready) only
// when its class exists, or, without className, when a class is the
// cluster's default.
const (
	// testIngressClass is the class tests name in spec.ingress.className.
	testIngressClass = "nginx"
	// testDefaultIngressClass is the cluster's default class.
	testDefaultIngressClass = "suite-default"
)

func createIngressClasses() error {
	for _, ic := range []*networkingv1.IngressClass{
		{ObjectMeta: metav1.ObjectMeta{Name: testIngressClass}, Spec: networkingv1.IngressClassSpec{Controller: "example.com/nginx"}},
		{ObjectMeta: metav1.ObjectMeta{Name: testDefaultIngressClass,
			Annotations: map[string]string{networkingv1.AnnotationIsDefaultIngressClass: "true"}},
			Spec: networkingv1.IngressClassSpec{Controller: "example.com/edge"}},
	} {
		if err := suite.client.Create(context.Background(), ic); err != nil {
			return fmt.Errorf("while creating IngressClass %s: %w", ic.Name, err)
		}
	}
	return nil
}

// managerConfig binds the generated manager ClusterRole to a new user and
// returns that user's config.
func managerConfig(env *envtest.Environment) (*rest.Config, error) {
	const user = "ehr-operator-manager"
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	if err != nil {
		return nil, fmt.Errorf("while reading the generated ClusterRole (run `make manifests`): %w", err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(b, &role); err != nil {
		return nil, fmt.Errorf("while reading config/rbac/role.yaml: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	c := context.Background()
	for _, obj := range []client.Object{&role, binding} {
		if err := suite.client.Create(c, obj); err != nil {
			return nil, fmt.Errorf("while creating %T %s: %w", obj, obj.GetName(), err)
		}
	}
	u, err := env.AddUser(envtest.User{Name: user}, nil)
	if err != nil {
		return nil, fmt.Errorf("while adding the manager's user: %w", err)
	}
	return rest.CopyConfig(u.Config()), nil
}

// waitForController returns once the reconciler has written a status, so
// tests start (and the manager stops) with its caches synced.
func waitForController() error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "suite-probe"}}
	probe := &v1alpha1.EHRIntegration{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "probe"},
		Spec: v1alpha1.EHRIntegrationSpec{EHR: "probe", CredentialsSecretRef: v1alpha1.SecretReference{Name: "none"},
			Database: v1alpha1.DatabaseSpec{SecretRef: v1alpha1.SecretKeyReference{Name: "none"}}},
	}
	c := context.Background()
	if err := suite.client.Create(c, ns); err != nil {
		return fmt.Errorf("while creating the probe namespace: %w", err)
	}
	if err := suite.client.Create(c, probe); err != nil {
		return fmt.Errorf("while creating the probe EHRIntegration: %w", err)
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if err := suite.client.Get(c, client.ObjectKeyFromObject(probe), probe); err == nil && len(probe.Status.Conditions) > 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("the reconciler wrote no status within a minute of the manager's start")
}

// logLevel: errors only, unless TEST_LOG=1 asks for everything. Raised
// to silence the "context canceled" errors of reconciles cut by the stop.
var logLevel = func() uberzap.AtomicLevel {
	if os.Getenv("TEST_LOG") != "" {
		return uberzap.NewAtomicLevelAt(zapcore.DebugLevel)
	}
	return uberzap.NewAtomicLevelAt(zapcore.ErrorLevel)
}()

// writeCounter counts the requests that change something (not GET, LIST or
// WATCH), by method and resource, and the reads.
type writeCounter struct {
	mu    sync.Mutex
	total int
	by    map[string]int
	// reads counts GETs and LISTs (not watches).
	reads int
	// gatewayAPIReads counts the GETs and LISTs under the Gateway API's
	// group, discovery included.
	gatewayAPIReads int
}

func (w *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		w.mu.Lock()
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			if w.by == nil {
				w.by = map[string]int{}
			}
			w.total++
			w.by[req.Method+" "+resourceOf(req.URL.Path)]++
		} else if req.URL.Query().Get("watch") != "true" {
			w.reads++
			if strings.HasPrefix(req.URL.Path, "/apis/gateway.networking.k8s.io") {
				w.gatewayAPIReads++
			}
		}
		w.mu.Unlock()
		return rt.RoundTrip(req)
	})
}

// snapshot returns the total and a readable breakdown.
func (w *writeCounter) snapshot() (int, map[string]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	by := make(map[string]int, len(w.by))
	for k, v := range w.by {
		by[k] = v
	}
	return w.total, by
}

// settle waits until no write has been made for quiet, at most ten times
// quiet: a reconcile that read the cache just before the last change may
// still write the same status once, later on a loaded machine, and a test
// that counts the writes of an idle manager must not count that one.
func (w *writeCounter) settle(quiet time.Duration) {
	for range 10 {
		n, _ := w.snapshot()
		time.Sleep(quiet)
		if m, _ := w.snapshot(); m == n {
			return
		}
	}
}

// diffCounts is after minus before, without zero entries, as "k=v" lines.
func diffCounts(before, after map[string]int) string {
	var out []string
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out = append(out, fmt.Sprintf("%s=%d", k, d))
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// resourceOf turns /apis/apps/v1/namespaces/x/deployments/y/status into
// deployments/status.
func resourceOf(path string) string {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	for i, s := range seg {
		if s == "namespaces" && i+2 < len(seg) {
			rest := seg[i+2:]
			if len(rest) >= 3 {
				return rest[0] + "/" + rest[2]
			}
			return rest[0]
		}
	}
	return path
}

// reconcileLog records, for each request, when its latest finished
// reconcile began, and counts reconciles: enough to wait for a full pass.
type reconcileLog struct {
	mu    sync.Mutex
	began map[types.NamespacedName]time.Time
	count int
	// busy is the time spent in reconciles, summed over the workers.
	busy time.Duration
}

func (l *reconcileLog) wrap(r reconcile.Reconciler) reconcile.Reconciler {
	return reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
		start := time.Now()
		res, err := r.Reconcile(ctx, req)
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.began == nil {
			l.began = map[types.NamespacedName]time.Time{}
		}
		l.began[req.NamespacedName] = start
		l.count++
		l.busy += time.Since(start)
		return res, err
	})
}

// total is the number of reconciles finished so far, and the time they took.
func (l *reconcileLog) total() (int, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.count, l.busy
}

// notSince returns the first of names in ns whose latest reconcile began
// before t, or "" when every one was reconciled by a pass begun after t.
func (l *reconcileLog) notSince(t time.Time, ns string, names []string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range names {
		if !l.began[types.NamespacedName{Namespace: ns, Name: n}].After(t) {
			return n
		}
	}
	return ""
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// newNamespace makes a namespace of its own for one test.
func newNamespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"}}
	if err := suite.client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating a namespace: %v", err)
	}
	// spec.ehr is unique across namespaces: the next test's "nexus" must
	// not be a duplicate of this one's (envtest deletes no namespace).
	t.Cleanup(func() {
		if err := suite.client.DeleteAllOf(context.Background(), &v1alpha1.EHRIntegration{}, client.InNamespace(ns.Name)); err != nil {
			t.Errorf("deleting the EHRIntegrations of %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// eventually calls f until it returns nil, failing the test with f's last
// error after timeout.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	eventuallyEvery(t, timeout, 50*time.Millisecond, what, f)
}

// eventuallyEvery is eventually calling f every interval (the scale
// benchmark polls less often, so its own reads weigh less on the API server).
func eventuallyEvery(t testing.TB, timeout, interval time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %s: %v", timeout, what, err)
		}
		time.Sleep(interval)
	}
}
