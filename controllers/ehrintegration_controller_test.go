package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

const waitFor = 20 * time.Second

// Credentials of the test Secrets: MinCredentialBytes long.
const (
	testAPIKey = "test-api-key-0123456789abcdef0123"
	testSecret = "test-webhook-secret-0123456789abc"
)

var ctx = context.Background()

// integration is a valid EHRIntegration referencing the Secrets made by
// createSecrets.
func integration(ns, name, ehr string) *v1alpha1.EHRIntegration {
	return &v1alpha1.EHRIntegration{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.EHRIntegrationSpec{
			EHR:                  ehr,
			CredentialsSecretRef: v1alpha1.SecretReference{Name: "creds"},
			Database:             v1alpha1.DatabaseSpec{SecretRef: v1alpha1.SecretKeyReference{Name: "db"}},
		},
	}
}

func credsSecret(ns string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "creds"},
		Data: map[string][]byte{"api-key": []byte(testAPIKey), "webhook-secret": []byte(testSecret)}}
}

func dbSecret(ns string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db"},
		Data: map[string][]byte{"uri": []byte("postgres://app@db:5432/app"), "password": []byte("p")}}
}

// tlsSecret is a TLS Secret for an Ingress's spec.ingress.tlsSecretName:
// the keys an ingress controller reads (the API server does not parse them).
func tlsSecret(ns, name string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("certificate"), corev1.TLSPrivateKeyKey: []byte("key")}}
}

func create(t testing.TB, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := suite.client.Create(ctx, o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// update re-reads obj and applies f until the write does not conflict.
func update[T client.Object](t testing.TB, obj T, f func(T)) {
	t.Helper()
	eventually(t, waitFor, "updating "+obj.GetName(), func() error {
		if err := suite.client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			return err
		}
		f(obj)
		return suite.client.Update(ctx, obj)
	})
}

// createRefused creates e and expects the API server to refuse it as
// Invalid with a message that contains want.
func createRefused(t *testing.T, e *v1alpha1.EHRIntegration, want string) {
	t.Helper()
	err := suite.client.Create(ctx, e)
	if !apierrors.IsInvalid(err) {
		t.Fatalf("create: err = %v, want Invalid", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q\ndoes not say %q", err, want)
	}
}

// waitCondition waits until the EHRIntegration's Ready condition has status
// and reason, for its current generation, and returns it.
func waitCondition(t testing.TB, ns, name string, status metav1.ConditionStatus, reason string) *v1alpha1.EHRIntegration {
	t.Helper()
	var e v1alpha1.EHRIntegration
	eventually(t, waitFor, fmt.Sprintf("Ready=%s/%s on %s", status, reason, name), func() error {
		if err := suite.client.Get(ctx, key(ns, name), &e); err != nil {
			return err
		}
		c := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady)
		if c == nil || c.Status != status || c.Reason != reason || e.Status.ObservedGeneration != e.Generation {
			return fmt.Errorf("ready condition %+v, observedGeneration %d of %d", c, e.Status.ObservedGeneration, e.Generation)
		}
		return nil
	})
	return &e
}

// child waits for e's child of obj's type to exist and fills obj.
func child(t testing.TB, ns, name string, obj client.Object) {
	t.Helper()
	eventually(t, waitFor, fmt.Sprintf("%T %s-receiver to exist", obj, name), func() error {
		return suite.client.Get(ctx, key(ns, name+"-receiver"), obj)
	})
}

// gone waits until obj's name no longer exists.
func gone(t testing.TB, ns, name string, obj client.Object) {
	t.Helper()
	eventually(t, waitFor, fmt.Sprintf("%T %s to be deleted", obj, name), func() error {
		err := suite.client.Get(ctx, key(ns, name), obj)
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (err %v)", err)
	})
}

// markAvailable writes the Deployment status the Deployment controller
// would, once all its pods run: envtest has no such controller.
func markAvailable(t testing.TB, ns, name string) {
	t.Helper()
	eventually(t, waitFor, "marking the Deployment available", func() error {
		var d appsv1.Deployment
		if err := suite.client.Get(ctx, key(ns, name+"-receiver"), &d); err != nil {
			return err
		}
		n := *d.Spec.Replicas
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: n,
			UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
		return suite.client.Status().Update(ctx, &d)
	})
}

func TestAPIServerRefusesInvalidResources(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	tests := []struct {
		name    string
		modify  func(*v1alpha1.EHRIntegration)
		message string
	}{
		{"uppercase ehr", func(e *v1alpha1.EHRIntegration) { e.Spec.EHR = "Nexus" }, "spec.ehr"},
		{"ehr with underscore", func(e *v1alpha1.EHRIntegration) { e.Spec.EHR = "nex_us" }, "spec.ehr"},
		{"ehr too long", func(e *v1alpha1.EHRIntegration) { e.Spec.EHR = strings.Repeat("a", 64) }, "spec.ehr"},
		{"ehr missing", func(e *v1alpha1.EHRIntegration) { e.Spec.EHR = "" }, "spec.ehr"},
		{"body limit too small", func(e *v1alpha1.EHRIntegration) { e.Spec.Limits = &v1alpha1.LimitsSpec{MaxBodyBytes: 1000} }, "spec.limits.maxBodyBytes"},
		{"body limit too large", func(e *v1alpha1.EHRIntegration) { e.Spec.Limits = &v1alpha1.LimitsSpec{MaxBodyBytes: 128 << 20} }, "spec.limits.maxBodyBytes"},
		{"batch too large", func(e *v1alpha1.EHRIntegration) { e.Spec.Limits = &v1alpha1.LimitsSpec{MaxBatchSize: 10001} }, "spec.limits.maxBatchSize"},
		{"negative rate", func(e *v1alpha1.EHRIntegration) { e.Spec.Limits = &v1alpha1.LimitsSpec{RequestsPerSecond: -5} }, "spec.limits.requestsPerSecond"},
		{"negative burst", func(e *v1alpha1.EHRIntegration) { e.Spec.Limits = &v1alpha1.LimitsSpec{Burst: -1} }, "spec.limits.burst"},
		{"too many replicas", func(e *v1alpha1.EHRIntegration) { e.Spec.Replicas = ptr.To[int32](51) }, "spec.replicas"},
		{"negative replicas", func(e *v1alpha1.EHRIntegration) { e.Spec.Replicas = ptr.To[int32](-1) }, "spec.replicas"},
		{"unknown onInvalid", func(e *v1alpha1.EHRIntegration) { e.Spec.OnInvalid = "Drop" }, "spec.onInvalid"},
		{"Local time zone", func(e *v1alpha1.EHRIntegration) { e.Spec.TimeZone = "Local" }, "spec.timeZone"},
		{"bad ingress host", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "Bad_Host.example.com", TLSSecretName: "tls"}
		}, "spec.ingress.host"},
		{"database key ..", func(e *v1alpha1.EHRIntegration) { e.Spec.Database.SecretRef.Key = ".." }, "spec.database.secretRef.key"},
		{"retention under an hour", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Retention = &v1alpha1.RetentionSpec{DeliveryLog: &metav1.Duration{Duration: 30 * time.Minute}}
		}, "deliveryLog must be at least 1h"},
		{"quarantine content kept longer than its row", func(e *v1alpha1.EHRIntegration) {
			e.Spec.Retention = &v1alpha1.RetentionSpec{Quarantine: &v1alpha1.QuarantineRetention{
				Content: &metav1.Duration{Duration: 48 * time.Hour}, Metadata: &metav1.Duration{Duration: 24 * time.Hour}}}
		}, "quarantine.content must not be longer than quarantine.metadata"},
		{"name starting with a digit", func(e *v1alpha1.EHRIntegration) { e.Name = "1nexus" }, "metadata.name"},
		{"name too long for its Service", func(e *v1alpha1.EHRIntegration) { e.Name = strings.Repeat("n", 55) }, "metadata.name"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := integration(ns, fmt.Sprintf("bad-%d", i), "nexus")
			tt.modify(e)
			createRefused(t, e, tt.message)
		})
	}

	// Durations as people write them: the API server must name the field
	// and the form it wants, not fail inside a CEL rule; Go's forms pass.
	for i, tt := range []struct{ path []string }{
		{[]string{"monitoring", "silenceAlertAfter"}},
		{[]string{"retention", "history"}},
		{[]string{"retention", "deliveryLog"}},
		{[]string{"retention", "quarantine", "content"}},
		{[]string{"retention", "quarantine", "metadata"}},
	} {
		for j, value := range []string{"2 hours", "30d", "1h 30m", "-2h", "720h", "1.5h", "1h30m"} {
			field := "spec." + strings.Join(tt.path, ".")
			valid := !strings.ContainsAny(value, " d-")
			t.Run(field+"="+value, func(t *testing.T) {
				u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(integration(ns, fmt.Sprintf("dur-%d-%d", i, j), "nexus"))
				if err != nil {
					t.Fatal(err)
				}
				if err := unstructured.SetNestedField(u, value, append([]string{"spec"}, tt.path...)...); err != nil {
					t.Fatal(err)
				}
				obj := &unstructured.Unstructured{Object: u}
				obj.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("EHRIntegration"))
				err = suite.client.Create(ctx, obj)
				if valid {
					if err != nil {
						t.Fatalf("create: %v, want it accepted", err)
					}
					return
				}
				if !apierrors.IsInvalid(err) {
					t.Fatalf("create: err = %v, want Invalid", err)
				}
				for _, want := range []string{field, "a duration such as 90m or 720h"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q\ndoes not say %q", err, want)
					}
				}
				if strings.Contains(err.Error(), "type conversion") || strings.Contains(err.Error(), "evaluating") {
					t.Errorf("error %q comes from inside a CEL rule", err)
				}
			})
		}
	}

	t.Run("defaults", func(t *testing.T) {
		e := integration(ns, "good", "nexus")
		create(t, e)
		want := v1alpha1.EHRIntegrationSpec{
			EHR: "nexus", TimeZone: "UTC", Replicas: ptr.To[int32](2), OnInvalid: v1alpha1.OnInvalidReject,
			CredentialsSecretRef: v1alpha1.SecretReference{Name: "creds"},
			Database:             v1alpha1.DatabaseSpec{SecretRef: v1alpha1.SecretKeyReference{Name: "db", Key: "uri"}},
			Limits:               &v1alpha1.LimitsSpec{MaxBodyBytes: 4194304, MaxBatchSize: 1000, RequestsPerSecond: 50, Burst: 100},
		}
		if diff := cmp.Diff(want, e.Spec); diff != "" {
			t.Errorf("defaulted spec mismatch (-want +got):\n%s", diff)
		}
		// The Go defaults the controller applies agree with the CRD's.
		if diff := cmp.Diff(e.Spec, withDefaults(integration(ns, "good", "nexus")).Spec); diff != "" {
			t.Errorf("withDefaults differs from the API server's defaults (-server +withDefaults):\n%s", diff)
		}
	})

	t.Run("ehr is immutable", func(t *testing.T) {
		var err error
		for range 20 { // the controller may write the status between our read and write
			var e v1alpha1.EHRIntegration
			if err := suite.client.Get(ctx, key(ns, "good"), &e); err != nil {
				t.Fatal(err)
			}
			e.Spec.EHR = "medicat"
			if err = suite.client.Update(ctx, &e); !apierrors.IsConflict(err) {
				break
			}
		}
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "ehr is immutable") {
			t.Fatalf("changing ehr: err = %v, want Invalid 'ehr is immutable'", err)
		}
	})
}

func TestChildrenOfAValidIntegration(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns), tlsSecret(ns, "nexus-tls"))
	e := integration(ns, "nexus", "nexus")
	e.Spec.TimeZone = "America/New_York"
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.webhooks.example.com", ClassName: testIngressClass,
		TLSSecretName: "nexus-tls", Annotations: map[string]string{"cert-manager.io/cluster-issuer": "letsencrypt"}}
	create(t, e)

	var (
		sa  corev1.ServiceAccount
		dep appsv1.Deployment
		svc corev1.Service
		ing networkingv1.Ingress
		pdb policyv1.PodDisruptionBudget
	)
	for _, obj := range []client.Object{&sa, &dep, &svc, &ing, &pdb} {
		child(t, ns, "nexus", obj)
		ref := metav1.GetControllerOf(obj)
		if ref == nil || ref.UID != e.UID || ref.Kind != "EHRIntegration" || ref.Name != "nexus" {
			t.Errorf("%T owner = %+v, want controller EHRIntegration nexus", obj, ref)
		}
		if obj.GetLabels()[labelInstance] != "nexus" || obj.GetLabels()[labelEHR] != "nexus" {
			t.Errorf("%T labels = %v", obj, obj.GetLabels())
		}
	}

	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Errorf("ServiceAccount automount = %v, want false", sa.AutomountServiceAccountToken)
	}
	if *dep.Spec.Replicas != 2 {
		t.Errorf("replicas = %d, want 2", *dep.Spec.Replicas)
	}
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]
	wantArgs := []string{"receiver", "--ehr=nexus", "--database-url-file=/etc/ehr-operator/database/uri",
		"--credentials-dir=/etc/ehr-operator/credentials", "--time-zone=America/New_York", "--max-body-bytes=4194304",
		"--max-batch-size=1000", "--requests-per-second=50", "--burst=100", "--on-invalid=Reject",
		"--listen=:8080", "--metrics-listen=:9090", "--migrate=true"}
	if diff := cmp.Diff(wantArgs, c.Args); diff != "" {
		t.Errorf("args mismatch (-want +got):\n%s", diff)
	}
	if c.Image != testImage {
		t.Errorf("image = %q, want the manager's %q", c.Image, testImage)
	}
	wantMounts := []corev1.VolumeMount{
		{Name: "credentials", MountPath: "/etc/ehr-operator/credentials", ReadOnly: true},
		{Name: "database", MountPath: "/etc/ehr-operator/database", ReadOnly: true},
		{Name: "tmp", MountPath: "/tmp"},
	}
	if diff := cmp.Diff(wantMounts, c.VolumeMounts); diff != "" {
		t.Errorf("mounts mismatch (-want +got):\n%s", diff)
	}
	if p := pod.Volumes[0].Projected; p == nil || len(p.Sources) != 2 || p.Sources[0].Secret.Name != "creds" ||
		p.Sources[1].Secret.Name != "creds" || pod.Volumes[1].Secret.SecretName != "db" {
		t.Errorf("volumes = %+v", pod.Volumes)
	}
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.ReadinessProbe.HTTPGet.Path != "/readyz" ||
		c.ReadinessProbe.HTTPGet.Port.String() != "metrics" {
		t.Errorf("probes: liveness %+v readiness %+v", c.LivenessProbe.HTTPGet, c.ReadinessProbe.HTTPGet)
	}
	if sc := c.SecurityContext; sc == nil || !*sc.RunAsNonRoot || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container security context = %+v", c.SecurityContext)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken || pod.ServiceAccountName != "nexus-receiver" {
		t.Errorf("pod service account %q automount %v", pod.ServiceAccountName, pod.AutomountServiceAccountToken)
	}
	var creds, db corev1.Secret
	if err := suite.client.Get(ctx, key(ns, "creds"), &creds); err != nil {
		t.Fatal(err)
	}
	if err := suite.client.Get(ctx, key(ns, "db"), &db); err != nil {
		t.Fatal(err)
	}
	// The Secrets' versions, nothing derived from their values.
	if diff := cmp.Diff(map[string]string{annotationCredentialsVersion: creds.ResourceVersion, annotationDatabaseVersion: db.ResourceVersion},
		dep.Spec.Template.Annotations); diff != "" {
		t.Errorf("pod template annotations (-want +got):\n%s", diff)
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[0].Port != 8080 ||
		svc.Spec.Ports[1].Name != "metrics" || svc.Spec.Ports[1].Port != 9090 {
		t.Errorf("service = %+v", svc.Spec)
	}
	if r := ing.Spec.Rules[0]; r.Host != "nexus.webhooks.example.com" || r.HTTP.Paths[0].Path != "/v2/webhooks/nexus/" ||
		*r.HTTP.Paths[0].PathType != networkingv1.PathTypePrefix || ing.Spec.TLS[0].SecretName != "nexus-tls" ||
		*ing.Spec.IngressClassName != "nginx" || ing.Annotations["cert-manager.io/cluster-issuer"] != "letsencrypt" {
		t.Errorf("ingress = %+v %v", ing.Spec, ing.Annotations)
	}
	if pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB minAvailable = %v", pdb.Spec.MinAvailable)
	}

	// No Deployment controller runs here, so nothing is available yet.
	got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	if got.Status.Endpoint != "https://nexus.webhooks.example.com/v2/webhooks/nexus/sync-appointments" {
		t.Errorf("endpoint = %q", got.Status.Endpoint)
	}
	markAvailable(t, ns, "nexus")
	got = waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	if got.Status.ReadyReplicas != 2 {
		t.Errorf("readyReplicas = %d, want 2", got.Status.ReadyReplicas)
	}
	if !meta.IsStatusConditionFalse(got.Status.Conditions, v1alpha1.ConditionDegraded) ||
		!meta.IsStatusConditionFalse(got.Status.Conditions, v1alpha1.ConditionProgressing) {
		t.Errorf("conditions = %+v, want Degraded and Progressing False", got.Status.Conditions)
	}

	// One replica: no PDB. No ingress: no Ingress, in-cluster endpoint.
	update(t, got, func(e *v1alpha1.EHRIntegration) {
		e.Spec.Replicas = ptr.To[int32](1)
		e.Spec.Ingress = nil
	})
	gone(t, ns, "nexus-receiver", &policyv1.PodDisruptionBudget{})
	gone(t, ns, "nexus-receiver", &networkingv1.Ingress{})
	eventually(t, waitFor, "the endpoint to be the Service's", func() error {
		var e v1alpha1.EHRIntegration
		if err := suite.client.Get(ctx, key(ns, "nexus"), &e); err != nil {
			return err
		}
		if want := "http://nexus-receiver." + ns + ".svc:8080/v2/webhooks/nexus/sync-appointments"; e.Status.Endpoint != want {
			return fmt.Errorf("endpoint %q, want %q", e.Status.Endpoint, want)
		}
		return nil
	})
	// The Deployment's generation moved on and its controller has not
	// looked yet: the pods it last found available still serve, so Ready
	// stays True (it used to turn False until the controller caught up,
	// on every rotation), while Progressing says a rollout is under way.
	got = waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	if !meta.IsStatusConditionTrue(got.Status.Conditions, v1alpha1.ConditionProgressing) {
		t.Errorf("conditions = %+v, want Progressing True until the Deployment's controller catches up", got.Status.Conditions)
	}
	markAvailable(t, ns, "nexus")
	eventually(t, waitFor, "Progressing to turn False", func() error {
		var e v1alpha1.EHRIntegration
		if err := suite.client.Get(ctx, key(ns, "nexus"), &e); err != nil {
			return err
		}
		if !meta.IsStatusConditionFalse(e.Status.Conditions, v1alpha1.ConditionProgressing) ||
			!meta.IsStatusConditionTrue(e.Status.Conditions, v1alpha1.ConditionReady) {
			return fmt.Errorf("conditions %+v", e.Status.Conditions)
		}
		return nil
	})
}

func TestMissingSecretsHealByThemselves(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	create(t, integration(ns, "nexus", "nexus"))
	e := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonSecretNotFound)
	if !meta.IsStatusConditionTrue(e.Status.Conditions, v1alpha1.ConditionDegraded) {
		t.Errorf("Degraded not True: %+v", e.Status.Conditions)
	}
	if msg := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "creds") {
		t.Errorf("message %q does not name the Secret", msg)
	}
	eventually(t, waitFor, "a SecretNotFound Event", func() error {
		var list eventsv1.EventList
		if err := suite.client.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, ev := range list.Items {
			if ev.Reason == v1alpha1.ReasonSecretNotFound && ev.Regarding.Name == "nexus" && ev.Type == corev1.EventTypeWarning {
				return nil
			}
		}
		return fmt.Errorf("%d events, none SecretNotFound", len(list.Items))
	})
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Deployment without its Secrets: err = %v", err)
	}

	// A Secret without webhook-secret: the watch on Secrets notices it.
	creds := credsSecret(ns)
	delete(creds.Data, "webhook-secret")
	create(t, creds)
	e = waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonSecretKeyMissing)
	if msg := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "webhook-secret") {
		t.Errorf("message %q does not name the key", msg)
	}
	update(t, creds, func(s *corev1.Secret) { s.Data["webhook-secret"] = []byte(testSecret) })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonSecretNotFound) // now the database's
	create(t, dbSecret(ns))
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	child(t, ns, "nexus", &appsv1.Deployment{})
}

// TestSecretChangeRollsPods: a change to a referenced Secret rolls the
// pods (the template names the Secret's new resourceVersion), a write that
// changes nothing does not, and status.servedSecretVersions names the new
// version only once no pod of the old one is left, draining ones included.
func TestSecretChangeRollsPods(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	creds := credsSecret(ns)
	create(t, creds, dbSecret(ns), integration(ns, "nexus", "nexus"))
	template := func() string {
		var d appsv1.Deployment
		child(t, ns, "nexus", &d)
		return d.Spec.Template.Annotations[annotationCredentialsVersion]
	}
	served := func(want string) {
		t.Helper()
		eventually(t, waitFor, "servedSecretVersions.credentials "+want, func() error {
			var e v1alpha1.EHRIntegration
			if err := suite.client.Get(ctx, key(ns, "nexus"), &e); err != nil {
				return err
			}
			got := ""
			if v := e.Status.ServedSecretVersions; v != nil {
				got = v.Credentials
			}
			if got != want {
				return fmt.Errorf("servedSecretVersions %+v", e.Status.ServedSecretVersions)
			}
			return nil
		})
	}
	eventually(t, waitFor, "the template to name the Secret's version", func() error {
		if v := template(); v != creds.ResourceVersion {
			return fmt.Errorf("template names %q, the Secret is at %q", v, creds.ResourceVersion)
		}
		return nil
	})
	v1 := creds.ResourceVersion
	served(v1) // no pod yet: the next one runs the template

	// A running pod of v1, on a node (no kubelet here: deleted, it stays
	// listed, as on a node that is gone), with a grace period to drain in.
	pod := func(name, version string) *corev1.Pod {
		return replicaSetPod(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: selectorLabels(integration(ns, "nexus", "nexus")),
				Annotations: map[string]string{annotationCredentialsVersion: version, annotationDatabaseVersion: template2(t, ns)}},
			Spec: corev1.PodSpec{NodeName: "node-1", TerminationGracePeriodSeconds: ptr.To[int64](10),
				Containers: []corev1.Container{{Name: "receiver", Image: testImage}}},
		}, "nexus")
	}
	old := pod("old", v1)
	create(t, old)
	// A pod with the receiver's labels that no ReplicaSet of the Deployment
	// started serves nothing of this integration's: were it counted, its
	// version would make every check below "mixed".
	stray := pod("stray", "1")
	stray.OwnerReferences = nil
	create(t, stray)

	// A write that changes nothing keeps the version: no rollout.
	update(t, creds, func(*corev1.Secret) {})
	if creds.ResourceVersion != v1 || template() != v1 {
		t.Errorf("a write that changed nothing moved the Secret to %s, the template to %s, from %s", creds.ResourceVersion, template(), v1)
	}

	update(t, creds, func(s *corev1.Secret) { s.Data["webhook-secret-previous"] = s.Data["webhook-secret"] })
	v2 := creds.ResourceVersion
	eventually(t, waitFor, "the template to name the new version", func() error {
		if v := template(); v != v2 {
			return fmt.Errorf("template names %q, want %q", v, v2)
		}
		return nil
	})
	served(v1) // the only pod still runs v1
	create(t, pod("new", v2))
	served("") // mixed
	if err := suite.client.Delete(ctx, old); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * rolloutPollInterval)
	served("") // the old pod drains for its 10 s: it may still answer
	// Past its grace period it serves nothing, even still listed (its node
	// gone): the rotation ends without it.
	served(v2)
}

// A rotation changes the receivers' pod template; the Deployment's
// controller has not looked at it when the operator writes the status
// right after, and its pods then still all serve (maxUnavailable 0). Ready
// must stay True through that moment (found on the local cluster: every
// rotation turned it False, with a DeploymentUnavailable Event, then True
// again), and Progressing say the rollout is under way.
func TestRotationKeepsReady(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	creds := credsSecret(ns)
	create(t, creds, dbSecret(ns), integration(ns, "nexus", "nexus"))
	markAvailable(t, ns, "nexus")
	before := waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	since := meta.FindStatusCondition(before.Status.Conditions, v1alpha1.ConditionReady).LastTransitionTime

	update(t, creds, func(s *corev1.Secret) { s.Data["webhook-secret-previous"] = s.Data["webhook-secret"] })
	var e v1alpha1.EHRIntegration
	eventually(t, waitFor, "Progressing to say the rollout is under way", func() error {
		if err := suite.client.Get(ctx, key(ns, "nexus"), &e); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(e.Status.Conditions, v1alpha1.ConditionProgressing) {
			return fmt.Errorf("conditions %+v", e.Status.Conditions)
		}
		return nil
	})
	// The status written with the stale Deployment status, and the passes
	// after it (no Deployment controller runs here to catch up).
	time.Sleep(2 * rolloutPollInterval)
	if err := suite.client.Get(ctx, key(ns, "nexus"), &e); err != nil {
		t.Fatal(err)
	}
	if c := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady); c == nil ||
		c.Status != metav1.ConditionTrue || !c.LastTransitionTime.Equal(&since) {
		t.Errorf("Ready after the rotation = %+v, want True since %v: the pods serve until new ones replace them", c, since)
	}
}

// template2 is the database Secret's version, which these pods share.
func template2(t *testing.T, ns string) string {
	t.Helper()
	var db corev1.Secret
	if err := suite.client.Get(ctx, key(ns, "db"), &db); err != nil {
		t.Fatal(err)
	}
	return db.ResourceVersion
}

func TestDriftIsPutBack(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	create(t, credsSecret(ns), dbSecret(ns), integration(ns, "nexus", "nexus"))

	var svc corev1.Service
	child(t, ns, "nexus", &svc)
	if err := suite.client.Delete(ctx, &svc); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitFor, "the Service to be made again", func() error {
		var again corev1.Service
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &again); err != nil {
			return err
		}
		if again.UID == svc.UID {
			return errors.New("same Service")
		}
		return nil
	})

	var dep appsv1.Deployment
	child(t, ns, "nexus", &dep)
	wantArgs := dep.Spec.Template.Spec.Containers[0].Args
	update(t, &dep, func(d *appsv1.Deployment) {
		if d.Annotations == nil {
			d.Annotations = map[string]string{}
		}
		d.Annotations["example.com/owner"] = "sre"
		d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] = "2026-01-01T00:00:00Z"
		d.Spec.Template.Spec.Containers[0].Image = "evil:latest"
		d.Spec.Template.Spec.Containers[0].Args = []string{"receiver", "--ehr=other"}
		d.Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = ptr.To(false)
		d.Spec.Replicas = ptr.To[int32](7)
	})
	eventually(t, waitFor, "the Deployment to be put back", func() error {
		var d appsv1.Deployment
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &d); err != nil {
			return err
		}
		c := d.Spec.Template.Spec.Containers[0]
		switch {
		case c.Image != testImage:
			return fmt.Errorf("image %q", c.Image)
		case !cmp.Equal(c.Args, wantArgs):
			return fmt.Errorf("args %v", c.Args)
		case !*c.SecurityContext.ReadOnlyRootFilesystem:
			return errors.New("root filesystem writable")
		case *d.Spec.Replicas != 2:
			return fmt.Errorf("replicas %d", *d.Spec.Replicas)
		}
		if d.Annotations["example.com/owner"] != "sre" || d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" {
			t.Fatalf("foreign annotations dropped: %v, template %v", d.Annotations, d.Spec.Template.Annotations)
		}
		return nil
	})
}

func TestExternallyManagedReplicasAreKept(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Annotations = map[string]string{v1alpha1.AnnotationExternalReplicas: "true"}
	create(t, credsSecret(ns), dbSecret(ns), e)
	var dep appsv1.Deployment
	child(t, ns, "nexus", &dep)
	if *dep.Spec.Replicas != 2 {
		t.Fatalf("initial replicas = %d, want spec.replicas 2", *dep.Spec.Replicas)
	}
	// A hand edit of the image, so we know a reconcile ran once it is back.
	imageBack := func() {
		t.Helper()
		eventually(t, waitFor, "the image to be put back", func() error {
			if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &dep); err != nil {
				return err
			}
			if dep.Spec.Template.Spec.Containers[0].Image != testImage {
				return errors.New("image not put back yet")
			}
			return nil
		})
	}
	// Before an autoscaler acts, a pass keeps the replicas the operator set.
	update(t, &dep, func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "other" })
	imageBack()
	if *dep.Spec.Replicas != 2 {
		t.Errorf("replicas = %d before any autoscaling, want 2", *dep.Spec.Replicas)
	}
	// An autoscaler scales to 5.
	update(t, &dep, func(d *appsv1.Deployment) {
		d.Spec.Replicas = ptr.To[int32](5)
		d.Spec.Template.Spec.Containers[0].Image = "other"
	})
	imageBack()
	if *dep.Spec.Replicas != 5 {
		t.Errorf("replicas = %d, want the autoscaler's 5", *dep.Spec.Replicas)
	}
	markAvailable(t, ns, "nexus")
	got := waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)
	if got.Status.ReadyReplicas != 5 {
		t.Errorf("readyReplicas = %d, want 5", got.Status.ReadyReplicas)
	}
	// The PodDisruptionBudget follows the autoscaler's count, not
	// spec.replicas (2): at one pod it would block every node drain.
	child(t, ns, "nexus", &policyv1.PodDisruptionBudget{})
	update(t, &dep, func(d *appsv1.Deployment) { d.Spec.Replicas = ptr.To[int32](1) })
	eventually(t, waitFor, "the PDB deleted at one replica", func() error {
		err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &policyv1.PodDisruptionBudget{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("PDB still there (err %v)", err)
	})
}

// TestDuplicateEHR: spec.ehr is unique across namespaces. The newer of two
// says DuplicateEHR and runs no receiver pod, even one whose Deployment
// was running (as an operator that allowed it would have left it), and
// takes over when the older one is deleted.
func TestDuplicateEHR(t *testing.T) {
	startSuite(t)
	ns1, ns2 := newNamespace(t), newNamespace(t)
	create(t, credsSecret(ns1), dbSecret(ns1), integration(ns1, "first", "dup"))
	child(t, ns1, "first", &appsv1.Deployment{})
	// creationTimestamp counts seconds: make "first" the older one whatever
	// the namespaces' random names.
	time.Sleep(1100 * time.Millisecond)
	second := integration(ns2, "second", "dup")
	create(t, credsSecret(ns2), dbSecret(ns2), second)
	e := waitCondition(t, ns2, "second", metav1.ConditionFalse, v1alpha1.ReasonDuplicateEHR)
	if msg := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionDegraded).Message; !strings.Contains(msg, "another namespace") ||
		strings.Contains(msg, ns1) || strings.Contains(msg, "first") {
		t.Errorf("message %q should point at another namespace without naming it", msg)
	}
	if err := suite.client.Get(ctx, key(ns2, "second-receiver"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("the duplicate got a Deployment: err = %v", err)
	}
	waitCondition(t, ns1, "first", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)

	// A receiver the duplicate already ran stops serving.
	running := object(t, buildDeployment(second, testImage, v1alpha1.SecretVersions{Credentials: "1", Database: "1"}), &appsv1.Deployment{})
	create(t, running)
	replicas := func(ns, name string, want int32) {
		t.Helper()
		eventually(t, waitFor, fmt.Sprintf("%s/%s-receiver at %d replicas", ns, name, want), func() error {
			var d appsv1.Deployment
			if err := suite.client.Get(ctx, key(ns, name+"-receiver"), &d); err != nil {
				return err
			}
			if *d.Spec.Replicas != want {
				return fmt.Errorf("replicas %d", *d.Spec.Replicas)
			}
			return nil
		})
	}
	replicas(ns2, "second", 0)
	e = waitCondition(t, ns2, "second", metav1.ConditionFalse, v1alpha1.ReasonDuplicateEHR)
	if e.Status.ReadyReplicas != 0 {
		t.Errorf("readyReplicas %d", e.Status.ReadyReplicas)
	}
	replicas(ns1, "first", 2)

	// Once the first is gone the second takes over by itself.
	if err := suite.client.Delete(ctx, &v1alpha1.EHRIntegration{ObjectMeta: metav1.ObjectMeta{Namespace: ns1, Name: "first"}}); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns2, "second", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	replicas(ns2, "second", 2)

	// In one namespace the message names the older one.
	time.Sleep(1100 * time.Millisecond)
	create(t, integration(ns2, "third", "dup"))
	e = waitCondition(t, ns2, "third", metav1.ConditionFalse, v1alpha1.ReasonDuplicateEHR)
	if msg := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionDegraded).Message; !strings.Contains(msg, "EHRIntegration second,") {
		t.Errorf("message %q does not name the older EHRIntegration", msg)
	}
}

// TestShortCredentialsRefused: an API key or webhook secret under 32 bytes
// is a CredentialTooShort naming the key and nothing of the value; a
// receiver is made once it is long enough.
func TestShortCredentialsRefused(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	creds := credsSecret(ns)
	creds.Data["api-key-previous"] = []byte("old-key-of-31-bytes-0123456789a")
	create(t, creds, dbSecret(ns), integration(ns, "nexus", "nexus"))
	e := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonCredentialTooShort)
	msg := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady).Message
	if !strings.Contains(msg, "api-key-previous") || strings.Contains(msg, "old-key") || strings.Contains(msg, "31") {
		t.Errorf("message %q should name the key and nothing of its value", msg)
	}
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Deployment with a short key: err = %v", err)
	}
	update(t, creds, func(s *corev1.Secret) { s.Data["api-key-previous"] = []byte(testAPIKey + "-old") })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
}

func TestSuspend(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	create(t, credsSecret(ns), dbSecret(ns), e)
	var svc corev1.Service
	child(t, ns, "nexus", &svc)
	child(t, ns, "nexus", &policyv1.PodDisruptionBudget{})

	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.Suspend = true })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonSuspended)
	var dep appsv1.Deployment
	child(t, ns, "nexus", &dep)
	if *dep.Spec.Replicas != 0 {
		t.Errorf("suspended replicas = %d, want 0", *dep.Spec.Replicas)
	}
	// While suspended the other children are not reconciled.
	if err := suite.client.Delete(ctx, &svc); err != nil {
		t.Fatal(err)
	}
	time.Sleep(testSyncPeriod + time.Second)
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &corev1.Service{}); !apierrors.IsNotFound(err) {
		t.Errorf("Service made again while suspended: err = %v", err)
	}

	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.Suspend = false })
	child(t, ns, "nexus", &corev1.Service{})
	eventually(t, waitFor, "replicas back to 2", func() error {
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &dep); err != nil {
			return err
		}
		if *dep.Spec.Replicas != 2 {
			return fmt.Errorf("replicas %d", *dep.Spec.Replicas)
		}
		return nil
	})
}

func TestInvalidTimeZone(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.TimeZone = "Mars/Olympus_Mons"
	create(t, credsSecret(ns), dbSecret(ns), e)
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonInvalidTimeZone)
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Deployment with an invalid time zone: err = %v", err)
	}
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.TimeZone = "America/New_York" })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
}

// TestLimitsExceedMemory: a body limit the receiver's memory cannot hold is
// refused with a clear reason and no receiver; lowering it makes one.
func TestLimitsExceedMemory(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}}
	create(t, credsSecret(ns), dbSecret(ns), e)
	got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonLimitsExceedMemory)
	msg := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady).Message
	if !strings.Contains(msg, "64Mi") || !strings.Contains(msg, "maxBodyBytes 4194304") {
		t.Errorf("message %q names neither the memory limit nor maxBodyBytes", msg)
	}
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Deployment with limits its memory cannot hold: err = %v", err)
	}
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.Limits = &v1alpha1.LimitsSpec{MaxBodyBytes: 1 << 20} })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
}

// TestPartialResourcesKeepTheMemoryLimit: resources setting only a CPU
// request keep the default memory limit, in the pod and in the check of
// maxBodyBytes against it.
func TestPartialResourcesKeepTheMemoryLimit(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Resources = &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")}}
	e.Spec.Limits = &v1alpha1.LimitsSpec{MaxBodyBytes: 64 << 20}
	create(t, credsSecret(ns), dbSecret(ns), e)
	got := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonLimitsExceedMemory)
	if msg := meta.FindStatusCondition(got.Status.Conditions, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "256Mi") {
		t.Errorf("message %q does not name the default memory limit", msg)
	}
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.Limits.MaxBodyBytes = 4 << 20 })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	var d appsv1.Deployment
	child(t, ns, "nexus", &d)
	want := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	if diff := cmp.Diff(want, d.Spec.Template.Spec.Containers[0].Resources); diff != "" {
		t.Errorf("receiver resources mismatch (-want +got):\n%s", diff)
	}
}

// TestCredentialsVolumeOfAnOlderOperator: a Deployment whose credentials
// volume mounts the whole Secret (as operators before the projected
// volume made it) gets the projected volume alone, not both sources
// (which the API server would refuse).
func TestCredentialsVolumeOfAnOlderOperator(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	creds := credsSecret(ns)
	creds.Data["billing-password"] = []byte("not the receiver's")
	create(t, creds, dbSecret(ns), integration(ns, "nexus", "nexus"))
	var live appsv1.Deployment
	child(t, ns, "nexus", &live)

	// The older operator's apply: its fields, the whole Secret mounted.
	old, err := appsv1ac.ExtractDeployment(&live, fieldOwner)
	if err != nil {
		t.Fatal(err)
	}
	vols := old.Spec.Template.Spec.Volumes
	for i := range vols {
		if *vols[i].Name == "credentials" {
			vols[i].Projected = nil
			vols[i].WithSecret(corev1ac.SecretVolumeSource().WithSecretName("creds").WithDefaultMode(0o440))
		}
	}
	if err := suite.client.Apply(ctx, old, client.FieldOwner(fieldOwner), client.ForceOwnership); err != nil {
		t.Fatal(err)
	}
	for _, v := range old.Spec.Template.Spec.Volumes {
		if *v.Name == "credentials" && (v.Secret == nil || v.Projected != nil) {
			t.Fatalf("the older operator's volume was not stored: %+v", v)
		}
	}
	eventually(t, waitFor, "the projected credentials volume alone", func() error {
		var d appsv1.Deployment
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &d); err != nil {
			return err
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name != "credentials" {
				continue
			}
			if v.Secret != nil || v.Projected == nil || len(v.Projected.Sources) != 2 {
				return fmt.Errorf("credentials volume %+v", v.VolumeSource)
			}
			return nil
		}
		return errors.New("no credentials volume")
	})
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
}

func TestOwnershipConflict(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "someone"}}
	create(t, other)
	taken := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nexus-receiver",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "someone", UID: other.UID, Controller: ptr.To(true)}}}}
	create(t, credsSecret(ns), dbSecret(ns), taken, integration(ns, "nexus", "nexus"))
	e := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonOwnershipConflict)
	if msg := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "ConfigMap someone") {
		t.Errorf("message %q does not name the owner", msg)
	}
}

// spec.retention reaches the receivers as --retain-* flags, and goes when
// it is removed.
func TestRetentionReachesTheReceiver(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Retention = &v1alpha1.RetentionSpec{
		DeliveryLog: &metav1.Duration{Duration: 2160 * time.Hour},
		Quarantine: &v1alpha1.QuarantineRetention{Content: &metav1.Duration{Duration: 720 * time.Hour},
			Metadata: &metav1.Duration{Duration: 8760 * time.Hour}},
		History: &metav1.Duration{Duration: 8760 * time.Hour},
	}
	create(t, credsSecret(ns), dbSecret(ns), e)
	retention := func(d *appsv1.Deployment) []string {
		var out []string
		for _, a := range d.Spec.Template.Spec.Containers[0].Args {
			if strings.HasPrefix(a, "--retain") {
				out = append(out, a)
			}
		}
		return out
	}
	want := []string{"--retain-delivery-log=2160h0m0s", "--retain-quarantine-content=720h0m0s",
		"--retain-quarantine=8760h0m0s", "--retain-history=8760h0m0s"}
	eventually(t, waitFor, "the retention flags", func() error {
		var d appsv1.Deployment
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &d); err != nil {
			return err
		}
		if got := retention(&d); !cmp.Equal(got, want) {
			return fmt.Errorf("retention flags %v, want %v", got, want)
		}
		return nil
	})
	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.Retention = nil })
	eventually(t, waitFor, "the retention flags to go", func() error {
		var d appsv1.Deployment
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &d); err != nil {
			return err
		}
		if got := retention(&d); len(got) != 0 {
			return fmt.Errorf("retention flags %v left", got)
		}
		return nil
	})
}

func TestValuesRemovedFromTheSpecGo(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.example.com", TLSSecretName: "nexus-tls", Annotations: map[string]string{"a": "1", "b": "2"}}
	e.Spec.Resources = &corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi"),
		corev1.ResourceEphemeralStorage: resource.MustParse("1Gi")}}
	create(t, credsSecret(ns), dbSecret(ns), e)
	var ing networkingv1.Ingress
	child(t, ns, "nexus", &ing)
	update(t, &ing, func(i *networkingv1.Ingress) { i.Annotations["example.com/owner"] = "sre" })

	update(t, e, func(e *v1alpha1.EHRIntegration) {
		e.Spec.Ingress.Annotations = map[string]string{"a": "1"}
		e.Spec.Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}
	})
	eventually(t, waitFor, "the removed annotation and request to go", func() error {
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &ing); err != nil {
			return err
		}
		if want := map[string]string{"a": "1", "example.com/owner": "sre"}; !cmp.Equal(ing.Annotations, want) {
			return fmt.Errorf("ingress annotations %v, want %v", ing.Annotations, want)
		}
		var d appsv1.Deployment
		if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &d); err != nil {
			return err
		}
		// The removed storage request goes; the removed CPU request is the
		// default's again.
		if r := d.Spec.Template.Spec.Containers[0].Resources; len(r.Requests) != 2 || r.Requests.Memory().String() != "64Mi" ||
			r.Requests.Cpu().String() != "50m" {
			return fmt.Errorf("resources %v", r)
		}
		return nil
	})
}

// TestChildrenWrittenBeforeServerSideApply: children that an operator
// from before server-side apply made with Create are taken over, and what
// only it had set goes.
func TestChildrenWrittenBeforeServerSideApply(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.example.com", TLSSecretName: "nexus-tls", Annotations: map[string]string{"keep": "1"}}
	e.Spec.TimeZone = "Mars/Olympus_Mons"
	// The Secrets exist (the template names their versions), but with a
	// zone it does not know the operator makes nothing.
	create(t, credsSecret(ns), dbSecret(ns), tlsSecret(ns, "nexus-tls"), e)
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonInvalidTimeZone)
	fixed := e.DeepCopy()
	fixed.Spec.TimeZone = "UTC"

	// That operator's manager name came from its binary's user agent.
	cfg := rest.CopyConfig(suite.cfg)
	cfg.UserAgent = "ehr-operator/v0.1.0 (linux/amd64) kubernetes/$Format"
	legacy, err := client.New(cfg, client.Options{Scheme: suite.scheme})
	if err != nil {
		t.Fatal(err)
	}
	const appliedHash, managedAnnotations = "ehr.insighthealth.io/applied-hash", "ehr.insighthealth.io/managed-annotations"
	var creds, db corev1.Secret
	if err := suite.client.Get(ctx, key(ns, "creds"), &creds); err != nil {
		t.Fatal(err)
	}
	if err := suite.client.Get(ctx, key(ns, "db"), &db); err != nil {
		t.Fatal(err)
	}
	versions := v1alpha1.SecretVersions{Credentials: creds.ResourceVersion, Database: db.ResourceVersion}
	dep := object(t, buildDeployment(fixed, testImage, versions), &appsv1.Deployment{})
	dep.Annotations = map[string]string{appliedHash: "0123456789abcdef"}
	svc := object(t, buildService(e), &corev1.Service{})
	svc.Annotations = map[string]string{appliedHash: "0123456789abcdef"}
	ing := object(t, buildIngress(e), &networkingv1.Ingress{})
	ing.Annotations[appliedHash] = "0123456789abcdef"
	ing.Annotations[managedAnnotations] = "gone,keep"
	ing.Annotations["gone"] = "2" // since removed from the spec
	for _, obj := range []client.Object{dep, svc, ing} {
		if err := legacy.Create(ctx, obj); err != nil {
			t.Fatalf("creating %T the old way: %v", obj, err)
		}
	}
	update(t, ing, func(i *networkingv1.Ingress) { i.Annotations["example.com/owner"] = "sre" })
	template, clusterIP := dep.Spec.Template.DeepCopy(), svc.Spec.ClusterIP

	update(t, e, func(e *v1alpha1.EHRIntegration) { e.Spec.TimeZone = fixed.Spec.TimeZone })
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	eventually(t, waitFor, "the old scheme's annotations and manager to go", func() error {
		for _, obj := range []client.Object{dep, svc, ing} {
			if err := suite.client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
				return err
			}
			for _, f := range obj.GetManagedFields() {
				if f.Manager == legacyFieldManager && f.Operation == metav1.ManagedFieldsOperationUpdate {
					return fmt.Errorf("%T still has the old manager's fields", obj)
				}
			}
			if _, ok := obj.GetAnnotations()[appliedHash]; ok {
				return fmt.Errorf("%T still has %s", obj, appliedHash)
			}
		}
		if want := map[string]string{"keep": "1", "example.com/owner": "sre"}; !cmp.Equal(ing.Annotations, want) {
			return fmt.Errorf("ingress annotations %v, want %v", ing.Annotations, want)
		}
		return nil
	})
	// The defaults the old manager owned were dropped and defaulted again:
	// the same pod template, so no rollout.
	if diff := cmp.Diff(template, &dep.Spec.Template); diff != "" {
		t.Errorf("pod template changed (-before +after):\n%s", diff)
	}
	if svc.Spec.ClusterIP != clusterIP {
		t.Errorf("Service clusterIP %s, was %s", svc.Spec.ClusterIP, clusterIP)
	}
}

// TestIdleManagerMakesNoWrites: with every resource of the earlier tests
// settled, resyncs must cause no write at all.
func TestIdleManagerMakesNoWrites(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	e := integration(ns, "nexus", "nexus")
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.example.com", TLSSecretName: "nexus-tls", Annotations: map[string]string{"a": "b"}}
	// Every pod setting, so that its stored form must read back as built.
	e.Spec.PodTemplate = fullPodTemplate()
	create(t, credsSecret(ns), dbSecret(ns), tlsSecret(ns, "nexus-tls"), e)
	for _, obj := range []client.Object{&corev1.ServiceAccount{}, &appsv1.Deployment{}, &corev1.Service{}, &networkingv1.Ingress{},
		&policyv1.PodDisruptionBudget{}, &networkingv1.NetworkPolicy{}} {
		child(t, ns, "nexus", obj)
	}
	markAvailable(t, ns, "nexus")
	waitCondition(t, ns, "nexus", metav1.ConditionTrue, v1alpha1.ReasonAvailable)

	versions := func() map[string]string {
		out := map[string]string{}
		objs := map[string]client.Object{"EHRIntegration": &v1alpha1.EHRIntegration{}, "ServiceAccount": &corev1.ServiceAccount{},
			"Deployment": &appsv1.Deployment{}, "Service": &corev1.Service{}, "Ingress": &networkingv1.Ingress{}, "PDB": &policyv1.PodDisruptionBudget{},
			"NetworkPolicy": &networkingv1.NetworkPolicy{}}
		for kind, obj := range objs {
			name := "nexus-receiver"
			if kind == "EHRIntegration" {
				name = "nexus"
			}
			if err := suite.client.Get(ctx, key(ns, name), obj); err != nil {
				t.Fatal(err)
			}
			out[kind] = obj.GetResourceVersion()
		}
		return out
	}
	// Let the status write of the last step and its echo land.
	suite.writes.settle(time.Second)
	before := versions()
	total0, by0 := suite.writes.snapshot()
	if total0 == 0 {
		t.Fatal("the write counter saw none of the manager's writes")
	}
	time.Sleep(3*testSyncPeriod + time.Second)
	total1, by1 := suite.writes.snapshot()
	if diff := cmp.Diff(before, versions()); diff != "" {
		t.Errorf("resourceVersions changed while idle (-before +after):\n%s", diff)
	}
	t.Logf("idle over 3 resync periods of %v: %d writes (%s)", testSyncPeriod, total1-total0, diffCounts(by0, by1))
	if total1 != total0 {
		t.Errorf("the manager wrote %d times over %d resync periods while idle: %s",
			total1-total0, 3, diffCounts(by0, by1))
	}
}

// TestObjectOfAnotherMakerIsNotAdopted: an object with a child's name that
// the operator did not make (no owner, not its labels) is left as it is
// and reported; one it made for this resource and lost the owner
// reference of is adopted.
func TestObjectOfAnotherMakerIsNotAdopted(t *testing.T) {
	startSuite(t)
	ns := newNamespace(t)
	theirs := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nexus-receiver"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "legacy"}, Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}
	create(t, credsSecret(ns), dbSecret(ns), theirs, integration(ns, "nexus", "nexus"))
	e := waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonOwnershipConflict)
	if msg := meta.FindStatusCondition(e.Status.Conditions, v1alpha1.ConditionReady).Message; !strings.Contains(msg, "Service nexus-receiver exists and was not made by the operator") {
		t.Errorf("message %q", msg)
	}
	var svc corev1.Service
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Spec.Selector["app"] != "legacy" || len(svc.Spec.Selector) != 1 || metav1.GetControllerOf(&svc) != nil {
		t.Errorf("the foreign Service was taken over: selector %v, owner %v", svc.Spec.Selector, metav1.GetControllerOf(&svc))
	}
	// Labelled as the operator labels its own: adopted.
	update(t, &svc, func(s *corev1.Service) {
		s.Labels = map[string]string{"app.kubernetes.io/managed-by": "ehr-operator", "app.kubernetes.io/instance": "nexus"}
	})
	waitCondition(t, ns, "nexus", metav1.ConditionFalse, v1alpha1.ReasonDeploymentUnavailable)
	if err := suite.client.Get(ctx, key(ns, "nexus-receiver"), &svc); err != nil {
		t.Fatal(err)
	}
	if ref := metav1.GetControllerOf(&svc); ref == nil || ref.Name != "nexus" || svc.Spec.Selector["app.kubernetes.io/instance"] != "nexus" {
		t.Errorf("the operator's orphan was not adopted: owner %v, selector %v", ref, svc.Spec.Selector)
	}
}
