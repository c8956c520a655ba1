{{/* Chart name, overridable. */}}
{{- define "registry-mirror.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* release-chart, or just the release name when it already contains the chart name. */}}
{{- define "registry-mirror.fullname" -}}
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

{{- define "registry-mirror.operatorName" -}}
{{- printf "%s-operator" (include "registry-mirror.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "registry-mirror.nodeAgentName" -}}
{{- printf "%s-node-agent" (include "registry-mirror.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "registry-mirror.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: registry-mirror
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "registry-mirror.operatorSelector" -}}
app.kubernetes.io/name: {{ include "registry-mirror.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "registry-mirror.nodeAgentSelector" -}}
app.kubernetes.io/name: {{ include "registry-mirror.name" . }}-node-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "registry-mirror.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The admin's node policy, as flags for the operator and the node agent (both apply the same
policy; operator/node-policy.ts). The release namespace is the admin namespace ($POD_NAMESPACE).
*/}}
{{- define "registry-mirror.policyArgs" -}}
{{- with .Values.nodeConfig.allowedNamespaces }}
- {{ printf "--node-config-namespaces=%s" (join "," .) | quote }}
{{- end }}
{{- with .Values.nodeConfig.allowedRegistries }}
- {{ printf "--node-config-registries=%s" (join "," .) | quote }}
{{- end }}
{{- range $ns, $urls := .Values.nodeConfig.allowedUpstreams }}
- {{ printf "--allowed-upstream=%s=%s" $ns (join "," $urls) | quote }}
{{- end }}
{{- if .Values.nodeConfig.allowUnsafeUpstreams }}
- --node-config-allow-unsafe
{{- end }}
{{- end }}
