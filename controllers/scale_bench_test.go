package controllers

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// scaleChildKinds are the children the operator makes for each
// EHRIntegration of the benchmark, in the order it applies them: it has an
// Ingress, the default replicas (so a PDB), and the suite turns
// NetworkPolicies on.
var scaleChildKinds = []schema.GroupVersionKind{
	{Version: "v1", Kind: "ServiceAccount"},
	{Group: "networking.k8s.io", Version: "v1", Kind: "NetworkPolicy"},
	{Group: "apps", Version: "v1", Kind: "Deployment"},
	{Version: "v1", Kind: "Service"},
	{Group: "networking.k8s.io", Version: "v1", Kind: "Ingress"},
	{Group: "policy", Version: "v1", Kind: "PodDisruptionBudget"},
}

// BenchmarkReconcileScale measures, on envtest, how long the manager takes
// to make every child of n EHRIntegrations (len(scaleChildKinds) each) and
// to write their statuses, then checks one idle pass over all of them:
// its requests, and that no object's resourceVersion moved. Not run by
// `make test`; run one size per process, so that it starts on an empty
// API server:
//
//	KUBEBUILDER_ASSETS=$HOME/.local/share/kubebuilder-envtest/k8s/1.37.2-linux-amd64 \
//	  go test ./controllers/ -run '^$' -bench 'ReconcileScale/1000$' -benchtime 1x -timeout 30m -v
func BenchmarkReconcileScale(b *testing.B) {
	for _, n := range []int{200, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) { benchmarkReconcile(b, n) })
	}
}

func benchmarkReconcile(b *testing.B, n int) {
	startSuite(b)
	for i := 0; i < b.N; i++ {
		ns := newNamespace(b)
		// The Ingresses' TLS Secret too: without it every status is
		// TLSSecretNotFound, not the last one envtest lets them reach.
		create(b, credsSecret(ns), dbSecret(ns), tlsSecret(ns, "ehr-tls"))
		load0 := loadAverage(b)
		cpu0 := processCPU(b)
		w0, by0 := suite.writes.snapshot()
		rc0, busy0 := suite.reconciles.total()
		names := make([]string, n)
		start := time.Now()
		for j := range n {
			names[j] = fmt.Sprintf("ehr-%04d", j)
			e := integration(ns, names[j], fmt.Sprintf("%s-%04d", ns, j)) // spec.ehr is unique cluster-wide
			e.Spec.Ingress = &v1alpha1.IngressSpec{Host: names[j] + ".example.com", TLSSecretName: "ehr-tls"}
			create(b, e)
		}
		created := time.Since(start)

		// Polled every 250 ms, not faster: listing thousands of objects
		// costs the API server that the manager shares.
		var childrenAt, statusAt time.Duration
		eventuallyEvery(b, max(5*time.Minute, time.Duration(n)*300*time.Millisecond), 250*time.Millisecond, "every child and status", func() error {
			if childrenAt == 0 {
				// The last kind made first: until it is complete, one list.
				for _, gvk := range slices.Backward(scaleChildKinds) {
					if got := len(listMetadata(b, ns, gvk)); got < n {
						return fmt.Errorf("%d of %d %ss", got, n, gvk.Kind)
					}
				}
				childrenAt = time.Since(start)
			}
			var list v1alpha1.EHRIntegrationList
			if err := suite.client.List(ctx, &list, client.InNamespace(ns)); err != nil {
				return err
			}
			for _, e := range list.Items {
				if c := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady); c == nil ||
					c.Reason != v1alpha1.ReasonDeploymentUnavailable || e.Status.ObservedGeneration != e.Generation {
					return fmt.Errorf("%s has no status yet", e.Name)
				}
			}
			statusAt = time.Since(start)
			return nil
		})
		cpu1 := processCPU(b)
		load1 := loadAverage(b)
		w1, by1 := suite.writes.snapshot()
		rc1, busy1 := suite.reconciles.total()

		// Idle: one full pass lets what the last events queued settle; the
		// next is measured.
		awaitPass(b, ns, names, time.Now())
		before := resourceVersions(b, ns)
		w2, by2 := suite.writes.snapshot()
		r2 := suite.writes.readCount()
		rc2, _ := suite.reconciles.total()
		cpu2, passStart := processCPU(b), time.Now()
		awaitPass(b, ns, names, passStart)
		pass, cpu3 := time.Since(passStart), processCPU(b)
		w3, by3 := suite.writes.snapshot()
		r3 := suite.writes.readCount()
		rc3, _ := suite.reconciles.total()
		changed := changedVersions(before, resourceVersions(b, ns))

		children := len(scaleChildKinds) * n
		b.Logf("load average before %s, after %s (1, 5, 15 min)", load0, load1)
		b.Logf("created %d EHRIntegrations in %v; all %d children (%d each: %s) after %v; all statuses after %v",
			n, created.Round(time.Millisecond), children, len(scaleChildKinds), kindNames(), childrenAt.Round(time.Millisecond),
			statusAt.Round(time.Millisecond))
		b.Logf("writes to get there: %d (%s); %d reconciles, %v each on average, the %d workers busy %.0f%% of the time",
			w1-w0, diffCounts(by0, by1), rc1-rc0, ((busy1 - busy0) / time.Duration(max(rc1-rc0, 1))).Round(time.Millisecond),
			testWorkers, 100*(busy1-busy0).Seconds()/(float64(testWorkers)*statusAt.Seconds()))
		b.Logf("CPU to get there: %s", cpuDiff(cpu0, cpu1))
		b.Logf("idle pass over all %d (resync every %v), done %v after it began: %d writes (%s), %d reads, %d reconciles, %d of %d objects changed",
			n, testSyncPeriod, pass.Round(time.Millisecond), w3-w2, diffCounts(by2, by3), r3-r2, rc3-rc2, len(changed), len(before))
		b.Logf("CPU of the idle pass: %s", cpuDiff(cpu2, cpu3))
		b.ReportMetric(childrenAt.Seconds(), "s-to-children")
		b.ReportMetric(statusAt.Seconds(), "s-to-status")
		b.ReportMetric(float64(w1-w0)/float64(n), "writes/integration")
		b.ReportMetric(float64(rc1-rc0)/float64(n), "reconciles/integration")
		b.ReportMetric(float64(w3-w2), "idle-writes")
		b.ReportMetric(float64(len(changed)), "idle-changed")
		if len(changed) > 0 {
			b.Fatalf("%d objects changed on an idle pass, e.g. %s", len(changed), strings.Join(changed[:min(10, len(changed))], ", "))
		}
	}
}

// awaitPass waits until each of names in ns was reconciled by a pass that
// began after t: the next resync has reached every one.
func awaitPass(b *testing.B, ns string, names []string, t time.Time) {
	b.Helper()
	eventuallyEvery(b, 2*time.Minute, 100*time.Millisecond, "a full pass", func() error {
		if n := suite.reconciles.notSince(t, ns, names); n != "" {
			return fmt.Errorf("%s not reconciled since %v", n, t.Format(time.StampMilli))
		}
		return nil
	})
}

// resourceVersions maps kind/name to the resourceVersion of every
// EHRIntegration and child in ns.
func resourceVersions(b *testing.B, ns string) map[string]string {
	b.Helper()
	out := map[string]string{}
	kinds := append([]schema.GroupVersionKind{v1alpha1.GroupVersion.WithKind("EHRIntegration")}, scaleChildKinds...)
	for _, gvk := range kinds {
		for _, o := range listMetadata(b, ns, gvk) {
			out[gvk.Kind+"/"+o.Name] = o.ResourceVersion
		}
	}
	return out
}

// changedVersions lists, sorted, the objects of before whose
// resourceVersion differs in after or that are gone, and the new ones.
func changedVersions(before, after map[string]string) []string {
	var out []string
	for k, v := range before {
		if after[k] != v {
			out = append(out, k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// listMetadata lists the objects of gvk in ns, metadata only: cheaper for
// the API server than whole objects.
func listMetadata(b *testing.B, ns string, gvk schema.GroupVersionKind) []metav1.PartialObjectMetadata {
	b.Helper()
	var l metav1.PartialObjectMetadataList
	l.SetGroupVersionKind(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
	if err := suite.client.List(ctx, &l, client.InNamespace(ns)); err != nil {
		b.Fatalf("listing %ss: %v", gvk.Kind, err)
	}
	return l.Items
}

func kindNames() string {
	var out []string
	for _, gvk := range scaleChildKinds {
		out = append(out, gvk.Kind)
	}
	return strings.Join(out, ", ")
}

// loadAverage is the machine's load average, as /proc/loadavg gives it:
// the benchmark shares the cores with whatever else runs.
func loadAverage(b *testing.B) string {
	b.Helper()
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		b.Fatalf("reading the load average: %v", err)
	}
	return strings.Join(strings.Fields(string(raw))[:3], " ")
}

// processCPU returns the CPU time (user + system) of this process (the
// manager and the benchmark's client) and of envtest's kube-apiserver and
// etcd, its children, from /proc.
func processCPU(b *testing.B) map[string]time.Duration {
	b.Helper()
	self := os.Getpid()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]time.Duration{}
	for _, path := range stats {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue // a process that ended meanwhile
		}
		s := string(raw)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(s[:open]))
		comm, f := s[open+1:end], strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		// After the command: state, ppid, ..., utime and stime (fields 14
		// and 15 of proc(5)), in clock ticks of 1/100 s (Linux's USER_HZ).
		ppid, _ := strconv.Atoi(f[1])
		utime, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		cpu := time.Duration(utime+stime) * 10 * time.Millisecond
		switch {
		case pid == self:
			out["test process"] = cpu
		case ppid == self && (comm == "kube-apiserver" || comm == "etcd"):
			out[comm] += cpu
		}
	}
	if len(out) != 3 {
		b.Fatalf("found the CPU time of %v, want the test process, kube-apiserver and etcd", out)
	}
	return out
}

// cpuDiff is after minus before, per process, and the sum.
func cpuDiff(before, after map[string]time.Duration) string {
	var sum time.Duration
	var out []string
	for _, k := range []string{"test process", "kube-apiserver", "etcd"} {
		d := after[k] - before[k]
		sum += d
		out = append(out, fmt.Sprintf("%s %.1f s", k, d.Seconds()))
	}
	return fmt.Sprintf("%s; together %.1f s", strings.Join(out, ", "), sum.Seconds())
}
