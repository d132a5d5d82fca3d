{{/* The chart's name, the release-qualified name, and the labels every object carries. */}}
{{- define "watchdog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "watchdog.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "watchdog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "watchdog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "watchdog.labels" -}}
{{ include "watchdog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "watchdog.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "watchdog.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the API tokens and the receivers' files, if any. */}}
{{- define "watchdog.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.secrets.create -}}
{{- include "watchdog.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* SQLite on a volume unless STATE_URL comes from a Secret. */}}
{{- define "watchdog.sqlite" -}}
{{- if not .Values.state.urlSecret.name -}}true{{- end -}}
{{- end -}}

{{/* Refuse what cannot work, with the reason, at render time. */}}
{{- define "watchdog.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (include "watchdog.sqlite" .) -}}
{{- fail "replicas > 1 needs the state in PostgreSQL: set state.urlSecret (a Secret key holding STATE_URL=postgresql://...); SQLite is one process's file" -}}
{{- end -}}
{{- if and .Values.secrets.existingSecret .Values.secrets.create -}}
{{- fail "secrets: set existingSecret or create, not both" -}}
{{- end -}}
{{- range $k, $v := .Values.settings -}}
{{- if hasPrefix "WATCHDOG_" $k -}}
{{- fail (printf "settings.%s: give the name without the WATCHDOG_ prefix" $k) -}}
{{- end -}}
{{- if has $k (list "API_TOKEN" "API_READ_TOKEN" "STATE_URL" "SENTRY_DSN") -}}
{{- fail (printf "settings.%s is a secret: put it in the Secret (secrets, state.urlSecret), not in settings" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
