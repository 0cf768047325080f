package controllers

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/receiver"
)

// fakeDBZ stands in for the receivers' metrics port in the envtest suite:
// it answers GET /dbz with whatever the test set.
type fakeDBZ struct {
	port int
	mu   sync.Mutex
	code int
	body string
}

func newFakeDBZ() *fakeDBZ {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	f := &fakeDBZ{port: ln.Addr().(*net.TCPAddr).Port, code: http.StatusServiceUnavailable}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /dbz", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		code, body := f.code, f.body
		f.mu.Unlock()
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	})
	go func() { _ = http.Serve(ln, mux) }() // lives as long as the test binary
	return f
}

func (f *fakeDBZ) set(code int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.code, f.body = code, body
}

func (f *fakeDBZ) report(state string, since time.Time) {
	f.set(http.StatusOK, fmt.Sprintf(`{"database":%q,"since":%q,"migrated":true}`, state, since.UTC().Format(time.RFC3339)))
}

func (w *writeCounter) readCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.reads
}

func TestDatabaseCondition(t *testing.T) {
	t1 := "2026-03-01T10:00:00Z"
	t2 := "2026-03-01T09:00:00Z"
	rep := func(state, since string) dbReport { return dbReport{Database: state, Since: since, Migrated: true} }
	for _, tc := range []struct {
		name    string
		obs     dbObservation
		status  metav1.ConditionStatus
		reason  string
		message string
	}{
		{"all reachable", dbObservation{pods: 2, reports: []dbReport{rep("reachable", t1), rep("reachable", t2)}},
			metav1.ConditionTrue, v1alpha1.ReasonDatabaseReachable, "reach the database"},
		{"one silent, the other reachable", dbObservation{pods: 2, reports: []dbReport{rep("reachable", t1)}},
			metav1.ConditionTrue, v1alpha1.ReasonDatabaseReachable, "reach the database"},
		{"one starting, the other reachable", dbObservation{pods: 2, reports: []dbReport{rep("unknown", t1), rep("reachable", t1)}},
			metav1.ConditionTrue, v1alpha1.ReasonDatabaseReachable, "reach the database"},
		{"two of three down, the earliest since", dbObservation{pods: 3,
			reports: []dbReport{rep("unreachable", t1), rep("reachable", t1), rep("unreachable", t2)}},
			metav1.ConditionFalse, v1alpha1.ReasonDatabaseUnreachable, "2 of 3 receivers cannot reach the database since " + t2},
		{"the most common cause, the first of equals", dbObservation{pods: 5, reports: []dbReport{
			{Database: "unreachable", Since: t1, Cause: "connection refused"},
			{Database: "unreachable", Since: t1, Cause: "SQLSTATE 28P01 (invalid_password)"},
			{Database: "unreachable", Since: t1, Cause: "SQLSTATE 28P01 (invalid_password)"},
			{Database: "unreachable", Since: t1, Cause: "no answer in time"}, {Database: "unreachable", Since: t1, Cause: "connection refused"}}},
			metav1.ConditionFalse, v1alpha1.ReasonDatabaseUnreachable, "5 of 5 receivers cannot reach the database since " + t1 + ": SQLSTATE 28P01 (invalid_password)"},
		{"none answered", dbObservation{pods: 2},
			metav1.ConditionUnknown, v1alpha1.ReasonDatabaseStateUnknown, "none of the 2 running receivers answered GET /dbz on port 9090"},
		{"none has heard yet", dbObservation{pods: 1, reports: []dbReport{rep("unknown", t1)}},
			metav1.ConditionUnknown, v1alpha1.ReasonDatabaseStateUnknown, "not heard from the database yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, reason, msg := databaseCondition(&tc.obs)
			if s != tc.status || reason != tc.reason || !strings.Contains(msg, tc.message) {
				t.Errorf("got %s/%s %q, want %s/%s containing %q", s, reason, msg, tc.status, tc.reason, tc.message)
			}
		})
	}
}

// TestGetDBZFromTheReceiver reads the real receiver's /dbz: the operator
// and the receiver agree on the report's shape.
func TestGetDBZFromTheReceiver(t *testing.T) {
	srv, err := receiver.New(receiver.Config{
		EHR: "nexus", Location: time.UTC, APIKey: testAPIKey, Secret: []byte(testSecret),
		MaxBodyBytes: 4194304, MaxBatchSize: 1000, RequestsPerSecond: 50, Burst: 100,
		OnInvalid: receiver.Reject, Listen: ":8080", MetricsListen: ":9090",
	}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.MetricsHandler())
	defer ts.Close()
	// Not started: it has not heard from any database.
	rep, ok := getDBZ(t.Context(), dbzClient, ts.URL+"/dbz")
	if !ok || rep.Database != "unknown" || !rep.Migrated {
		t.Fatalf("/dbz = %+v (answered %t), want unknown and migrated", rep, ok)
	}
	if _, err := time.Parse(time.RFC3339, rep.Since); err != nil {
		t.Errorf("since %q: %v", rep.Since, err)
	}
	if _, ok := getDBZ(t.Context(), dbzClient, ts.URL+"/healthz"); ok {
		t.Error("a body that is no report counted as an answer")
	}
}

// runningPod makes a receiver pod of integration name that "runs" at
// 127.0.0.1, where the suite's fake /dbz listens.
func runningPod(t *testing.T, ns, name, pod string) *corev1.Pod {
	t.Helper()
	p := startedPod(t, ns, name, pod)
	markRunning(t, p)
	return p
}

// startedPod makes a receiver pod of integration name as its ReplicaSet
// would start it, not running yet (pulling its image, say).
func startedPod(t *testing.T, ns, name, pod string) *corev1.Pod {
	t.Helper()
	// Started from the Deployment's current template, as the ReplicaSet would.
	var d appsv1.Deployment
	child(t, ns, name, &d)
	p := replicaSetPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod,
			Labels:      map[string]string{labelName: receiverAppName, labelInstance: name},
			Annotations: d.Spec.Template.Annotations},
		Spec: corev1.PodSpec{AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "receiver", Image: testImage}}},
	}, name)
	create(t, p)
	return p
}

// replicaSetPod makes p a pod of the ReplicaSet of integration's
// Deployment, as the Deployment controller (not running on envtest) would:
// the pod-template-hash label and the ReplicaSet as controller.
func replicaSetPod(p *corev1.Pod, integration string) *corev1.Pod {
	const hash = "5f4d8b7c9"
	if p.Labels == nil {
		p.Labels = map[string]string{}
	}
	p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet",
		Name: integration + "-receiver-" + hash, UID: "4b6c2f0e-rs", Controller: ptr.To(true)}}
	return p
}

// markRunning gives p the status of a pod running at 127.0.0.1.
func markRunning(t *testing.T, p *corev1.Pod) {
	t.Helper()
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}}}
	if err := suite.client.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}
}

// waitDatabaseCondition waits until DatabaseReachable has status and reason.
func waitDatabaseCondition(t *testing.T, ns, name string, status metav1.ConditionStatus, reason string) *metav1.Condition {
	t.Helper()
	var c *metav1.Condition
	eventually(t, waitFor, fmt.Sprintf("DatabaseReachable=%s/%s", status, reason), func() error {
		var e v1alpha1.EHRIntegration
		if err := suite.client.Get(ctx, key(ns, name), &e); err != nil {
			return err
		}
		c = meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionDatabaseReachable)
		if c == nil || c.Status != status || c.Reason != reason {
			return fmt.Errorf("condition %+v", c)
		}
		return nil
	})
	return c
}

func TestDatabaseReachableFollowsTheReceivers(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Replicas = ptr.To[int32](1)
	suite.dbz.report("reachable", time.Now())
	create(t, credsSecret(ns), dbSecret(ns), e)
	child(t, ns, "nexus", &appsv1.Deployment{})
	got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionDatabaseReachable); c != nil {
		t.Errorf("DatabaseReachable %+v without a running pod, want none", c)
	}

	// The Deployment turning available is what makes the operator look.
	pod := runningPod(t, ns, "nexus", "nexus-receiver-1")
	t.Cleanup(func() {
		// Leave nothing that polls or writes for the tests after this one.
		_ = suite.client.Delete(ctx, e)
		_ = suite.client.Delete(ctx, pod)
		suite.dbz.set(http.StatusServiceUnavailable, "")
	})
	// A pod with the receiver's labels that no ReplicaSet of its
	// Deployment started (a debugging copy) is not one of its receivers.
	stray := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nexus-debug", Labels: pod.Labels},
		Spec: corev1.PodSpec{AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{Name: "receiver", Image: testImage}}},
	}
	create(t, stray)
	markRunning(t, stray)
	t.Cleanup(func() { _ = suite.client.Delete(ctx, stray) })
	markAvailable(t, ns, "nexus")
	waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	waitDatabaseCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonDatabaseReachable)

	// An outage shows within a poll interval, with since when; nothing
	// else tells the operator, so this is its own requeue at work.
	since := time.Now().Add(-time.Minute).Truncate(time.Second)
	suite.dbz.report("unreachable", since)
	c := waitDatabaseCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDatabaseUnreachable)
	want := "1 of 1 receivers cannot reach the database since " + since.UTC().Format(time.RFC3339)
	if c.Message != want {
		t.Errorf("message %q, want %q", c.Message, want)
	}

	// While the outage stands, polling writes nothing, once the
	// transition's own writes have landed.
	suite.writes.settle(testDatabasePollInterval)
	var before v1alpha1.EHRIntegration
	if err := suite.client.Get(ctx, key(ns, "nexus"), &before); err != nil {
		t.Fatal(err)
	}
	total0, by0 := suite.writes.snapshot()
	reads0 := suite.writes.readCount()
	time.Sleep(5 * testDatabasePollInterval)
	total1, by1 := suite.writes.snapshot()
	if reads := suite.writes.readCount() - reads0; reads < 3 {
		t.Errorf("%d reads over 5 poll intervals: the operator did not poll", reads)
	}
	var after v1alpha1.EHRIntegration
	if err := suite.client.Get(ctx, key(ns, "nexus"), &after); err != nil {
		t.Fatal(err)
	}
	if total1 != total0 || after.ResourceVersion != before.ResourceVersion {
		t.Errorf("%d writes over 5 polls of a standing outage (%s), resourceVersion %s -> %s",
			total1-total0, diffCounts(by0, by1), before.ResourceVersion, after.ResourceVersion)
	}

	// A receiver that does not answer (a NetworkPolicy, say): unknown.
	suite.dbz.set(http.StatusNotFound, "404 page not found")
	c = waitDatabaseCondition(t, ns, "nexus", metav1.ConditionUnknown, v1alpha1.ReasonDatabaseStateUnknown)
	if !strings.Contains(c.Message, "none of the 1 running receivers answered") {
		t.Errorf("message %q", c.Message)
	}

	suite.dbz.report("reachable", time.Now())
	waitDatabaseCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonDatabaseReachable)

	// Suspended: no receiver to ask, no verdict left standing.
	update(t, &v1alpha1.EHRIntegration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nexus"}},
		func(e *v1alpha1.EHRIntegration) { e.Spec.Suspend = true })
	got = waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonSuspended)
	if c := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionDatabaseReachable); c != nil {
		t.Errorf("DatabaseReachable %+v while suspended, want none", c)
	}
}

// TestDatabaseReachableWhilePodsNeverTurnReady: receiver pods that start
// after the operator last looked, and never turn ready (a database that
// refuses their password keeps them so), change nothing in their
// Deployment, and the operator watches no pods. It must look again by
// itself, or DatabaseReachable, the one condition that says why, would not
// show until the rollout's progress deadline (10 min) while onboarding.md's
// `kubectl wait --for=condition=DatabaseReachable --timeout=2m` timed out.
func TestDatabaseReachableWhilePodsNeverTurnReady(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Replicas = ptr.To[int32](1)
	create(t, credsSecret(ns), dbSecret(ns), e)
	child(t, ns, "nexus", &appsv1.Deployment{})
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	// Let the passes that creating the children caused end. The suite's
	// resync (testSyncPeriod) would look again in a few seconds; a
	// manager's default resync is 10 h, so the pass itself must ask for
	// the next look while the pods it wants do not run yet.
	suite.writes.settle(testDatabasePollInterval)
	pass := func() time.Duration {
		t.Helper()
		res, err := suite.reconciler.Reconcile(ctx, ctrl.Request{NamespacedName: key(ns, "nexus")})
		if err != nil {
			t.Fatal(err)
		}
		return res.RequeueAfter
	}
	// No pod at all: the ReplicaSet's (or its failure to make them) show
	// in the Deployment's status, which is watched. Looking again would
	// cost a pod list every poll for every integration of a cluster that
	// runs none (envtest's 1,000 of the scale benchmark).
	if d := pass(); d != 0 {
		t.Errorf("a pass while the Deployment has started no pod asks to look again after %s, want no look", d)
	}
	pod := startedPod(t, ns, "nexus", "nexus-receiver-1")
	if d := pass(); d != testDatabasePollInterval {
		t.Errorf("a pass while no receiver pod runs asks to look again after %s, want the database poll interval %s",
			d, testDatabasePollInterval)
	}

	since := time.Now().Add(-time.Minute).Truncate(time.Second)
	suite.dbz.report("unreachable", since)
	markRunning(t, pod)
	t.Cleanup(func() {
		_ = suite.client.Delete(ctx, e)
		_ = suite.client.Delete(ctx, pod)
		suite.dbz.set(http.StatusServiceUnavailable, "")
	})
	// The Deployment is not marked available: its pod runs, never ready.
	c := waitDatabaseCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDatabaseUnreachable)
	if want := "1 of 1 receivers cannot reach the database"; !strings.Contains(c.Message, want) {
		t.Errorf("message %q, want %q", c.Message, want)
	}
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
}

func TestStartedBy(t *testing.T) {
	pod := func(name, hash, kind, owner string, controller bool) corev1.Pod {
		p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
		if hash != "" {
			p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] = hash
		}
		if owner != "" {
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: owner, UID: "u", Controller: ptr.To(controller)}}
		}
		return p
	}
	pods := []corev1.Pod{
		pod("current", "h1", "ReplicaSet", "nexus-receiver-h1", true),
		pod("previous", "h0", "ReplicaSet", "nexus-receiver-h0", true),
		pod("no owner", "h1", "", "", false),
		pod("no hash", "", "ReplicaSet", "nexus-receiver-h1", true),
		pod("hash of another ReplicaSet", "h2", "ReplicaSet", "nexus-receiver-h1", true),
		pod("another Deployment's", "h1", "ReplicaSet", "nexus-receiver-extra-receiver-h1", true),
		pod("a Job's", "h1", "Job", "nexus-receiver-h1", true),
		pod("not the controller", "h1", "ReplicaSet", "nexus-receiver-h1", false),
	}
	var got []string
	for _, p := range startedBy(pods, "nexus-receiver") {
		got = append(got, p.Name)
	}
	if want := []string{"current", "previous"}; !slices.Equal(got, want) {
		t.Errorf("startedBy kept %q, want %q", got, want)
	}
}
