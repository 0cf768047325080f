package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// How the operator asks receivers about their database (GET /dbz on the
// metrics port): a pod that does not answer within dbzTimeout counts as
// silent; at most dbzParallel pods are asked at once, so a large
// integration's pass takes a few timeouts at worst.
const (
	dbzTimeout   = 2 * time.Second
	dbzParallel  = 8
	dbzBodyLimit = 4 << 10
	// DefaultDatabasePollInterval is how often an integration with running
	// pods is looked at again, so its DatabaseReachable follows outages.
	DefaultDatabasePollInterval = 30 * time.Second
)

// dbzClient talks to pod addresses directly: no proxy from the
// environment, no redirects followed.
var dbzClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1, IdleConnTimeout: DefaultDatabasePollInterval * 2},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// dbReport is a receiver's GET /dbz answer (receiver/dbstate.go).
type dbReport struct {
	Database string `json:"database"`
	Since    string `json:"since"`
	Migrated bool   `json:"migrated"`
	// Cause is why the receiver's last ping failed, in a few words with no
	// URL or value (store.Cause); absent from older receivers.
	Cause string `json:"cause,omitempty"`
}

// dbObservation is what the running receiver pods said of their database.
type dbObservation struct {
	// pods is the number of running pods asked.
	pods int
	// reports are the answers of those that answered.
	reports []dbReport
}

// receiverPods are all of e's receiver pods, terminating ones included.
// They are read from the API server, not the cache, so the manager does not
// cache every pod of the cluster for a request every poll interval.
func (r *EHRIntegrationReconciler) receiverPods(ctx context.Context, e *v1alpha1.EHRIntegration) ([]corev1.Pod, error) {
	var list corev1.PodList
	if err := r.APIReader.List(ctx, &list, client.InNamespace(e.Namespace), client.MatchingLabels(selectorLabels(e))); err != nil {
		return nil, fmt.Errorf("while listing the receiver pods of %s: %w", e.Name, err)
	}
	return startedBy(list.Items, childName(e)), nil
}

// startedBy keeps the pods of pods that a ReplicaSet of Deployment
// deployment started: the Deployment controller names its ReplicaSets
// <deployment>-<pod-template-hash> and labels their pods with the hash. A
// pod someone else made with the receiver's labels (a debugging copy, a
// test) would otherwise hold servedSecretVersions on its Secret versions
// and be asked for /dbz.
func startedBy(pods []corev1.Pod, deployment string) []corev1.Pod {
	var out []corev1.Pod
	for _, p := range pods {
		owner := metav1.GetControllerOf(&p)
		hash := p.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
		if owner != nil && owner.Kind == "ReplicaSet" && owner.APIVersion == appsv1.SchemeGroupVersion.String() &&
			hash != "" && owner.Name == deployment+"-"+hash {
			out = append(out, p)
		}
	}
	return out
}

// running are the pods of pods that run and have an address; a pod being
// deleted is draining and left out.
func running(pods []corev1.Pod) []corev1.Pod {
	var out []corev1.Pod
	for _, p := range pods {
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp.IsZero() {
			out = append(out, p)
		}
	}
	return out
}

// askDatabase asks each running pod of pods for its database's state,
// concurrently. It returns nil when none runs.
func (r *EHRIntegrationReconciler) askDatabase(ctx context.Context, pods []corev1.Pod) *dbObservation {
	pods = running(pods)
	if len(pods) == 0 {
		return nil
	}
	port := r.DBZPort
	if port == 0 {
		port = metricsPort
	}
	hc := r.HTTPClient
	if hc == nil {
		hc = dbzClient
	}
	obs := &dbObservation{pods: len(pods)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, dbzParallel)
	for _, p := range pods {
		url := "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port)) + "/dbz"
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if rep, ok := getDBZ(ctx, hc, url); ok {
				mu.Lock()
				obs.reports = append(obs.reports, rep)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return obs
}

// getDBZ fetches one /dbz report; false when the pod did not answer with
// one (not there yet, blocked by a NetworkPolicy, an older receiver).
func getDBZ(ctx context.Context, hc *http.Client, url string) (dbReport, bool) {
	ctx, cancel := context.WithTimeout(ctx, dbzTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return dbReport{}, false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return dbReport{}, false
	}
	defer func() { _ = resp.Body.Close() }()
	var rep dbReport
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, dbzBodyLimit)).Decode(&rep) != nil {
		return dbReport{}, false
	}
	switch rep.Database {
	case "reachable", "unreachable", "unknown":
		return rep, true
	}
	return dbReport{}, false
}

// databaseCondition turns the receivers' reports into DatabaseReachable.
// Its messages change only when the state does, so an unchanged outage
// writes no status.
func databaseCondition(o *dbObservation) (metav1.ConditionStatus, string, string) {
	var down, up int
	var earliest time.Time
	causes := map[string]int{}
	for _, rep := range o.reports {
		switch rep.Database {
		case "reachable":
			up++
		case "unreachable":
			down++
			if t, err := time.Parse(time.RFC3339, rep.Since); err == nil && (earliest.IsZero() || t.Before(earliest)) {
				earliest = t
			}
			if rep.Cause != "" {
				causes[clip(rep.Cause, 120)]++
			}
		}
	}
	switch {
	case down > 0:
		msg := fmt.Sprintf("%d of %d receivers cannot reach the database", down, o.pods)
		if !earliest.IsZero() {
			msg += " since " + earliest.UTC().Format(time.RFC3339)
		}
		if c := mostCommon(causes); c != "" {
			msg += ": " + c
		}
		return metav1.ConditionFalse, v1alpha1.ReasonDatabaseUnreachable, msg
	case up > 0:
		return metav1.ConditionTrue, v1alpha1.ReasonDatabaseReachable, "the receivers that answered reach the database"
	case len(o.reports) > 0:
		return metav1.ConditionUnknown, v1alpha1.ReasonDatabaseStateUnknown,
			"the receivers have not heard from the database yet"
	}
	return metav1.ConditionUnknown, v1alpha1.ReasonDatabaseStateUnknown,
		fmt.Sprintf("none of the %d running receivers answered GET /dbz on port %d", o.pods, metricsPort)
}

// mostCommon is the key of counts with the largest count, the first in
// order among equals, so the message is the same on every pass.
func mostCommon(counts map[string]int) string {
	best := ""
	for k, n := range counts {
		if n > counts[best] || n == counts[best] && (best == "" || k < best) {
			best = k
		}
	}
	return best
}
