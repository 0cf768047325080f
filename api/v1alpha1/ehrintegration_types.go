/*
Copyright 2026 Insight Health.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EHRIntegrationSpec is what the platform team asks for: one webhook receiver
// for one EHR vendor, with its credentials, database and limits.
// +kubebuilder:validation:XValidation:rule="!(has(self.ingress) && has(self.gateway))",message="spec.ingress and spec.gateway are mutually exclusive: expose the receiver by an Ingress or by a Gateway API HTTPRoute, not both"
type EHRIntegrationSpec struct {
	// ehr is the EHR's identifier, the {ehr} segment of
	// POST /v2/webhooks/{ehr}/sync-appointments, e.g. nexus or medicat.
	// It is a DNS label and cannot be changed once set. Only one
	// EHRIntegration in the cluster (in the operator's watched namespaces)
	// serves an ehr: a newer one with the same ehr says DuplicateEHR and
	// runs no receiver pod until the older one is deleted.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="ehr is immutable; create a new EHRIntegration instead"
	EHR string `json:"ehr"`

	// credentialsSecretRef names the Secret, in this namespace, that holds the
	// EHR's credentials under the keys api-key and webhook-secret, and
	// optionally api-key-previous and webhook-secret-previous while one is
	// rotated (the receiver then accepts either). Each value must be at
	// least 32 bytes.
	// +required
	CredentialsSecretRef SecretReference `json:"credentialsSecretRef"`

	// database says where the appointments are stored.
	// +required
	Database DatabaseSpec `json:"database"`

	// timeZone is the IANA time zone the EHR's MM/DD/YYYY HH:MM times are in,
	// e.g. America/New_York.
	// +optional
	// +kubebuilder:default=UTC
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$`
	// +kubebuilder:validation:XValidation:rule="self != 'Local'",message="timeZone must be an IANA zone name such as America/New_York, not Local"
	TimeZone string `json:"timeZone,omitempty"`

	// replicas is the number of receiver pods. A PodDisruptionBudget keeping
	// one pod available is made when it is greater than 1.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=50
	Replicas *int32 `json:"replicas,omitempty"`

	// image overrides the receiver's container image. By default the
	// receivers run the operator's own image, so both are the same version.
	// The container runs /ehr-receiver, which the image must hold (the
	// operator's images do).
	// +optional
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[^\s]+$`
	Image string `json:"image,omitempty"`

	// resources are the receiver container's compute resources, merged key
	// by key with the defaults: each request and limit left out keeps its
	// default (requests 50m CPU and 64Mi memory, a 256Mi memory limit, no
	// CPU limit), so setting only a CPU request keeps the memory limit the
	// receiver sizes its memory from. A limit set here without its request
	// brings the request to the same value, as Kubernetes does; a default
	// limit below a request set here is raised to that request.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// ingress exposes the receiver at its own host through an Ingress.
	// Without it (or gateway) the receiver is reachable only inside the
	// cluster. Mutually exclusive with gateway.
	// +optional
	Ingress *IngressSpec `json:"ingress,omitempty"`

	// gateway exposes the receiver through Gateway API Gateways: the
	// operator makes an HTTPRoute attached to them. Mutually exclusive with
	// ingress.
	// +optional
	Gateway *GatewaySpec `json:"gateway,omitempty"`

	// limits bound what one EHR may send.
	// +optional
	// +kubebuilder:default={}
	Limits *LimitsSpec `json:"limits,omitempty"`

	// onInvalid says what happens to a batch with invalid entries: Reject
	// answers 422 and writes nothing; Quarantine writes the valid entries,
	// keeps the invalid ones in a quarantine table and answers 200.
	// +optional
	// +kubebuilder:default=Reject
	OnInvalid OnInvalidPolicy `json:"onInvalid,omitempty"`

	// retention says how long this EHR's rows are kept in the database; the
	// receivers apply it hourly. Unset (the default), everything is kept.
	// +optional
	Retention *RetentionSpec `json:"retention,omitempty"`

	// logLevel is the receivers' log level (debug, info, warn, error). Unset,
	// the manager's --receiver-log-level applies (the chart's
	// receiverLogLevel), else info.
	// +optional
	// +kubebuilder:validation:Enum=debug;info;warn;error
	LogLevel string `json:"logLevel,omitempty"`
	// monitoring tunes, for this integration, the alerts the chart ships.
	// +optional
	Monitoring *MonitoringSpec `json:"monitoring,omitempty"`

	// podTemplate adds scheduling, image pull and metadata settings to the
	// receiver pods and their ServiceAccount. The manager's defaults (the
	// chart's receivers.podTemplate) apply where it says nothing: maps merge
	// key by key, this resource's value winning; lists, affinity and
	// priorityClassName set here replace the defaults' whole.
	// +optional
	PodTemplate *ReceiverPodTemplate `json:"podTemplate,omitempty"`

	// suspend scales the receiver to zero pods and stops reconciling its
	// other objects until it is set back to false.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// ReceiverPodTemplate is what a receiver's pods get besides what the
// operator sets, as in a Deployment's pod template. Keys the operator sets
// itself (its app.kubernetes.io/ labels, which select the pods, and every
// ehr.insighthealth.io/ key) are refused.
type ReceiverPodTemplate struct {
	// labels are added to the receiver pods (not to the Deployment's
	// selector).
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/part-of', 'app.kubernetes.io/managed-by']) && !k.startsWith('ehr.insighthealth.io/'))",messageExpression="'label ' + self.filter(k, k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/part-of', 'app.kubernetes.io/managed-by'] || k.startsWith('ehr.insighthealth.io/'))[0] + ' is set by the operator (it selects or identifies the receiver pods) and may not be set in podTemplate.labels'"
	Labels map[string]string `json:"labels,omitempty"`

	// annotations are added to the receiver pods.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, !k.startsWith('ehr.insighthealth.io/'))",messageExpression="'annotation ' + self.filter(k, k.startsWith('ehr.insighthealth.io/'))[0] + ' is in the ehr.insighthealth.io/ prefix, which the operator uses (it records there the Secret versions the pods read), and may not be set in podTemplate.annotations'"
	Annotations map[string]string `json:"annotations,omitempty"`

	// imagePullSecrets name Secrets, in this namespace, of type
	// kubernetes.io/dockerconfigjson used to pull the receiver's image from
	// a private registry.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	ImagePullSecrets []corev1.LocalObjectReference `json:"imagePullSecrets,omitempty"`

	// nodeSelector restricts the receiver pods to nodes with these labels.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// tolerations let the receiver pods run on tainted nodes.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// affinity is the receiver pods' node and pod (anti-)affinity.
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`

	// topologySpreadConstraints replace the operator's own, which spreads
	// the replicas over nodes (kubernetes.io/hostname, ScheduleAnyway).
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`

	// priorityClassName is the receiver pods' PriorityClass.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// serviceAccount adds to the receiver's ServiceAccount.
	// +optional
	ServiceAccount *ReceiverServiceAccount `json:"serviceAccount,omitempty"`
}

// ReceiverServiceAccount is what the receiver's ServiceAccount gets besides
// what the operator sets.
type ReceiverServiceAccount struct {
	// annotations are added to the ServiceAccount as they are, for what the
	// platform reads there (ownership, policy). The receiver does nothing
	// with them: it logs in to PostgreSQL with its database URL only.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	Annotations map[string]string `json:"annotations,omitempty"`
}

// SecretReference names a Secret in the EHRIntegration's namespace.
type SecretReference struct {
	// name is the Secret's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`
}

// SecretKeyReference names one key of a Secret in the EHRIntegration's
// namespace.
type SecretKeyReference struct {
	// name is the Secret's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// key is the key in the Secret's data.
	// +optional
	// +kubebuilder:default=uri
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	// +kubebuilder:validation:XValidation:rule="self != '.' && self != '..'",message="key may not be . or .."
	Key string `json:"key,omitempty"`
}

// DatabaseSpec says where the receiver stores appointments.
type DatabaseSpec struct {
	// secretRef names the Secret key holding a postgres:// connection URL,
	// e.g. the uri key of a CloudNativePG "<cluster>-app" Secret.
	// +required
	SecretRef SecretKeyReference `json:"secretRef"`

	// ca names the PEM certificate of the CA that signs the database
	// server's certificate, in a Secret or a ConfigMap. It is mounted into
	// the receiver, which verifies the server against it: the URL's
	// sslmode must then be verify-full (the default when it has none),
	// verify-ca or require.
	// +optional
	CA *DatabaseCA `json:"ca,omitempty"`
}

// DatabaseCA names one key of a Secret or of a ConfigMap in the
// EHRIntegration's namespace.
// +kubebuilder:validation:XValidation:rule="has(self.secretKeyRef) != has(self.configMapKeyRef)",message="set exactly one of secretKeyRef and configMapKeyRef"
type DatabaseCA struct {
	// secretKeyRef names the Secret key holding the CA certificate.
	// +optional
	SecretKeyRef *CAKeyReference `json:"secretKeyRef,omitempty"`

	// configMapKeyRef names the ConfigMap key holding the CA certificate.
	// +optional
	ConfigMapKeyRef *CAKeyReference `json:"configMapKeyRef,omitempty"`
}

// CAKeyReference names the key of a CA certificate in a Secret or ConfigMap.
type CAKeyReference struct {
	// name is the Secret's or ConfigMap's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// key is the key holding the PEM certificate.
	// +optional
	// +kubebuilder:default=ca.crt
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	// +kubebuilder:validation:XValidation:rule="self != '.' && self != '..'",message="key may not be . or .."
	Key string `json:"key,omitempty"`
}

// IngressSpec describes the receiver's Ingress.
// +kubebuilder:validation:XValidation:rule="(has(self.tlsSecretName) && self.tlsSecretName.size() > 0) || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP)",message="spec.ingress.tlsSecretName is required: name the Secret holding the host's certificate (cert-manager can fill it), or set spec.ingress.allowInsecureHTTP: true to serve plain HTTP"
type IngressSpec struct {
	// host is the DNS name the EHR posts to, e.g. nexus.webhooks.example.com.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Host string `json:"host"`

	// className is the IngressClass to use; the cluster's default class when
	// unset.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	ClassName string `json:"className,omitempty"`

	// annotations are added to the Ingress, e.g. for the ingress controller
	// or cert-manager.
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`

	// tlsSecretName names the Secret with the TLS certificate for host. The
	// Ingress terminates TLS only when it is set; it is required unless
	// allowInsecureHTTP is true.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	TLSSecretName string `json:"tlsSecretName,omitempty"`

	// allowInsecureHTTP allows an Ingress without tlsSecretName, which
	// serves the webhooks over plain HTTP. Meant for tests only: the
	// requests carry patient data. It takes effect only where the operator
	// is installed to allow it (the chart's allowInsecureHTTP); otherwise
	// no Ingress is made and the status says InsecureHTTPForbidden.
	// +optional
	AllowInsecureHTTP bool `json:"allowInsecureHTTP,omitempty"`
}

// GatewaySpec describes the receiver's HTTPRoute.
type GatewaySpec struct {
	// parentRefs are the Gateways (or some of their listeners) the route
	// attaches to.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	ParentRefs []GatewayParentReference `json:"parentRefs"`

	// hostnames are the DNS names the EHR posts to, e.g.
	// nexus.webhooks.example.com; the first is the one status.endpoint shows.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Hostnames []string `json:"hostnames"`

	// allowInsecureHTTP allows the route to attach to a Gateway listener
	// whose protocol is HTTP. Without it the operator makes no route while a
	// listener it would attach to serves plain HTTP, and says so in the
	// conditions (reason InsecureListener). Meant for tests only. It takes
	// effect only where the operator is installed to allow it (the chart's
	// allowInsecureHTTP); otherwise the reason is InsecureHTTPForbidden.
	// +optional
	AllowInsecureHTTP bool `json:"allowInsecureHTTP,omitempty"`
}

// GatewayParentReference names a Gateway, or one of its listeners.
type GatewayParentReference struct {
	// name is the Gateway's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Name string `json:"name"`

	// namespace is the Gateway's namespace; the EHRIntegration's when unset.
	// The Gateway's listeners must allow routes from this namespace.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`

	// sectionName is the name of one listener of the Gateway; every
	// listener that accepts the route when unset.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SectionName string `json:"sectionName,omitempty"`
}

// MonitoringSpec tunes the shipped alerts for one integration.
type MonitoringSpec struct {
	// silenceAlertAfter is how long the EHR may send nothing that is
	// answered 200 before the EHRSilent alert fires, e.g. 2h for a feed
	// that posts all day long. Unset, the integration has no such alert.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1m')",message="silenceAlertAfter must be at least 1m, a duration such as 90m or 720h"
	SilenceAlertAfter *metav1.Duration `json:"silenceAlertAfter,omitempty"`
}

// LimitsSpec bounds what one EHR may send.
type LimitsSpec struct {
	// maxBodyBytes is the largest request body accepted; larger ones are
	// answered 413.
	// +optional
	// +kubebuilder:default=4194304
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=67108864
	MaxBodyBytes int64 `json:"maxBodyBytes,omitempty"`

	// maxBatchSize is the most appointments one request may carry; more are
	// answered 413.
	// +optional
	// +kubebuilder:default=1000
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	MaxBatchSize int32 `json:"maxBatchSize,omitempty"`

	// requestsPerSecond is the sustained request rate allowed for this EHR,
	// per receiver pod; requests over it are answered 429.
	// +optional
	// +kubebuilder:default=50
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	RequestsPerSecond int32 `json:"requestsPerSecond,omitempty"`

	// burst is how many requests may arrive at once above requestsPerSecond
	// (the token bucket's size), per receiver pod.
	// +optional
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	Burst int32 `json:"burst,omitempty"`
}

// RetentionSpec is how long each kind of row is kept, as a duration such as
// 720h (30 days), at least 1h; a period left unset keeps its rows for ever.
type RetentionSpec struct {
	// deliveryLog is how long rows of the delivery log (webhook_deliveries:
	// request id, time, outcome; no patient data) are kept. A row that a
	// stored appointment, a history row or a quarantined entry refers to is
	// kept as long as they are.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1h')",message="deliveryLog must be at least 1h, a duration such as 90m or 720h"
	DeliveryLog *metav1.Duration `json:"deliveryLog,omitempty"`

	// quarantine says how long quarantined entries are kept: their content
	// and the record that they happened, separately.
	// +optional
	Quarantine *QuarantineRetention `json:"quarantine,omitempty"`

	// history is how long rows of the appointment history are kept. A
	// version whose history row is gone is no longer recognised as seen, so
	// keep it longer than a sender may redeliver an old version.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1h')",message="history must be at least 1h, a duration such as 90m or 720h"
	History *metav1.Duration `json:"history,omitempty"`
}

// QuarantineRetention keeps a quarantined entry's content (patient data)
// and its metadata for separate periods, e.g. the body 30 days and the
// record that it happened a year.
// +kubebuilder:validation:XValidation:rule="!has(self.content) || !has(self.metadata) || !self.content.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') || !self.metadata.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') || duration(self.content) <= duration(self.metadata)",message="quarantine.content must not be longer than quarantine.metadata"
type QuarantineRetention struct {
	// content is how long the entry as sent (patient data) is kept; then
	// it is dropped and the entry can no longer be replayed.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1h')",message="content must be at least 1h, a duration such as 90m or 720h"
	Content *metav1.Duration `json:"content,omitempty"`

	// metadata is how long the entry's row (its index, field errors, times,
	// delivery) is kept.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1h')",message="metadata must be at least 1h, a duration such as 90m or 720h"
	Metadata *metav1.Duration `json:"metadata,omitempty"`
}

// OnInvalidPolicy says what the receiver does with invalid entries.
// +kubebuilder:validation:Enum=Reject;Quarantine
type OnInvalidPolicy string

const (
	// OnInvalidReject fails the whole batch with 422 and writes nothing.
	OnInvalidReject OnInvalidPolicy = "Reject"
	// OnInvalidQuarantine writes the valid entries, quarantines the invalid
	// ones and answers 200.
	OnInvalidQuarantine OnInvalidPolicy = "Quarantine"
)

// EHRIntegrationStatus is what the operator observed.
type EHRIntegrationStatus struct {
	// observedGeneration is the metadata.generation this status speaks for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions are Ready, Progressing, Degraded, while receiver pods run
	// DatabaseReachable, and with spec.gateway RouteAccepted.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// readyReplicas is the number of receiver pods ready to serve. Always
	// written, so that `kubectl get` shows 0 rather than nothing.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`

	// endpoint is the URL the EHR posts to: <scheme>://<host>/v2/webhooks/<ehr>/sync-appointments
	// with an Ingress (its host) or a Gateway (the first hostname), where the
	// scheme is https only when the edge terminates TLS for that host;
	// otherwise the receiver Service's in-cluster URL.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// servedSecretVersions are the versions (metadata.resourceVersion) of
	// the referenced Secrets that every receiver pod was started with. It is
	// set only once no pod of another version is left, terminating ones
	// included, and absent while versions are mixed: after changing a
	// Secret, wait until it shows the resourceVersion the change returned.
	// +optional
	ServedSecretVersions *SecretVersions `json:"servedSecretVersions,omitempty"`
}

// SecretVersions are resourceVersions of the Secrets an EHRIntegration
// references.
type SecretVersions struct {
	// credentials is the credentials Secret's resourceVersion.
	// +optional
	Credentials string `json:"credentials,omitempty"`
	// database is the database Secret's resourceVersion.
	// +optional
	Database string `json:"database,omitempty"`
}

// Condition types.
const (
	// ConditionReady is True when the receiver serves: its Deployment has
	// the desired replicas available; its Ingress, if any, exists, with an
	// IngressClass that exists and a TLS Secret holding tls.crt and tls.key;
	// its HTTPRoute, if any, is accepted by every parent Gateway.
	ConditionReady = "Ready"
	// ConditionProgressing is True while the receiver is rolling out.
	ConditionProgressing = "Progressing"
	// ConditionDegraded is True when the operator cannot make the receiver
	// the spec asks for, e.g. a referenced Secret is missing.
	ConditionDegraded = "Degraded"
	// ConditionDatabaseReachable is False when receivers report that they
	// cannot reach their database, Unknown when none reports; present only
	// while receiver pods run and the receiver can be made.
	ConditionDatabaseReachable = "DatabaseReachable"
	// ConditionRouteAccepted is True when every parent Gateway of
	// spec.gateway accepted the receiver's HTTPRoute; present only with
	// spec.gateway once the route exists.
	ConditionRouteAccepted = "RouteAccepted"
)

// Condition reasons.
const (
	// ReasonAvailable: the receiver is available (Ready=True).
	ReasonAvailable = "Available"
	// ReasonReconciled: every child object is as the spec asks.
	ReasonReconciled = "Reconciled"
	// ReasonRollingOut: the Deployment is rolling out a new pod template.
	ReasonRollingOut = "RollingOut"
	// ReasonDeploymentUnavailable: the Deployment lacks available replicas.
	ReasonDeploymentUnavailable = "DeploymentUnavailable"
	// ReasonRolloutStuck: the Deployment exceeded its progress deadline.
	ReasonRolloutStuck = "RolloutStuck"
	// ReasonSecretNotFound: a referenced Secret does not exist.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonSecretKeyMissing: a referenced Secret lacks a required key.
	ReasonSecretKeyMissing = "SecretKeyMissing"
	// ReasonCredentialTooShort: an API key or webhook secret in the
	// credentials Secret is shorter than MinCredentialBytes.
	ReasonCredentialTooShort = "CredentialTooShort"
	// ReasonConfigMapNotFound: the ConfigMap of spec.database.ca does not
	// exist.
	ReasonConfigMapNotFound = "ConfigMapNotFound"
	// ReasonConfigMapKeyMissing: the ConfigMap of spec.database.ca lacks
	// its key.
	ReasonConfigMapKeyMissing = "ConfigMapKeyMissing"
	// ReasonInvalidTimeZone: spec.timeZone is not a known IANA zone.
	ReasonInvalidTimeZone = "InvalidTimeZone"
	// ReasonInvalidPodTemplate: spec.podTemplate has a label, annotation or
	// node selector the API server would refuse on the receiver's pods.
	ReasonInvalidPodTemplate = "InvalidPodTemplate"
	// ReasonLimitsExceedMemory: one request body of limits.maxBodyBytes
	// cannot be held within the receiver container's memory limit.
	ReasonLimitsExceedMemory = "LimitsExceedMemory"
	// ReasonDuplicateEHR: an older EHRIntegration (in any watched namespace)
	// has the same spec.ehr; this one's receiver is scaled to zero.
	ReasonDuplicateEHR = "DuplicateEHR"
	// ReasonNoReceiverImage: neither spec.image nor the manager's
	// --receiver-image is set.
	ReasonNoReceiverImage = "NoReceiverImage"
	// ReasonSuspended: spec.suspend is true.
	ReasonSuspended = "Suspended"
	// ReasonOwnershipConflict: a child's name is taken by an object this
	// EHRIntegration does not control.
	ReasonOwnershipConflict = "OwnershipConflict"
	// ReasonChildRejected: the API server refused a receiver object built
	// from the spec (say, an Ingress annotation key or a toleration it does
	// not accept); the message is its answer.
	ReasonChildRejected = "ChildRejected"
	// ReasonDatabaseReachable: every receiver that reported reaches the
	// database.
	ReasonDatabaseReachable = "DatabaseReachable"
	// ReasonDatabaseUnreachable: at least one receiver cannot reach the
	// database; the message says how many and since when.
	ReasonDatabaseUnreachable = "DatabaseUnreachable"
	// ReasonDatabaseStateUnknown: no receiver answered GET /dbz, or none
	// has heard from the database yet.
	ReasonDatabaseStateUnknown = "DatabaseStateUnknown"
	// ReasonGatewayAPINotInstalled: spec.gateway is set but the cluster
	// serves no Gateway API (gateway.networking.k8s.io/v1 Gateway and
	// HTTPRoute); the operator looks again with a backoff.
	ReasonGatewayAPINotInstalled = "GatewayAPINotInstalled"
	// ReasonGatewayNotFound: a Gateway of spec.gateway.parentRefs does not
	// exist.
	ReasonGatewayNotFound = "GatewayNotFound"
	// ReasonInsecureListener: a Gateway listener the route would attach to
	// serves plain HTTP and spec.gateway.allowInsecureHTTP is not true.
	ReasonInsecureListener = "InsecureListener"
	// ReasonInsecureHTTPForbidden: the spec asks for plain HTTP
	// (allowInsecureHTTP: an Ingress without tlsSecretName, or a route on a
	// plain HTTP listener) and the manager serves no receiver so (its
	// --allow-insecure-http is false, the default). No Ingress or HTTPRoute
	// is made; one made before is deleted.
	ReasonInsecureHTTPForbidden = "InsecureHTTPForbidden"
	// ReasonIngressClassNotFound: the IngressClass of spec.ingress.className
	// does not exist, or, without className, no IngressClass is the
	// cluster's default: no ingress controller serves the Ingress. The
	// Ingress is made all the same.
	ReasonIngressClassNotFound = "IngressClassNotFound"
	// ReasonTLSSecretNotFound: the Secret of spec.ingress.tlsSecretName does
	// not exist in the EHRIntegration's namespace; the ingress controller
	// would serve its default certificate. The Ingress is made all the same.
	ReasonTLSSecretNotFound = "TLSSecretNotFound"
	// ReasonTLSSecretKeyMissing: the Secret of spec.ingress.tlsSecretName
	// lacks tls.crt or tls.key, or one is empty.
	ReasonTLSSecretKeyMissing = "TLSSecretKeyMissing"
	// ReasonRouteAccepted: every parent Gateway accepted the HTTPRoute.
	ReasonRouteAccepted = "Accepted"
	// ReasonRouteNotAccepted: a parent Gateway refused the HTTPRoute; the
	// message gives the Gateway's reason.
	ReasonRouteNotAccepted = "RouteNotAccepted"
	// ReasonRoutePending: a parent Gateway's controller has not reported
	// on the HTTPRoute yet.
	ReasonRoutePending = "RoutePending"
)

// AnnotationExternalReplicas, set to "true" on an EHRIntegration, hands the
// receiver Deployment's replica count to someone else (a
// HorizontalPodAutoscaler): the operator then sets replicas only when it
// creates the Deployment, resumes it from suspend, or suspends it.
const AnnotationExternalReplicas = "ehr.insighthealth.io/external-replicas"

// AnnotationNetworkPolicy, set to NetworkPolicyDisabled on an
// EHRIntegration, keeps the operator from making the receiver's
// NetworkPolicy (and deletes the one it made), for a namespace whose own
// policies already govern the receiver.
const AnnotationNetworkPolicy = "ehr.insighthealth.io/network-policy"

// NetworkPolicyDisabled is the value of AnnotationNetworkPolicy that opts out.
const NetworkPolicyDisabled = "disabled"

// EHRIntegration provisions a webhook receiver for one EHR vendor: a
// Deployment running `ehr-receiver receiver`, its Service, ServiceAccount,
// optional Ingress or HTTPRoute, and PodDisruptionBudget.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 54 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be a DNS label that starts with a letter and has at most 54 characters (its Service is named <name>-receiver)"
// +kubebuilder:resource:shortName=ehri,categories=ehr
// +kubebuilder:printcolumn:name="EHR",type=string,JSONPath=`.spec.ehr`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.readyReplicas`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type EHRIntegration struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired receiver.
	// +required
	Spec EHRIntegrationSpec `json:"spec"`

	// status is the observed state of the receiver.
	// +optional
	Status EHRIntegrationStatus `json:"status,omitempty"`
}

// EHRIntegrationList is a list of EHRIntegrations.
// +kubebuilder:object:root=true
type EHRIntegrationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []EHRIntegration `json:"items"`
}

// Defaults the API server applies (the +kubebuilder:default markers above);
// the controller applies the same ones to fields a client left empty.
const (
	DefaultTimeZone                = "UTC"
	DefaultReplicas          int32 = 2
	DefaultDatabaseKey             = "uri"
	DefaultCAKey                   = "ca.crt"
	DefaultMaxBodyBytes      int64 = 4194304
	DefaultMaxBatchSize      int32 = 1000
	DefaultRequestsPerSecond int32 = 50
	DefaultBurst             int32 = 100
)

// MinCredentialBytes is the least length of an API key or webhook secret,
// after the trailing newline the receiver drops (`openssl rand -hex 32`
// gives 64).
const MinCredentialBytes = 32
