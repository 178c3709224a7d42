{{/* Names and labels. */}}
{{- define "sw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sw.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "sw.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "sw.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "sw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "sw.labels" -}}
{{ include "sw.selectorLabels" . }}
{{ include "sw.commonLabels" . }}
{{- end }}

{{/* The labels of every object, less the component (worker or model). */}}
{{- define "sw.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sentiment
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The accelerator block (cpu or gpu) of the values. */}}
{{- define "sw.accel" -}}
{{- if not (has .Values.accelerator (list "cpu" "gpu")) }}
{{- fail (printf "accelerator must be cpu or gpu, not %q" .Values.accelerator) }}
{{- end }}
{{- toYaml (index .Values .Values.accelerator) }}
{{- end }}

{{- define "sw.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion (ternary "cuda" "cpu" (eq .Values.accelerator "gpu"))) }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "sw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sw.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* lagThreshold = events/s per replica × target drain seconds, unless set. */}}
{{- define "sw.lagThreshold" -}}
{{- $accel := include "sw.accel" . | fromYaml }}
{{- $k := .Values.autoscaling.kafka }}
{{- if $k.lagThreshold }}
{{- int $k.lagThreshold }}
{{- else }}
{{- mul (int $accel.eventsPerSecondPerReplica) (int $k.targetDrainSeconds) }}
{{- end }}
{{- end }}

{{/* "true" when a monitoring.coreos.com object should be rendered (enabled: true, or auto and the API is served). */}}
{{- define "sw.monitoring" -}}
{{- $enabled := index . 0 }}
{{- $root := index . 1 }}
{{- if eq (toString $enabled) "auto" }}
{{- $root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}
{{- else }}
{{- $enabled }}
{{- end }}
{{- end }}

{{- define "sw.sasl" -}}
{{- hasPrefix "SASL_" .Values.kafka.securityProtocol }}
{{- end }}

{{- define "sw.tls" -}}
{{- or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL") }}
{{- end }}

{{/* Does the Secret with the Kafka credentials have to exist? */}}
{{- define "sw.needsSecret" -}}
{{- or (eq (include "sw.sasl" .) "true") .Values.kafka.tls.ca .Values.kafka.tls.clientCert }}
{{- end }}

{{- define "sw.credentialsDir" -}}/etc/sentiment-worker/kafka{{- end }}

{{/* The model's volume (sources download, pvc, image). */}}
{{- define "sw.modelClaim" -}}
{{- .Values.model.pvc.existingClaim | default (printf "%s-model" (include "sw.fullname" .)) }}
{{- end }}

{{/* Environment of fetch-model (init container and Job). */}}
{{- define "sw.fetchEnv" -}}
- name: MODEL
  value: {{ .Values.model.name | quote }}
- name: MODEL_REVISION
  value: {{ .Values.model.revision | quote }}
- name: HF_HOME
  value: /opt/huggingface
- name: HOME
  value: /tmp
{{- if .Values.model.hubEndpoint }}
- name: HF_ENDPOINT
  value: {{ .Values.model.hubEndpoint | quote }}
{{- end }}
{{- if .Values.model.tokenSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.model.tokenSecret }}
      key: token
{{- end }}
{{- end }}

{{- define "sw.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "sw.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}
