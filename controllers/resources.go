package controllers

import (
	"fmt"
	"path"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"k8s.io/utils/ptr"

	"github.com/insighthealth/ehr-operator/api/v1alpha1"
)

// This file builds the desired child objects of an EHRIntegration (architecture.md, "What the operator makes") as apply configurations: exactly the fields the operator sets, which
// it then owns (apply.go). Every function here is pure: same input, same
// output, no client.

// Ports, paths and files the receiver is started with (architecture.md, "The request's path" and "Configuration and operation").
const (
	httpPort        = 8080
	metricsPort     = 9090
	httpPortName    = "http"
	metricsPortName = "metrics"

	receiverContainer = "receiver"
	// receiverBinary is the image's lean binary (cmd/ehr-receiver): the
	// receiver without the manager's dependencies, in the operator's image
	// beside /ehr-operator, the entrypoint.
	receiverBinary = "/ehr-receiver"
	// envMemoryLimit is the receiver's --memory-limit, in bytes.
	envMemoryLimit = "MEMORY_LIMIT"

	credentialsDir = "/etc/ehr-operator/credentials"
	databaseDir    = "/etc/ehr-operator/database"
	// databaseCADir holds spec.database.ca's certificate as databaseCAFile.
	databaseCADir  = "/etc/ehr-operator/database-ca"
	databaseCAFile = "ca.crt"

	// Keys of the credentials Secret.
	keyAPIKey                = "api-key"
	keyAPIKeyPrevious        = "api-key-previous"
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

	// The pod template carries the resourceVersions of the Secrets its pods
	// read, so that a change to one rolls the pods, and each pod says which
	// versions it was started with (status.servedSecretVersions). Versions,
	// not digests: nothing in them can be tested against a guessed secret.
	annotationCredentialsVersion = "ehr.insighthealth.io/credentials-secret-version"
	annotationDatabaseVersion    = "ehr.insighthealth.io/database-secret-version"
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
	if ca := s.Database.CA; ca != nil {
		for _, ref := range []*v1alpha1.CAKeyReference{ca.SecretKeyRef, ca.ConfigMapKeyRef} {
			if ref != nil && ref.Key == "" {
				ref.Key = v1alpha1.DefaultCAKey
			}
		}
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

// receiverArgs are the `ehr-receiver receiver` flags (architecture.md, "Configuration and operation"), exactly
// the receiver's own flag names.
func receiverArgs(e *v1alpha1.EHRIntegration) []string {
	e = withDefaults(e)
	s := e.Spec
	args := []string{
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
	if s.Database.CA != nil {
		args = append(args, "--database-ca-file="+path.Join(databaseCADir, databaseCAFile))
	}
	if s.LogLevel != "" {
		args = append(args, "--log-level="+s.LogLevel)
	}
	return append(args, retentionArgs(s.Retention)...)
}

// retentionArgs are the receiver's --retain-* flags, one per period set.
func retentionArgs(r *v1alpha1.RetentionSpec) []string {
	if r == nil {
		return nil
	}
	var args []string
	add := func(flag string, d *metav1.Duration) {
		if d != nil {
			args = append(args, "--"+flag+"="+d.Duration.String())
		}
	}
	add("retain-delivery-log", r.DeliveryLog)
	if q := r.Quarantine; q != nil {
		add("retain-quarantine-content", q.Content)
		add("retain-quarantine", q.Metadata)
	}
	add("retain-history", r.History)
	return args
}

// databaseCAVolume mounts only the CA's key, as databaseCAFile; nil
// without spec.database.ca. A change of the certificate reaches the
// mounted file without a restart, and each new connection reads it.
func databaseCAVolume(e *v1alpha1.EHRIntegration) *corev1ac.VolumeApplyConfiguration {
	ca := withDefaults(e).Spec.Database.CA
	if ca == nil {
		return nil
	}
	// A certificate, not a secret: readable to the receiver's user.
	const caMode int32 = 0o444
	v := corev1ac.Volume().WithName("database-ca")
	switch {
	case ca.SecretKeyRef != nil:
		return v.WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(ca.SecretKeyRef.Name).
			WithItems(corev1ac.KeyToPath().WithKey(ca.SecretKeyRef.Key).WithPath(databaseCAFile)).
			WithDefaultMode(caMode))
	case ca.ConfigMapKeyRef != nil:
		return v.WithConfigMap(corev1ac.ConfigMapVolumeSource().
			WithName(ca.ConfigMapKeyRef.Name).
			WithItems(corev1ac.KeyToPath().WithKey(ca.ConfigMapKeyRef.Key).WithPath(databaseCAFile)).
			WithDefaultMode(caMode))
	}
	return nil
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

// receiverResources are the receiver container's resources, key by key:
// each request and limit spec.resources sets, and the default of each it
// leaves out, so that setting a CPU request keeps the default memory limit
// (the receiver sizes its memory from it, and memoryProblem checks it).
// A limit the spec sets without its request brings the request to the
// same value, Kubernetes' own rule for a container (so limits alone keep
// their Guaranteed QoS). A default limit below a request the spec sets is
// raised to that request (a 1Gi memory request gets a 1Gi limit, not
// 256Mi). A request above a limit that the spec sets both of is left for
// the API server to refuse (ChildRejected). Claims are the spec's.
func receiverResources(e *v1alpha1.EHRIntegration) corev1.ResourceRequirements {
	out := defaultResources()
	r := e.Spec.Resources
	if r == nil {
		return out
	}
	for name, q := range r.Requests {
		out.Requests[name] = q.DeepCopy()
	}
	for name, q := range r.Limits {
		out.Limits[name] = q.DeepCopy()
	}
	for name, limit := range r.Limits {
		if _, set := r.Requests[name]; !set {
			out.Requests[name] = limit.DeepCopy()
		}
	}
	for name, limit := range out.Limits {
		if _, set := r.Limits[name]; set {
			continue
		}
		if request, ok := out.Requests[name]; ok && request.Cmp(limit) > 0 {
			out.Limits[name] = request.DeepCopy()
		}
	}
	if len(r.Claims) > 0 {
		out.Claims = make([]corev1.ResourceClaim, len(r.Claims))
		copy(out.Claims, r.Claims)
	}
	return out
}

// versionAnnotations are the pod template's annotations for Secrets at v.
func versionAnnotations(v v1alpha1.SecretVersions) map[string]string {
	return map[string]string{annotationCredentialsVersion: v.Credentials, annotationDatabaseVersion: v.Database}
}

// versionsOf reads the Secret versions from a pod's or template's
// annotations; false when they are not there (made by an older operator).
func versionsOf(annotations map[string]string) (v1alpha1.SecretVersions, bool) {
	c, okC := annotations[annotationCredentialsVersion]
	d, okD := annotations[annotationDatabaseVersion]
	return v1alpha1.SecretVersions{Credentials: c, Database: d}, okC && okD
}

// ownerReference makes e the controller of a child, as
// controllerutil.SetControllerReference would.
func ownerReference(e *v1alpha1.EHRIntegration) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(v1alpha1.GroupVersion.String()).
		WithKind("EHRIntegration").
		WithName(e.Name).
		WithUID(e.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

// buildServiceAccount makes the receiver's ServiceAccount; the receiver
// never talks to the Kubernetes API, so no token is mounted.
func buildServiceAccount(e *v1alpha1.EHRIntegration) *corev1ac.ServiceAccountApplyConfiguration {
	sa := corev1ac.ServiceAccount(childName(e), e.Namespace).
		WithLabels(commonLabels(e)).
		WithOwnerReferences(ownerReference(e)).
		WithAutomountServiceAccountToken(false)
	if a := serviceAccountAnnotations(e.Spec.PodTemplate); len(a) > 0 {
		sa.WithAnnotations(a)
	}
	return sa
}

// resourcesConfig is r as an apply configuration; an empty list is left
// out, so that it is not owned.
func resourcesConfig(r corev1.ResourceRequirements) *corev1ac.ResourceRequirementsApplyConfiguration {
	out := corev1ac.ResourceRequirements()
	if len(r.Limits) > 0 {
		out.WithLimits(r.Limits.DeepCopy())
	}
	if len(r.Requests) > 0 {
		out.WithRequests(r.Requests.DeepCopy())
	}
	for _, c := range r.Claims {
		claim := corev1ac.ResourceClaim().WithName(c.Name)
		if c.Request != "" {
			claim.WithRequest(c.Request)
		}
		out.WithClaims(claim)
	}
	return out
}

// credentialsVolume mounts only the keys of the credentials Secret that
// the receiver reads, each as a file of its name: SREs keep other
// systems' passwords in such Secrets. Projected, with two sources of the
// same Secret: the current keys must be there (a missing one fails the
// mount, as the whole Secret's absence does), while each previous key is
// optional, which a secret volume could only say of every key and of the
// Secret itself. The kubelet refreshes the files like a secret volume's.
func credentialsVolume(secretName string, mode int32) *corev1ac.VolumeApplyConfiguration {
	items := func(keys ...string) []*corev1ac.KeyToPathApplyConfiguration {
		out := make([]*corev1ac.KeyToPathApplyConfiguration, 0, len(keys))
		for _, k := range keys {
			out = append(out, corev1ac.KeyToPath().WithKey(k).WithPath(k))
		}
		return out
	}
	return corev1ac.Volume().WithName("credentials").WithProjected(corev1ac.ProjectedVolumeSource().
		WithSources(
			corev1ac.VolumeProjection().WithSecret(corev1ac.SecretProjection().
				WithName(secretName).
				WithItems(items(keyAPIKey, keyWebhookSecret)...)),
			corev1ac.VolumeProjection().WithSecret(corev1ac.SecretProjection().
				WithName(secretName).
				WithItems(items(keyAPIKeyPrevious, keyWebhookSecretPrevious)...).
				WithOptional(true))).
		// As before, 0440 for the fsGroup: the API server's default, 0644,
		// would let every user of the container read them.
		WithDefaultMode(mode))
}

// preStopSleepSeconds is how long a terminating receiver keeps serving
// before SIGTERM, so that endpoint removal reaches every proxy first.
const preStopSleepSeconds = 5

// receiverShutdownSeconds is receiver.ShutdownBudget (a test keeps them
// equal; the operator does not link the receiver's package for it).
const receiverShutdownSeconds = 65

// buildDeployment makes the receiver's Deployment running image, with the
// pod template annotated with the versions of the Secrets it reads.
func buildDeployment(e *v1alpha1.EHRIntegration, image string, versions v1alpha1.SecretVersions) *appsv1ac.DeploymentApplyConfiguration {
	e = withDefaults(e)
	s := e.Spec
	resources := receiverResources(e)
	const secretMode int32 = 0o440
	probe := func(path string, period, failures int32) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().
				WithPath(path).
				WithPort(intstr.FromString(metricsPortName)).
				WithScheme(corev1.URISchemeHTTP)).
			WithPeriodSeconds(period).
			WithTimeoutSeconds(2).
			WithSuccessThreshold(1).
			WithFailureThreshold(failures)
	}
	container := corev1ac.Container().
		WithName(receiverContainer).
		WithImage(image).
		WithCommand(receiverBinary).
		WithArgs(receiverArgs(e)...).
		WithPorts(
			corev1ac.ContainerPort().WithName(httpPortName).WithContainerPort(httpPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName(metricsPortName).WithContainerPort(metricsPort).WithProtocol(corev1.ProtocolTCP),
		).
		WithResources(resourcesConfig(resources)).
		// The receiver sizes its Go memory limit and its in-flight body
		// budget from the container's memory limit (the node's allocatable
		// memory when the container has none).
		WithEnv(corev1ac.EnvVar().WithName(envMemoryLimit).WithValueFrom(corev1ac.EnvVarSource().
			WithResourceFieldRef(corev1ac.ResourceFieldSelector().
				WithContainerName(receiverContainer).
				WithResource("limits.memory").
				WithDivisor(resource.MustParse("1"))))).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("credentials").WithMountPath(credentialsDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("database").WithMountPath(databaseDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("tmp").WithMountPath("/tmp"),
		).
		// The receiver migrates in the background, so the startup probe
		// covers only the process starting; liveness counts after 30 s.
		WithStartupProbe(probe("/healthz", 1, 30)).
		WithLivenessProbe(probe("/healthz", 10, 3)).
		WithReadinessProbe(probe("/readyz", 5, 2)).
		// A terminating pod keeps serving while Services and Ingresses stop
		// sending it traffic; only then does SIGTERM make it drain and exit.
		WithLifecycle(corev1ac.Lifecycle().WithPreStop(corev1ac.LifecycleHandler().
			WithSleep(corev1ac.SleepAction().WithSeconds(preStopSleepSeconds)))).
		WithSecurityContext(corev1ac.SecurityContext().
			WithRunAsNonRoot(true).
			WithReadOnlyRootFilesystem(true).
			WithAllowPrivilegeEscalation(false).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault)))

	caVolume := databaseCAVolume(e)
	if caVolume != nil {
		container.WithVolumeMounts(corev1ac.VolumeMount().WithName(*caVolume.Name).WithMountPath(databaseCADir).WithReadOnly(true))
	}

	pod := corev1ac.PodSpec().
		WithServiceAccountName(childName(e)).
		WithAutomountServiceAccountToken(false).
		WithEnableServiceLinks(false).
		// The preStop sleep, then the receiver's shutdown on SIGTERM
		// (receiver.ShutdownBudget: the drain of in-flight requests, the
		// delivery log, the store).
		WithTerminationGracePeriodSeconds(preStopSleepSeconds+receiverShutdownSeconds).
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(receiverUID).
			WithRunAsGroup(receiverUID).
			WithFSGroup(receiverUID).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
		WithContainers(container).
		WithVolumes(
			credentialsVolume(s.CredentialsSecretRef.Name, secretMode),
			// Only the URL's key: a CloudNativePG app Secret also holds the
			// password and more.
			corev1ac.Volume().WithName("database").WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(s.Database.SecretRef.Name).
				WithItems(corev1ac.KeyToPath().WithKey(s.Database.SecretRef.Key).WithPath(s.Database.SecretRef.Key)).
				WithDefaultMode(secretMode)),
			corev1ac.Volume().WithName("tmp").WithEmptyDir(corev1ac.EmptyDirVolumeSource().
				WithSizeLimit(resource.MustParse("16Mi"))),
		).
		// Spread the replicas over nodes when the cluster can.
		WithTopologySpreadConstraints(corev1ac.TopologySpreadConstraint().
			WithMaxSkew(1).
			WithTopologyKey(corev1.LabelHostname).
			WithWhenUnsatisfiable(corev1.ScheduleAnyway).
			WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(e))))
	if caVolume != nil {
		pod.WithVolumes(caVolume)
	}
	// The resource's and the manager's settings first, so that the
	// operator's own labels and annotations win.
	tmpl := corev1ac.PodTemplateSpec()
	applyPodTemplate(s.PodTemplate, tmpl, pod)

	return appsv1ac.Deployment(childName(e), e.Namespace).
		WithLabels(commonLabels(e)).
		WithOwnerReferences(ownerReference(e)).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(desiredReplicas(e)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(e))).
			// Keep every replica serving while new pods start.
			WithStrategy(appsv1ac.DeploymentStrategy().
				WithType(appsv1.RollingUpdateDeploymentStrategyType).
				WithRollingUpdate(appsv1ac.RollingUpdateDeployment().
					WithMaxUnavailable(intstr.FromInt32(0)).
					WithMaxSurge(intstr.FromInt32(1)))).
			WithTemplate(tmpl.
				WithLabels(commonLabels(e)).
				WithAnnotations(versionAnnotations(versions)).
				WithSpec(pod)))
}

// buildService makes the receiver's ClusterIP Service: webhooks on http,
// Prometheus on metrics.
func buildService(e *v1alpha1.EHRIntegration) *corev1ac.ServiceApplyConfiguration {
	port := func(name string, number int32) *corev1ac.ServicePortApplyConfiguration {
		return corev1ac.ServicePort().WithName(name).WithPort(number).
			WithTargetPort(intstr.FromString(name)).WithProtocol(corev1.ProtocolTCP)
	}
	return corev1ac.Service(childName(e), e.Namespace).
		WithLabels(commonLabels(e)).
		WithOwnerReferences(ownerReference(e)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithSelector(selectorLabels(e)).
			WithPorts(port(httpPortName, httpPort), port(metricsPortName, metricsPort)))
}

// webhookPathPrefix is the only path the Ingress routes, so /metrics and
// the probes never leave the cluster.
func webhookPathPrefix(e *v1alpha1.EHRIntegration) string {
	return "/v2/webhooks/" + e.Spec.EHR + "/"
}

// buildIngress makes the receiver's Ingress, or returns nil when e asks
// for none.
func buildIngress(e *v1alpha1.EHRIntegration) *networkingv1ac.IngressApplyConfiguration {
	in := e.Spec.Ingress
	if in == nil {
		return nil
	}
	spec := networkingv1ac.IngressSpec().
		WithRules(networkingv1ac.IngressRule().
			WithHost(in.Host).
			WithHTTP(networkingv1ac.HTTPIngressRuleValue().
				WithPaths(networkingv1ac.HTTPIngressPath().
					WithPath(webhookPathPrefix(e)).
					WithPathType(networkingv1.PathTypePrefix).
					WithBackend(networkingv1ac.IngressBackend().
						WithService(networkingv1ac.IngressServiceBackend().
							WithName(childName(e)).
							WithPort(networkingv1ac.ServiceBackendPort().WithName(httpPortName)))))))
	if in.ClassName != "" {
		spec.WithIngressClassName(in.ClassName)
	}
	if in.TLSSecretName != "" {
		spec.WithTLS(networkingv1ac.IngressTLS().WithHosts(in.Host).WithSecretName(in.TLSSecretName))
	}
	ing := networkingv1ac.Ingress(childName(e), e.Namespace).
		WithLabels(commonLabels(e)).
		WithOwnerReferences(ownerReference(e)).
		WithSpec(spec)
	if len(in.Annotations) > 0 {
		ing.WithAnnotations(in.Annotations)
	}
	return ing
}

// buildPDB keeps one receiver pod up during voluntary disruptions, or
// returns nil when the Deployment runs one replica or none (a PDB would
// then block node drains). replicas is the Deployment's: the spec's, or
// an autoscaler's with the external-replicas annotation.
func buildPDB(e *v1alpha1.EHRIntegration, replicas int32) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	if replicas <= 1 {
		return nil
	}
	return policyv1ac.PodDisruptionBudget(childName(e), e.Namespace).
		WithLabels(commonLabels(e)).
		WithOwnerReferences(ownerReference(e)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMinAvailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selectorLabels(e))).
			// A crash-looping pod must not block a node drain.
			WithUnhealthyPodEvictionPolicy(policyv1.AlwaysAllow))
}

// endpointURL is where the EHR posts: through the Ingress or the Gateway
// (its first hostname) with scheme when there is one, otherwise the
// Service's in-cluster address.
func endpointURL(e *v1alpha1.EHRIntegration, scheme string) string {
	p := webhookPathPrefix(e) + "sync-appointments"
	if e.Spec.Ingress != nil {
		return scheme + "://" + e.Spec.Ingress.Host + p
	}
	if e.Spec.Gateway != nil && len(e.Spec.Gateway.Hostnames) > 0 {
		return scheme + "://" + e.Spec.Gateway.Hostnames[0] + p
	}
	return fmt.Sprintf("http://%s.%s.svc:%d%s", childName(e), e.Namespace, httpPort, p)
}
