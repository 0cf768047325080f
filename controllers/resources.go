package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// This file builds the desired child objects of an EHRIntegration (DESIGN
// §4). Every function here is pure: same input, same output, no client.

// Ports, paths and files the receiver is started with (DESIGN §5, §7).
const (
	httpPort        = 8080
	metricsPort     = 9090
	httpPortName    = "http"
	metricsPortName = "metrics"

	credentialsDir = "/etc/ehr-operator/credentials"
	databaseDir    = "/etc/ehr-operator/database"

	// Keys of the credentials Secret.
	keyAPIKey                = "api-key"
	keyWebhookSecret         = "webhook-secret"
	keyWebhookSecretPrevious = "webhook-secret-previous"

	// receiverUID is the distroless "nonroot" user; runAsNonRoot needs a
	// numeric user, and fsGroup makes the mounted Secret files readable to it.
	receiverUID int64 = 65532
)

// Labels and annotations the operator puts on what it makes.
const (
	labelName      = "app.kubernetes.io/name"
	labelInstance  = "app.kubernetes.io/instance"
	labelComponent = "app.kubernetes.io/component"
	labelPartOf    = "app.kubernetes.io/part-of"
	labelManagedBy = "app.kubernetes.io/managed-by"
	labelEHR       = "ehr.insighthealth.io/ehr"

	receiverAppName = "ehr-receiver"
	operatorName    = "ehr-operator"

	// annotationSecretsHash on the pod template holds a hash of the data the
	// receiver reads from its Secrets, so a rotation rolls the pods.
	annotationSecretsHash = "ehr.insighthealth.io/secrets-hash"
	// annotationManagedAnnotations on the Ingress lists the annotation keys
	// that came from spec.ingress.annotations, so one removed from the spec
	// is removed from the Ingress while annotations others add are kept.
	annotationManagedAnnotations = "ehr.insighthealth.io/managed-annotations"
	// annotationAppliedHash on every child is a hash of the fields the
	// operator last wrote (see apply).
	annotationAppliedHash = "ehr.insighthealth.io/applied-hash"
)

// childName is the name of every object made for e: stable, so Ingresses,
// dashboards and alerts can refer to it.
func childName(e *v1alpha1.EHRIntegration) string { return e.Name + "-receiver" }

// selectorLabels select e's receiver pods. They never change, as a
// Deployment's selector is immutable.
func selectorLabels(e *v1alpha1.EHRIntegration) map[string]string {
	return map[string]string{labelName: receiverAppName, labelInstance: e.Name}
}

// commonLabels go on every child and on the receiver pods.
func commonLabels(e *v1alpha1.EHRIntegration) map[string]string {
	l := selectorLabels(e)
	l[labelComponent] = "receiver"
	l[labelPartOf] = operatorName
	l[labelManagedBy] = operatorName
	l[labelEHR] = e.Spec.EHR
	return l
}

func objectMeta(e *v1alpha1.EHRIntegration) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: childName(e), Namespace: e.Namespace, Labels: commonLabels(e)}
}

// withDefaults returns a copy of e with the API's defaults filled in where a
// client (or a test) left fields empty; the API server normally did so.
func withDefaults(e *v1alpha1.EHRIntegration) *v1alpha1.EHRIntegration {
	e = e.DeepCopy()
	s := &e.Spec
	if s.TimeZone == "" {
		s.TimeZone = v1alpha1.DefaultTimeZone
	}
	if s.Replicas == nil {
		s.Replicas = ptr.To(v1alpha1.DefaultReplicas)
	}
	if s.Database.SecretRef.Key == "" {
		s.Database.SecretRef.Key = v1alpha1.DefaultDatabaseKey
	}
	if s.OnInvalid == "" {
		s.OnInvalid = v1alpha1.OnInvalidReject
	}
	if s.Limits == nil {
		s.Limits = &v1alpha1.LimitsSpec{}
	}
	l := s.Limits
	if l.MaxBodyBytes == 0 {
		l.MaxBodyBytes = v1alpha1.DefaultMaxBodyBytes
	}
	if l.MaxBatchSize == 0 {
		l.MaxBatchSize = v1alpha1.DefaultMaxBatchSize
	}
	if l.RequestsPerSecond == 0 {
		l.RequestsPerSecond = v1alpha1.DefaultRequestsPerSecond
	}
	if l.Burst == 0 {
		l.Burst = v1alpha1.DefaultBurst
	}
	return e
}

// desiredReplicas is the number of receiver pods e asks for.
func desiredReplicas(e *v1alpha1.EHRIntegration) int32 {
	if e.Spec.Suspend {
		return 0
	}
	return *withDefaults(e).Spec.Replicas
}

// receiverArgs are the `ehr-operator receiver` flags (DESIGN §7), exactly
// the receiver's own flag names.
func receiverArgs(e *v1alpha1.EHRIntegration) []string {
	e = withDefaults(e)
	s := e.Spec
	return []string{
		"receiver",
		"--ehr=" + s.EHR,
		"--database-url-file=" + path.Join(databaseDir, s.Database.SecretRef.Key),
		"--credentials-dir=" + credentialsDir,
		"--time-zone=" + s.TimeZone,
		"--max-body-bytes=" + strconv.FormatInt(s.Limits.MaxBodyBytes, 10),
		"--max-batch-size=" + strconv.FormatInt(int64(s.Limits.MaxBatchSize), 10),
		"--requests-per-second=" + strconv.FormatInt(int64(s.Limits.RequestsPerSecond), 10),
		"--burst=" + strconv.FormatInt(int64(s.Limits.Burst), 10),
		"--on-invalid=" + string(s.OnInvalid),
		"--listen=:" + strconv.Itoa(httpPort),
		"--metrics-listen=:" + strconv.Itoa(metricsPort),
		"--migrate=true",
	}
}

// defaultResources fit one receiver handling a few hundred requests a
// second; no CPU limit, so bursts are not throttled.
func defaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("50m"),
			corev1.ResourceMemory: resource.MustParse("64Mi"),
		},
		Limits: corev1.ResourceList{
			corev1.ResourceMemory: resource.MustParse("256Mi"),
		},
	}
}

// secretsHash hashes exactly the Secret data the receiver reads (keys in a
// fixed order, each length-prefixed), so that rotating a credential or the
// database URL changes it and unrelated keys do not.
func secretsHash(creds, db *corev1.Secret, dbKey string) string {
	h := sha256.New()
	write := func(secret *corev1.Secret, key string) {
		v, ok := secret.Data[key]
		_, _ = fmt.Fprintf(h, "%s/%s:%t:%d:", secret.Name, key, ok, len(v))
		_, _ = h.Write(v)
	}
	keys := []string{keyAPIKey, keyWebhookSecret, keyWebhookSecretPrevious}
	sort.Strings(keys)
	for _, k := range keys {
		write(creds, k)
	}
	write(db, dbKey)
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// buildServiceAccount makes the receiver's ServiceAccount; the receiver
// never talks to the Kubernetes API, so no token is mounted.
func buildServiceAccount(e *v1alpha1.EHRIntegration) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		ObjectMeta:                   objectMeta(e),
		AutomountServiceAccountToken: ptr.To(false),
	}
}

// buildDeployment makes the receiver's Deployment running image, with the
// pod template annotated with the Secrets' hash.
// preStopSleepSeconds is how long a terminating receiver keeps serving
// before SIGTERM, so that endpoint removal reaches every proxy first.
const preStopSleepSeconds = 5

func buildDeployment(e *v1alpha1.EHRIntegration, image, hash string) *appsv1.Deployment {
	e = withDefaults(e)
	s := e.Spec
	resources := defaultResources()
	if s.Resources != nil {
		resources = *s.Resources.DeepCopy()
	}
	secretMode := ptr.To[int32](0o440)
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path:   path,
				Port:   intstr.FromString(metricsPortName),
				Scheme: corev1.URISchemeHTTP,
			}},
			PeriodSeconds:    period,
			TimeoutSeconds:   2,
			SuccessThreshold: 1,
			FailureThreshold: failures,
		}
	}
	container := corev1.Container{
		Name:  "receiver",
		Image: image,
		Args:  receiverArgs(e),
		Ports: []corev1.ContainerPort{
			{Name: httpPortName, ContainerPort: httpPort, Protocol: corev1.ProtocolTCP},
			{Name: metricsPortName, ContainerPort: metricsPort, Protocol: corev1.ProtocolTCP},
		},
		Resources: resources,
		VolumeMounts: []corev1.VolumeMount{
			{Name: "credentials", MountPath: credentialsDir, ReadOnly: true},
			{Name: "database", MountPath: databaseDir, ReadOnly: true},
			{Name: "tmp", MountPath: "/tmp"},
		},
		// The receiver migrates the database before it serves; give it two
		// minutes before liveness counts.
		StartupProbe:   probe("/healthz", 2, 60),
		LivenessProbe:  probe("/healthz", 10, 3),
		ReadinessProbe: probe("/readyz", 5, 2),
		// A terminating pod keeps serving while Services and Ingresses stop
		// sending it traffic; only then does SIGTERM make it drain and exit.
		Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
			Sleep: &corev1.SleepAction{Seconds: preStopSleepSeconds},
		}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	return &appsv1.Deployment{
		ObjectMeta: objectMeta(e),
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(desiredReplicas(e)),
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(e)},
			// Keep every replica serving while new pods start.
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					MaxUnavailable: ptr.To(intstr.FromInt32(0)),
					MaxSurge:       ptr.To(intstr.FromInt32(1)),
				},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      commonLabels(e),
					Annotations: map[string]string{annotationSecretsHash: hash},
				},
				Spec: corev1.PodSpec{
					ServiceAccountName:           childName(e),
					AutomountServiceAccountToken: ptr.To(false),
					EnableServiceLinks:           ptr.To(false),
					// The preStop sleep, then the receiver's drain of in-flight
					// requests (at most 30 s) on SIGTERM.
					TerminationGracePeriodSeconds: ptr.To[int64](preStopSleepSeconds + 40),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   ptr.To(true),
						RunAsUser:      ptr.To(receiverUID),
						RunAsGroup:     ptr.To(receiverUID),
						FSGroup:        ptr.To(receiverUID),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{container},
					Volumes: []corev1.Volume{
						{Name: "credentials", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
							SecretName:  s.CredentialsSecretRef.Name,
							DefaultMode: secretMode,
						}}},
						// Only the URL's key: a CloudNativePG app Secret also
						// holds the password and more.
						{Name: "database", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
							SecretName:  s.Database.SecretRef.Name,
							Items:       []corev1.KeyToPath{{Key: s.Database.SecretRef.Key, Path: s.Database.SecretRef.Key}},
							DefaultMode: secretMode,
						}}},
						{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
							SizeLimit: ptr.To(resource.MustParse("16Mi")),
						}}},
					},
					// Spread the replicas over nodes when the cluster can.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew:           1,
						TopologyKey:       corev1.LabelHostname,
						WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: selectorLabels(e)},
					}},
				},
			},
		},
	}
}

// buildService makes the receiver's ClusterIP Service: webhooks on http,
// Prometheus on metrics.
func buildService(e *v1alpha1.EHRIntegration) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: objectMeta(e),
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: selectorLabels(e),
			Ports: []corev1.ServicePort{
				{Name: httpPortName, Port: httpPort, TargetPort: intstr.FromString(httpPortName), Protocol: corev1.ProtocolTCP},
				{Name: metricsPortName, Port: metricsPort, TargetPort: intstr.FromString(metricsPortName), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// webhookPathPrefix is the only path the Ingress routes, so /metrics and
// the probes never leave the cluster.
func webhookPathPrefix(e *v1alpha1.EHRIntegration) string {
	return "/v2/webhooks/" + e.Spec.EHR + "/"
}

// buildIngress makes the receiver's Ingress, or returns nil when e asks
// for none.
func buildIngress(e *v1alpha1.EHRIntegration) *networkingv1.Ingress {
	in := e.Spec.Ingress
	if in == nil {
		return nil
	}
	meta := objectMeta(e)
	meta.Annotations = map[string]string{annotationManagedAnnotations: managedAnnotationKeys(in.Annotations)}
	for k, v := range in.Annotations {
		meta.Annotations[k] = v
	}
	ing := &networkingv1.Ingress{
		ObjectMeta: meta,
		Spec: networkingv1.IngressSpec{
			Rules: []networkingv1.IngressRule{{
				Host: in.Host,
				IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
					Paths: []networkingv1.HTTPIngressPath{{
						Path:     webhookPathPrefix(e),
						PathType: ptr.To(networkingv1.PathTypePrefix),
						Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
							Name: childName(e),
							Port: networkingv1.ServiceBackendPort{Name: httpPortName},
						}},
					}},
				}},
			}},
		},
	}
	if in.ClassName != "" {
		ing.Spec.IngressClassName = ptr.To(in.ClassName)
	}
	if in.TLSSecretName != "" {
		ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{in.Host}, SecretName: in.TLSSecretName}}
	}
	return ing
}

// managedAnnotationKeys lists the keys of m, sorted, comma-separated.
func managedAnnotationKeys(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

// buildPDB keeps one receiver pod up during voluntary disruptions, or
// returns nil when e asks for one replica or none (a PDB would then block
// node drains).
func buildPDB(e *v1alpha1.EHRIntegration) *policyv1.PodDisruptionBudget {
	if desiredReplicas(e) <= 1 {
		return nil
	}
	return &policyv1.PodDisruptionBudget{
		ObjectMeta: objectMeta(e),
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: ptr.To(intstr.FromInt32(1)),
			Selector:     &metav1.LabelSelector{MatchLabels: selectorLabels(e)},
			// A crash-looping pod must not block a node drain.
			UnhealthyPodEvictionPolicy: ptr.To(policyv1.AlwaysAllow),
		},
	}
}

// endpointURL is where the EHR posts: through the Ingress when there is
// one, otherwise the Service's in-cluster address.
func endpointURL(e *v1alpha1.EHRIntegration) string {
	p := webhookPathPrefix(e) + "sync-appointments"
	if e.Spec.Ingress != nil {
		return "https://" + e.Spec.Ingress.Host + p
	}
	return fmt.Sprintf("http://%s.%s.svc:%d%s", childName(e), e.Namespace, httpPort, p)
}
