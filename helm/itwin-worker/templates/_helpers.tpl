{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "itwin-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release-chart, or just the release name when it already contains the
chart name. Truncated to 63 characters (DNS-1123 label limit).
*/}}
{{- define "itwin-worker.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "itwin-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels, on every object.
*/}}
{{- define "itwin-worker.labels" -}}
helm.sh/chart: {{ include "itwin-worker.chart" . }}
{{ include "itwin-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: itwin-worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: immutable on a Deployment, so keep them minimal.
*/}}
{{- define "itwin-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "itwin-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the pods run as.
*/}}
{{- define "itwin-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "itwin-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the credentials: existingSecret when given, else the chart's own.
*/}}
{{- define "itwin-worker.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "itwin-worker.fullname" . }}
{{- end }}
{{- end }}

{{/*
Image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "itwin-worker.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
One scalar as the worker expects it in an environment variable. YAML numbers reach templates
as float64, which Go would print as 1e+06; whole numbers are printed as integers instead.
*/}}
{{- define "itwin-worker.scalar" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/*
A value for an ITWIN_WORKER_* variable: lists become comma-separated (e.g. jobPollSchedule).
*/}}
{{- define "itwin-worker.envValue" -}}
{{- if kindIs "slice" . }}
{{- $parts := list }}
{{- range . }}
{{- $parts = append $parts (include "itwin-worker.scalar" .) }}
{{- end }}
{{- join "," $parts }}
{{- else }}
{{- include "itwin-worker.scalar" . }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the worker's own shutdown grace (rounded up) plus a margin, so
Kubernetes never SIGKILLs a worker that is still inside its grace period. Both numbers come from
the same value (worker.shutdownGraceSeconds), which also becomes
ITWIN_WORKER_SHUTDOWN_GRACE_SECONDS, so they cannot drift apart.
*/}}
{{- define "itwin-worker.terminationGracePeriodSeconds" -}}
{{- $grace := required "worker.shutdownGraceSeconds is required" .Values.worker.shutdownGraceSeconds }}
{{- add (ceil $grace) (required "terminationGraceMarginSeconds is required" .Values.terminationGraceMarginSeconds) }}
{{- end }}

{{/*
Prefix of the command queues (worker.queuePrefix, else the worker's default).
*/}}
{{- define "itwin-worker.queuePrefix" -}}
{{- default "itwin-worker." .Values.worker.queuePrefix }}
{{- end }}

{{/*
The simulator's objects: their own name and app.kubernetes.io/name, so that no selector of the
worker (Deployment, Service, PodDisruptionBudget, NetworkPolicy, ServiceMonitor) matches its pods.
*/}}
{{- define "itwin-worker.simulator.fullname" -}}
{{- printf "%s-simulator" (include "itwin-worker.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{- define "itwin-worker.simulator.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-simulator" (include "itwin-worker.name" . | trunc 53 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "itwin-worker.simulator.labels" -}}
helm.sh/chart: {{ include "itwin-worker.chart" . }}
{{ include "itwin-worker.simulator.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: simulator
app.kubernetes.io/part-of: itwin-worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The simulator's base URL inside the cluster (its Service, in the release namespace).
*/}}
{{- define "itwin-worker.simulator.url" -}}
{{- printf "http://%s:%s" (include "itwin-worker.simulator.fullname" .) (include "itwin-worker.scalar" .Values.simulator.port) }}
{{- end }}

{{/*
Whether the worker's API and token URLs are the simulator's ("true" or "").
*/}}
{{- define "itwin-worker.simulator.pointsWorker" -}}
{{- if and .Values.simulator.enabled .Values.simulator.pointWorker }}
{{- if or .Values.worker.apiBaseUrl .Values.worker.tokenUrl }}
{{- fail "simulator.pointWorker sets the worker's API and token URLs: leave worker.apiBaseUrl and worker.tokenUrl null, or set simulator.pointWorker=false" }}
{{- end }}
{{- true }}
{{- end }}
{{- end }}

{{/*
An alert's labels: its severity, then prometheusRule.alertLabels (which may override it).
*/}}
{{- define "itwin-worker.alertLabels" -}}
{{- toYaml (merge (dict) .r.alertLabels (dict "severity" .severity)) }}
{{- end }}

{{/*
An alert's runbook annotation, when prometheusRule.runbookBaseUrl is set.
*/}}
{{- define "itwin-worker.runbook" -}}
description: See the runbook, {{ .alert }} in docs/alerts.md.
{{- with .r.runbookBaseUrl }}
runbook_url: {{ printf "%s#%s" . (lower $.alert) }}
{{- end }}
{{- end }}
