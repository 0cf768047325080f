{{/* Chart name, overridable with nameOverride. */}}
{{- define "ehr-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used for every object: the release name, with the chart name
appended unless the release name already contains it. Truncated to 63
characters, the limit of a DNS label.
*/}}
{{- define "ehr-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "ehr-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ehr-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ehr-operator
{{- end }}

{{/* Labels that select the manager pods; never change them in an upgrade (Deployment selectors are immutable). */}}
{{- define "ehr-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ehr-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end }}

{{/* Labels of the `helm test` objects: not the manager's selector, or its ReplicaSet would adopt the test pod. */}}
{{- define "ehr-operator.testLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ehr-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: chart-test
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* ServiceAccount the manager runs as. */}}
{{- define "ehr-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ehr-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image: repository, then @digest when set, else :tag (default the appVersion). */}}
{{- define "ehr-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when the metrics endpoint authenticates its callers. A missing
metrics.secure (values reused from a chart that predates it) counts as the
default, true, not as false: that would serve the metrics to anyone.
*/}}
{{- define "ehr-operator.metricsSecure" -}}
{{- if dig "secure" true (.Values.metrics | default dict) }}true{{ end }}
{{- end }}

{{/* The receivers' image: receiverImage, else the operator's own image. */}}
{{- define "ehr-operator.receiverImage" -}}
{{- default (include "ehr-operator.image" .) .Values.receiverImage }}
{{- end }}

{{/*
A map of labels, annotations or node selectors, every value quoted: the API
wants strings, and `--set podAnnotations.revision=2` gives a number.
*/}}
{{- define "ehr-operator.stringMap" -}}
{{- $lines := list }}
{{- range $k, $v := . }}
{{- $lines = append $lines (printf "%s: %s" ($k | quote) ($v | toString | quote)) }}
{{- end }}
{{- join "\n" $lines }}
{{- end }}

{{/*
A list of NetworkPolicyPeers with the label values of their selectors as
strings: `--set` makes numbers of digits, which the API server and the
manager (it decodes its file strictly) refuse in a LabelSelector.
*/}}
{{- define "ehr-operator.networkPolicyPeers" -}}
{{- $peers := list }}
{{- range . }}
{{- $peer := deepCopy . }}
{{- range $k := list "podSelector" "namespaceSelector" }}
{{- with get $peer $k }}
{{- $sel := . }}
{{- with .matchLabels }}
{{- $_ := set $sel "matchLabels" (include "ehr-operator.stringMap" . | fromYaml) }}
{{- end }}
{{- range $e := .matchExpressions }}
{{- with $e.values }}
{{- $values := list }}
{{- range . }}
{{- $values = append $values (toString .) }}
{{- end }}
{{- $_ := set $e "values" $values }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $peers = append $peers $peer }}
{{- end }}
{{- toYaml $peers }}
{{- end }}

{{/*
The manager's --receiver-network-policy file. The operator's own pods are
added to metricsFrom (it reads the receivers' GET /dbz on that port), unless
metricsFrom is empty, which already admits any source. Values without
receiverNetworkPolicy come from `helm upgrade --reuse-values` over a chart
that predates it: refused, since the policy has no safe empty default.
*/}}
{{- define "ehr-operator.receiverNetworkPolicy" -}}
{{- $p := required "receiverNetworkPolicy is missing from the values: `helm upgrade --reuse-values` keeps the previous chart's defaults; upgrade with --reset-then-reuse-values (Helm >= 3.14) or -f your values file" .Values.receiverNetworkPolicy -}}
{{- $metricsFrom := include "ehr-operator.networkPolicyPeers" $p.metricsFrom | fromYamlArray -}}
{{- if $metricsFrom }}
{{- $operator := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) "podSelector" (dict "matchLabels" (include "ehr-operator.selectorLabels" . | fromYaml)) }}
{{- $metricsFrom = append $metricsFrom $operator }}
{{- end }}
{{- $egress := dict }}
{{- range $k := list "dns" "database" }}
{{- $t := get $p $k | default dict }}
{{- $_ := set $egress $k (dict "to" (include "ehr-operator.networkPolicyPeers" $t.to | fromYamlArray) "ports" $t.ports) }}
{{- end }}
{{- dict "enabled" $p.enabled "webhookFrom" (include "ehr-operator.networkPolicyPeers" $p.webhookFrom | fromYamlArray) "metricsFrom" $metricsFrom "dns" $egress.dns "database" $egress.database | toYaml }}
{{- end }}

{{/*
The manager's --receiver-pod-defaults file: receivers.podTemplate, with the
values of its maps as strings (`--set` makes numbers of digits), as the
manager decodes them strictly.
*/}}
{{- define "ehr-operator.receiverPodDefaults" -}}
{{- $t := deepCopy (dig "podTemplate" dict (.Values.receivers | default dict) | default dict) -}}
{{- range $k := list "labels" "annotations" "nodeSelector" }}
{{- with get $t $k }}
{{- $_ := set $t $k (include "ehr-operator.stringMap" . | fromYaml) }}
{{- end }}
{{- end }}
{{- with $t.serviceAccount }}
{{- with .annotations }}
{{- $_ := set $t.serviceAccount "annotations" (include "ehr-operator.stringMap" . | fromYaml) }}
{{- end }}
{{- end }}
{{- $t | toYaml }}
{{- end }}
