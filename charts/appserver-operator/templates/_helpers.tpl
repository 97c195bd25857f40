{{/* The chart name, or nameOverride. */}}
{{- define "appserver-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: fullnameOverride, else the release name (plus the chart name unless it already contains it). */}}
{{- define "appserver-operator.fullname" -}}
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

{{- define "appserver-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "appserver-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "appserver-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "appserver-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ include "appserver-operator.tag" . | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: appserver-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "appserver-operator.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "appserver-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "appserver-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Leader election is on when asked for or when more than one replica runs. */}}
{{- define "appserver-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "appserver-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "appserver-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
