{{/* The release's resource name prefix (release name, or release-chart). */}}
{{- define "covey.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every pod of this release has (the NetworkPolicy's "the app's pods"). */}}
{{- define "covey.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "covey.labels" -}}
{{ include "covey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "covey.secretName" -}}
{{- if .Values.secret.create -}}
{{ include "covey.fullname" . }}
{{- else -}}
{{ required "set existingSecret (a Secret with COVEY_DATABASE_URL and COVEY_CLUSTER_SECRET) or secret.create=true" .Values.existingSecret }}
{{- end -}}
{{- end -}}

{{/* The database URL, from the Secret. */}}
{{- define "covey.databaseEnv" -}}
- name: COVEY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "covey.secretName" . }}
      key: COVEY_DATABASE_URL
{{- end -}}

{{/* The database URL and the cluster secret, from the Secret. */}}
{{- define "covey.secretEnv" -}}
{{ include "covey.databaseEnv" . }}
- name: COVEY_CLUSTER_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "covey.secretName" . }}
      key: COVEY_CLUSTER_SECRET
{{- end -}}

{{/* Every COVEY_* setting of a pod that runs (or calls) a runner. */}}
{{- define "covey.env" -}}
{{ include "covey.secretEnv" . }}
- name: COVEY_RUNNER_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: COVEY_RUNNER_PORT
  value: {{ .Values.covey.runnerPort | quote }}
- name: COVEY_SHARDS
  value: {{ .Values.covey.shards | quote }}
- name: COVEY_DRAIN_DELAY
  value: {{ .Values.covey.drainDelaySeconds | quote }}
- name: COVEY_SHARDING_SHUTDOWN_GRACE
  value: {{ .Values.covey.shutdownGraceSeconds | quote }}
- name: COVEY_LOG_LEVEL
  value: {{ .Values.covey.logLevel | quote }}
- name: COVEY_LOG_FORMAT
  value: {{ .Values.covey.logFormat | quote }}
{{- with .Values.covey.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An HTTP probe. Arguments: (list path port settings). */}}
{{- define "covey.probe" -}}
{{- $path := index . 0 -}}
{{- $port := index . 1 -}}
{{- $settings := index . 2 -}}
httpGet:
  path: {{ $path }}
  port: {{ $port }}
periodSeconds: {{ $settings.periodSeconds }}
failureThreshold: {{ $settings.failureThreshold }}
{{- with $settings.timeoutSeconds }}
timeoutSeconds: {{ . }}
{{- end }}
{{- end -}}
