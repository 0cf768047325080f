package controllers

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
	"github.com/insighthealth/ehr-operator/receiver"
)

// sample is an EHRIntegration as a client would send it, defaults unset.
func sample() *v1alpha1.EHRIntegration {
	return &v1alpha1.EHRIntegration{
		ObjectMeta: metav1.ObjectMeta{Name: "nexus", Namespace: "ehr", UID: "uid-1", Generation: 3},
		Spec: v1alpha1.EHRIntegrationSpec{
			EHR:                  "nexus",
			CredentialsSecretRef: v1alpha1.SecretReference{Name: "nexus-webhook"},
			Database:             v1alpha1.DatabaseSpec{SecretRef: v1alpha1.SecretKeyReference{Name: "appointments-db"}},
		},
	}
}

// object is the object an apply configuration describes, so that
// assertions read as on a stored object.
func object[O client.Object](t *testing.T, ac runtime.ApplyConfiguration, like O) O {
	t.Helper()
	obj, err := asObject(ac, like)
	if err != nil {
		t.Fatalf("converting %T: %v", ac, err)
	}
	return obj
}

func TestReceiverArgs(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*v1alpha1.EHRIntegration)
		want   []string
	}{{
		name:   "defaults",
		modify: func(*v1alpha1.EHRIntegration) {},
		want: []string{"receiver", "--ehr=nexus", "--database-url-file=/etc/ehr-operator/database/uri",
			"--credentials-dir=/etc/ehr-operator/credentials", "--time-zone=UTC", "--max-body-bytes=4194304",
			"--max-batch-size=1000", "--requests-per-second=50", "--burst=100", "--on-invalid=Reject",
			"--listen=:8080", "--metrics-listen=:9090", "--migrate=true"},
	}, {
		name: "everything set",
		modify: func(e *v1alpha1.EHRIntegration) {
			e.Spec.Database.SecretRef.Key = "url"
			e.Spec.TimeZone = "America/New_York"
			e.Spec.OnInvalid = v1alpha1.OnInvalidQuarantine
			e.Spec.Limits = &v1alpha1.LimitsSpec{MaxBodyBytes: 1024, MaxBatchSize: 5, RequestsPerSecond: 7, Burst: 9}
		},
		want: []string{"receiver", "--ehr=nexus", "--database-url-file=/etc/ehr-operator/database/url",
			"--credentials-dir=/etc/ehr-operator/credentials", "--time-zone=America/New_York", "--max-body-bytes=1024",
			"--max-batch-size=5", "--requests-per-second=7", "--burst=9", "--on-invalid=Quarantine",
			"--listen=:8080", "--metrics-listen=:9090", "--migrate=true"},
	}, {
		name:   "log level",
		modify: func(e *v1alpha1.EHRIntegration) { e.Spec.LogLevel = "warn" },
		want: []string{"receiver", "--ehr=nexus", "--database-url-file=/etc/ehr-operator/database/uri",
			"--credentials-dir=/etc/ehr-operator/credentials", "--time-zone=UTC", "--max-body-bytes=4194304",
			"--max-batch-size=1000", "--requests-per-second=50", "--burst=100", "--on-invalid=Reject",
			"--listen=:8080", "--metrics-listen=:9090", "--migrate=true", "--log-level=warn"},
	}, {
		name: "retention",
		modify: func(e *v1alpha1.EHRIntegration) {
			e.Spec.Retention = &v1alpha1.RetentionSpec{
				DeliveryLog: &metav1.Duration{Duration: 90 * 24 * time.Hour},
				Quarantine:  &v1alpha1.QuarantineRetention{Content: &metav1.Duration{Duration: 720 * time.Hour}},
			}
		},
		want: []string{"receiver", "--ehr=nexus", "--database-url-file=/etc/ehr-operator/database/uri",
			"--credentials-dir=/etc/ehr-operator/credentials", "--time-zone=UTC", "--max-body-bytes=4194304",
			"--max-batch-size=1000", "--requests-per-second=50", "--burst=100", "--on-invalid=Reject",
			"--listen=:8080", "--metrics-listen=:9090", "--migrate=true",
			"--retain-delivery-log=2160h0m0s", "--retain-quarantine-content=720h0m0s"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := sample()
			tt.modify(e)
			if diff := cmp.Diff(tt.want, receiverArgs(e)); diff != "" {
				t.Errorf("receiverArgs mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildDeployment(t *testing.T) {
	e := sample()
	ac := buildDeployment(e, "registry.example.com/ehr-operator:v1", v1alpha1.SecretVersions{Credentials: "41", Database: "7"})
	// Only what the operator sets is sent, so it owns nothing else.
	b, err := json.Marshal(ac)
	if err != nil {
		t.Fatal(err)
	}
	for _, unset := range []string{`"status"`, `"creationTimestamp"`, `"terminationMessagePath"`, `"claims"`} {
		if strings.Contains(string(b), unset) {
			t.Errorf("the Deployment's apply configuration sets %s", unset)
		}
	}
	d := object(t, ac, &appsv1.Deployment{})
	if d.Name != "nexus-receiver" || d.Namespace != "ehr" {
		t.Errorf("name = %s/%s, want ehr/nexus-receiver", d.Namespace, d.Name)
	}
	if got := *d.Spec.Replicas; got != 2 {
		t.Errorf("replicas = %d, want the default 2", got)
	}
	if diff := cmp.Diff(selectorLabels(e), d.Spec.Selector.MatchLabels); diff != "" {
		t.Errorf("selector mismatch (-want +got):\n%s", diff)
	}
	// The kubelet kills the receiver at the end of the grace period: it
	// must cover the preStop sleep and the receiver's whole shutdown.
	if got, want := *d.Spec.Template.Spec.TerminationGracePeriodSeconds, int64(preStopSleepSeconds)+int64(receiver.ShutdownBudget/time.Second); got != want {
		t.Errorf("terminationGracePeriodSeconds = %d, want the preStop sleep and receiver.ShutdownBudget, %d", got, want)
	}
	pod := d.Spec.Template
	for k, v := range d.Spec.Selector.MatchLabels {
		if pod.Labels[k] != v {
			t.Errorf("pod label %s = %q, want %q (selector must match the template)", k, pod.Labels[k], v)
		}
	}
	if v, ok := versionsOf(pod.Annotations); !ok || v != (v1alpha1.SecretVersions{Credentials: "41", Database: "7"}) {
		t.Errorf("pod template annotations %v, want the Secrets' versions 41 and 7", pod.Annotations)
	}
	ps := pod.Spec
	if ps.ServiceAccountName != "nexus-receiver" || ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Errorf("service account %q automount %v, want nexus-receiver and false", ps.ServiceAccountName, ps.AutomountServiceAccountToken)
	}
	if ps.SecurityContext == nil || !*ps.SecurityContext.RunAsNonRoot || ps.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod security context = %+v, want non-root with RuntimeDefault seccomp", ps.SecurityContext)
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(ps.Containers))
	}
	c := ps.Containers[0]
	if c.Image != "registry.example.com/ehr-operator:v1" {
		t.Errorf("image = %q", c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation || !*sc.RunAsNonRoot ||
		!cmp.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container security context = %+v, want restricted", sc)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if diff := cmp.Diff(map[string]int32{"http": 8080, "metrics": 9090}, ports); diff != "" {
		t.Errorf("ports mismatch (-want +got):\n%s", diff)
	}
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port.StrVal != "metrics" ||
		c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port.StrVal != "metrics" {
		t.Errorf("probes: liveness %+v readiness %+v", c.LivenessProbe.HTTPGet, c.ReadinessProbe.HTTPGet)
	}
	// Migrations run in the background: the startup probe covers only the
	// process starting.
	if sp := c.StartupProbe; sp == nil || sp.HTTPGet.Path != "/healthz" || sp.PeriodSeconds != 1 || sp.FailureThreshold != 30 {
		t.Errorf("startup probe = %+v, want /healthz every 1 s, 30 failures", sp)
	}
	wantEnv := []corev1.EnvVar{{Name: "MEMORY_LIMIT", ValueFrom: &corev1.EnvVarSource{
		ResourceFieldRef: &corev1.ResourceFieldSelector{
			ContainerName: "receiver", Resource: "limits.memory", Divisor: resource.MustParse("1"),
		},
	}}}
	if c.Name != "receiver" || !cmp.Equal(c.Env, wantEnv) {
		t.Errorf("container %q env = %+v, want MEMORY_LIMIT from its own limits.memory in bytes", c.Name, c.Env)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	for _, name := range []string{"credentials", "database"} {
		if !mounts[name].ReadOnly {
			t.Errorf("mount %s not read-only: %+v", name, mounts[name])
		}
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	if p := vols["credentials"].Projected; p == nil || len(p.Sources) != 2 || p.Sources[0].Secret == nil ||
		p.Sources[0].Secret.Name != "nexus-webhook" {
		t.Errorf("credentials volume = %+v", vols["credentials"])
	}
	if s := vols["database"].Secret; s == nil || s.SecretName != "appointments-db" ||
		!cmp.Equal(s.Items, []corev1.KeyToPath{{Key: "uri", Path: "uri"}}) {
		t.Errorf("database volume = %+v, want only key uri of appointments-db", vols["database"])
	}
	if got := c.Resources.Requests.Memory().String(); got != "64Mi" {
		t.Errorf("default memory request = %s, want 64Mi", got)
	}

	e.Spec.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}}
	e.Spec.Replicas = ptr.To[int32](5)
	d = object(t, buildDeployment(e, "img", v1alpha1.SecretVersions{Credentials: "41", Database: "7"}), &appsv1.Deployment{})
	wantResources := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
	if got := d.Spec.Template.Spec.Containers[0].Resources; !cmp.Equal(got, wantResources) {
		t.Errorf("resources = %+v, want the spec's CPU limit (and its request) and the other defaults %+v", got, wantResources)
	}
	if *d.Spec.Replicas != 5 {
		t.Errorf("replicas = %d, want 5", *d.Spec.Replicas)
	}
	e.Spec.Suspend = true
	if got := *buildDeployment(e, "img", v1alpha1.SecretVersions{Credentials: "41", Database: "7"}).Spec.Replicas; got != 0 {
		t.Errorf("suspended replicas = %d, want 0", got)
	}
}

// secretVolumeFiles are the files the kubelet writes for a volume of
// Secret s, by the rules k8s.io/api documents for secret and projected
// volumes (pkg/volume/secret.MakePayload): without items every key; with
// items only those, a missing one an error unless the source is optional.
func secretVolumeFiles(t *testing.T, v corev1.Volume, s *corev1.Secret) (map[string]string, error) {
	t.Helper()
	files := map[string]string{}
	add := func(name string, items []corev1.KeyToPath, optional *bool) error {
		if name != s.Name {
			return fmt.Errorf("secret %q not found", name)
		}
		if len(items) == 0 {
			for k, val := range s.Data {
				files[k] = string(val)
			}
			return nil
		}
		for _, it := range items {
			val, ok := s.Data[it.Key]
			if !ok {
				if optional != nil && *optional {
					continue
				}
				return fmt.Errorf("references non-existent secret key: %s", it.Key)
			}
			files[it.Path] = string(val)
		}
		return nil
	}
	switch {
	case v.Secret != nil:
		return files, add(v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
	case v.Projected != nil:
		for _, src := range v.Projected.Sources {
			if src.Secret == nil {
				t.Fatalf("volume %s projects something other than a Secret: %+v", v.Name, src)
			}
			if err := add(src.Secret.Name, src.Secret.Items, src.Secret.Optional); err != nil {
				return nil, err
			}
		}
		return files, nil
	}
	t.Fatalf("volume %s is neither a secret nor a projected volume: %+v", v.Name, v)
	return nil, nil
}

// TestCredentialsVolumeHoldsOnlyTheReceiversKeys: the receiver's pods get
// the four keys it reads of the credentials Secret, not the others kept
// there; the previous ones are optional, the current ones not.
func TestCredentialsVolumeHoldsOnlyTheReceiversKeys(t *testing.T) {
	d := object(t, buildDeployment(sample(), "img", v1alpha1.SecretVersions{}), &appsv1.Deployment{})
	var vol *corev1.Volume
	for i, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "credentials" {
			vol = &d.Spec.Template.Spec.Volumes[i]
		}
	}
	if vol == nil {
		t.Fatal("no credentials volume")
	}
	// Every mode set, as the API server would default an unset one.
	if vol.Projected == nil || vol.Projected.DefaultMode == nil || *vol.Projected.DefaultMode != 0o440 {
		t.Errorf("credentials volume = %+v, want a projected volume with defaultMode 0440", vol)
	}
	secret := func(kv ...string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "nexus-webhook"}, Data: map[string][]byte{}}
		for i := 0; i < len(kv); i += 2 {
			s.Data[kv[i]] = []byte(kv[i+1])
		}
		return s
	}
	tests := []struct {
		name    string
		secret  *corev1.Secret
		want    map[string]string
		wantErr string
	}{
		{"other keys are left out", secret("api-key", "k", "webhook-secret", "s", "billing-password", "p", "api-key-old", "o"),
			map[string]string{"api-key": "k", "webhook-secret": "s"}, ""},
		{"the previous keys during a rotation", secret("api-key", "k", "webhook-secret", "s", "api-key-previous", "pk",
			"webhook-secret-previous", "ps", "billing-password", "p"),
			map[string]string{"api-key": "k", "webhook-secret": "s", "api-key-previous": "pk", "webhook-secret-previous": "ps"}, ""},
		{"one previous key", secret("api-key", "k", "webhook-secret", "s", "webhook-secret-previous", "ps"),
			map[string]string{"api-key": "k", "webhook-secret": "s", "webhook-secret-previous": "ps"}, ""},
		{"a current key missing fails the mount", secret("api-key", "k", "api-key-previous", "pk"), nil, "webhook-secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := secretVolumeFiles(t, *vol, tt.secret)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("files %v, err %v; want an error naming %s", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("files mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReceiverResources: spec.resources overrides the defaults key by
// key, and a default never makes a request exceed its limit.
func TestReceiverResources(t *testing.T) {
	q := resource.MustParse
	list := func(kv ...string) corev1.ResourceList {
		l := corev1.ResourceList{}
		for i := 0; i < len(kv); i += 2 {
			l[corev1.ResourceName(kv[i])] = q(kv[i+1])
		}
		return l
	}
	defaults := corev1.ResourceRequirements{Requests: list("cpu", "50m", "memory", "64Mi"), Limits: list("memory", "256Mi")}
	tests := []struct {
		name string
		spec *corev1.ResourceRequirements
		want corev1.ResourceRequirements
	}{
		{"unset", nil, defaults},
		{"empty", &corev1.ResourceRequirements{}, defaults},
		{"a CPU request keeps the memory defaults", &corev1.ResourceRequirements{Requests: list("cpu", "500m")},
			corev1.ResourceRequirements{Requests: list("cpu", "500m", "memory", "64Mi"), Limits: list("memory", "256Mi")}},
		// A limit without its request brings the request along, as in
		// Kubernetes: limits alone keep their Guaranteed QoS.
		{"a memory limit brings its request", &corev1.ResourceRequirements{Limits: list("memory", "512Mi")},
			corev1.ResourceRequirements{Requests: list("cpu", "50m", "memory", "512Mi"), Limits: list("memory", "512Mi")}},
		{"a CPU limit is added with its request", &corev1.ResourceRequirements{Limits: list("cpu", "2")},
			corev1.ResourceRequirements{Requests: list("cpu", "2", "memory", "64Mi"), Limits: list("cpu", "2", "memory", "256Mi")}},
		{"limits alone", &corev1.ResourceRequirements{Limits: list("cpu", "1", "memory", "1Gi")},
			corev1.ResourceRequirements{Requests: list("cpu", "1", "memory", "1Gi"), Limits: list("cpu", "1", "memory", "1Gi")}},
		{"other resources are added", &corev1.ResourceRequirements{Requests: list("ephemeral-storage", "1Gi")},
			corev1.ResourceRequirements{Requests: list("cpu", "50m", "memory", "64Mi", "ephemeral-storage", "1Gi"), Limits: list("memory", "256Mi")}},
		{"a memory request above the default limit raises it", &corev1.ResourceRequirements{Requests: list("memory", "1Gi")},
			corev1.ResourceRequirements{Requests: list("cpu", "50m", "memory", "1Gi"), Limits: list("memory", "1Gi")}},
		{"a memory limit below the default request", &corev1.ResourceRequirements{Limits: list("memory", "48Mi")},
			corev1.ResourceRequirements{Requests: list("cpu", "50m", "memory", "48Mi"), Limits: list("memory", "48Mi")}},
		{"a CPU limit below the default request", &corev1.ResourceRequirements{Limits: list("cpu", "20m")},
			corev1.ResourceRequirements{Requests: list("cpu", "20m", "memory", "64Mi"), Limits: list("cpu", "20m", "memory", "256Mi")}},
		// Both set by the spec: its own mistake, which the API server refuses.
		{"a request above a limit both set is kept", &corev1.ResourceRequirements{Requests: list("memory", "1Gi"), Limits: list("memory", "512Mi")},
			corev1.ResourceRequirements{Requests: list("cpu", "50m", "memory", "1Gi"), Limits: list("memory", "512Mi")}},
		{"claims are the spec's", &corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
			corev1.ResourceRequirements{Requests: defaults.Requests, Limits: defaults.Limits, Claims: []corev1.ResourceClaim{{Name: "gpu"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := sample()
			e.Spec.Resources = tt.spec.DeepCopy()
			before := e.DeepCopy()
			got := receiverResources(e)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("resources mismatch (-want +got):\n%s", diff)
			}
			// As the pod gets them.
			d := object(t, buildDeployment(e, "img", v1alpha1.SecretVersions{}), &appsv1.Deployment{})
			if diff := cmp.Diff(tt.want, d.Spec.Template.Spec.Containers[0].Resources); diff != "" {
				t.Errorf("pod resources mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(before, e); diff != "" {
				t.Errorf("the spec was changed (-before +after):\n%s", diff)
			}
		})
	}
}

// TestMemoryProblemWithPartialResources: resources that leave out the
// memory limit are checked against the default one, and a limit raised
// to a request against the request.
func TestMemoryProblemWithPartialResources(t *testing.T) {
	e := sample()
	e.Spec.Limits = &v1alpha1.LimitsSpec{MaxBodyBytes: 64 << 20}
	e.Spec.Resources = &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")}}
	p := memoryProblem(e)
	if p == nil || p.reason != v1alpha1.ReasonLimitsExceedMemory || !strings.Contains(p.message, "256Mi") {
		t.Errorf("a CPU request only, 64 MiB bodies: problem %+v, want LimitsExceedMemory naming the default 256Mi", p)
	}
	e.Spec.Resources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi")
	if p := memoryProblem(e); p != nil {
		t.Errorf("a 1Gi memory request (the limit raised to it), 64 MiB bodies: problem %+v, want none", p)
	}
}

func TestBuildIngress(t *testing.T) {
	e := sample()
	if buildIngress(e) != nil {
		t.Fatal("an Ingress without spec.ingress")
	}
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.webhooks.example.com", AllowInsecureHTTP: true}
	ing := object(t, buildIngress(e), &networkingv1.Ingress{})
	if ing.Spec.IngressClassName != nil || ing.Spec.TLS != nil {
		t.Errorf("class %v tls %v, want neither", ing.Spec.IngressClassName, ing.Spec.TLS)
	}
	e.Spec.Ingress.ClassName = "nginx"
	e.Spec.Ingress.TLSSecretName = "nexus-tls"
	e.Spec.Ingress.Annotations = map[string]string{"b": "2", "a": "1"}
	ing = object(t, buildIngress(e), &networkingv1.Ingress{})
	want := networkingv1.IngressSpec{
		IngressClassName: ptr.To("nginx"),
		TLS:              []networkingv1.IngressTLS{{Hosts: []string{"nexus.webhooks.example.com"}, SecretName: "nexus-tls"}},
		Rules: []networkingv1.IngressRule{{
			Host: "nexus.webhooks.example.com",
			IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{{
					Path:     "/v2/webhooks/nexus/",
					PathType: ptr.To(networkingv1.PathTypePrefix),
					Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
						Name: "nexus-receiver", Port: networkingv1.ServiceBackendPort{Name: "http"},
					}},
				}},
			}},
		}},
	}
	if diff := cmp.Diff(want, ing.Spec); diff != "" {
		t.Errorf("ingress spec mismatch (-want +got):\n%s", diff)
	}
	wantAnn := map[string]string{"a": "1", "b": "2"}
	if diff := cmp.Diff(wantAnn, ing.Annotations); diff != "" {
		t.Errorf("ingress annotations mismatch (-want +got):\n%s", diff)
	}
}

func TestBuildPDBAndService(t *testing.T) {
	for _, tt := range []struct {
		replicas *int32
		suspend  bool
		wantPDB  bool
	}{{nil, false, true}, {ptr.To[int32](1), false, false}, {ptr.To[int32](0), false, false}, {ptr.To[int32](3), false, true}, {ptr.To[int32](3), true, false}} {
		e := sample()
		e.Spec.Replicas, e.Spec.Suspend = tt.replicas, tt.suspend
		pdb := buildPDB(e, desiredReplicas(e))
		if (pdb != nil) != tt.wantPDB {
			t.Errorf("replicas %v suspend %v: PDB %v, want %v", tt.replicas, tt.suspend, pdb != nil, tt.wantPDB)
		}
		if pdb != nil && pdb.Spec.MinAvailable.IntValue() != 1 {
			t.Errorf("minAvailable = %v, want 1", pdb.Spec.MinAvailable)
		}
	}
	// An autoscaler's count decides (external replicas), not the spec's.
	one := sample()
	one.Spec.Replicas = ptr.To[int32](1)
	if buildPDB(sample(), 1) != nil || buildPDB(one, 5) == nil {
		t.Error("the PDB does not follow the Deployment's replicas")
	}
	svc := object(t, buildService(sample()), &corev1.Service{})
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || len(svc.Spec.Ports) != 2 ||
		svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[0].Port != 8080 ||
		svc.Spec.Ports[1].Name != "metrics" || svc.Spec.Ports[1].Port != 9090 {
		t.Errorf("service spec = %+v", svc.Spec)
	}
}

func TestEndpointURL(t *testing.T) {
	e := sample()
	check := func(o observation, want string) {
		t.Helper()
		if got := endpointURL(e, endpointScheme(e, o)); got != want {
			t.Errorf("endpoint = %s, want %s", got, want)
		}
	}
	check(observation{}, "http://nexus-receiver.ehr.svc:8080/v2/webhooks/nexus/sync-appointments")
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.webhooks.example.com", TLSSecretName: "nexus-tls"}
	check(observation{}, "https://nexus.webhooks.example.com/v2/webhooks/nexus/sync-appointments")
	// Without a TLS Secret the Ingress serves plain HTTP, and says so.
	e.Spec.Ingress = &v1alpha1.IngressSpec{Host: "nexus.webhooks.example.com", AllowInsecureHTTP: true}
	check(observation{}, "http://nexus.webhooks.example.com/v2/webhooks/nexus/sync-appointments")

	e.Spec.Ingress = nil
	e.Spec.Gateway = &v1alpha1.GatewaySpec{ParentRefs: []v1alpha1.GatewayParentReference{{Name: "edge"}},
		Hostnames: []string{"a.example.test", "b.example.test"}}
	check(observation{scheme: "https"}, "https://a.example.test/v2/webhooks/nexus/sync-appointments")
	check(observation{scheme: "http"}, "http://a.example.test/v2/webhooks/nexus/sync-appointments")
	// Not looked at: https unless plain HTTP is allowed and was last seen.
	check(observation{}, "https://a.example.test/v2/webhooks/nexus/sync-appointments")
	e.Spec.Gateway.AllowInsecureHTTP = true
	e.Status.Endpoint = "http://a.example.test/v2/webhooks/nexus/sync-appointments"
	check(observation{}, "http://a.example.test/v2/webhooks/nexus/sync-appointments")
}

func TestServedVersions(t *testing.T) {
	v1, v2 := v1alpha1.SecretVersions{Credentials: "10", Database: "3"}, v1alpha1.SecretVersions{Credentials: "12", Database: "3"}
	dep := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Annotations: versionAnnotations(v2)}}}}
	now := time.Now()
	pod := func(v *v1alpha1.SecretVersions, phase corev1.PodPhase, terminating bool) corev1.Pod {
		p := corev1.Pod{Status: corev1.PodStatus{Phase: phase}}
		if v != nil {
			p.Annotations = versionAnnotations(*v)
		}
		if terminating { // in its grace period
			p.DeletionTimestamp = &metav1.Time{Time: now.Add(20 * time.Second)}
		}
		return p
	}
	lost := pod(&v1, corev1.PodRunning, false) // on a node gone: past its grace, still listed
	lost.DeletionTimestamp = &metav1.Time{Time: now.Add(-time.Minute)}
	for _, tc := range []struct {
		name   string
		pods   []corev1.Pod
		want   v1alpha1.SecretVersions
		wantOK bool
	}{
		{"no pod: the template's", nil, v2, true},
		{"all old", []corev1.Pod{pod(&v1, corev1.PodRunning, false), pod(&v1, corev1.PodRunning, false)}, v1, true},
		{"rolling", []corev1.Pod{pod(&v1, corev1.PodRunning, false), pod(&v2, corev1.PodPending, false)}, v1alpha1.SecretVersions{}, false},
		{"an old pod draining", []corev1.Pod{pod(&v2, corev1.PodRunning, false), pod(&v1, corev1.PodRunning, true)}, v1alpha1.SecretVersions{}, false},
		{"a pod of an older operator", []corev1.Pod{pod(&v2, corev1.PodRunning, false), pod(nil, corev1.PodRunning, false)}, v1alpha1.SecretVersions{}, false},
		{"all new, an old one ended", []corev1.Pod{pod(&v2, corev1.PodRunning, false), pod(&v1, corev1.PodFailed, false)}, v2, true},
		{"all new, an old one past its grace", []corev1.Pod{pod(&v2, corev1.PodRunning, false), lost}, v2, true},
	} {
		got, ok := servedVersions(tc.pods, dep, now)
		if got != tc.want || ok != tc.wantOK {
			t.Errorf("%s: %+v %v, want %+v %v", tc.name, got, ok, tc.want, tc.wantOK)
		}
	}
}

func TestCredentialLengths(t *testing.T) {
	long := strings.Repeat("k", v1alpha1.MinCredentialBytes)
	for _, tc := range []struct {
		name string
		data map[string]string
		bad  string // the key named, "" for none
	}{
		{"both long", map[string]string{"api-key": long, "webhook-secret": long}, ""},
		{"trailing newline not counted", map[string]string{"api-key": long[1:] + "\n", "webhook-secret": long}, "api-key"},
		{"short secret", map[string]string{"api-key": long, "webhook-secret": "s3cret"}, "webhook-secret"},
		{"short previous key", map[string]string{"api-key": long, "webhook-secret": long, "api-key-previous": "old"}, "api-key-previous"},
		{"short previous secret", map[string]string{"api-key": long, "webhook-secret": long, "webhook-secret-previous": "old"}, "webhook-secret-previous"},
		{"empty previous ones are none", map[string]string{"api-key": long, "webhook-secret": long, "api-key-previous": "", "webhook-secret-previous": ""}, ""},
		{"other keys not checked", map[string]string{"api-key": long, "webhook-secret": long, "note": "x"}, ""},
	} {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"}, Data: map[string][]byte{}}
		for k, v := range tc.data {
			s.Data[k] = []byte(v)
		}
		p := credentialLengths(s, "credentialsSecretRef")
		switch {
		case tc.bad == "" && p != nil:
			t.Errorf("%s: refused: %v", tc.name, p)
		case tc.bad != "" && (p == nil || p.reason != v1alpha1.ReasonCredentialTooShort || !strings.Contains(p.message, "key "+tc.bad+" ")):
			t.Errorf("%s: %v, want CredentialTooShort naming %s", tc.name, p, tc.bad)
		case p != nil && (strings.Contains(p.message, "s3cret") || strings.Contains(p.message, "old") || strings.Contains(p.message, "6")):
			t.Errorf("%s: the message tells something of the value: %q", tc.name, p.message)
		}
	}
}

// TestManagerDefaults: the manager's --receiver-log-level fills an unset
// spec.logLevel; the resource's own setting wins; the input is not changed.
func TestManagerDefaults(t *testing.T) {
	e := &v1alpha1.EHRIntegration{}
	for _, tt := range []struct{ manager, spec, want string }{
		{"", "", ""}, {"warn", "", "warn"}, {"warn", "debug", "debug"}, {"", "error", "error"},
	} {
		e.Spec.LogLevel = tt.spec
		r := &EHRIntegrationReconciler{ReceiverLogLevel: tt.manager}
		if got := r.withManagerDefaults(e).Spec.LogLevel; got != tt.want || e.Spec.LogLevel != tt.spec {
			t.Errorf("manager %q, spec %q: log level %q (input now %q), want %q", tt.manager, tt.spec, got, e.Spec.LogLevel, tt.want)
		}
	}
}
