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

{{/* "true" when the pods carry prometheus.io/scrape annotations (auto: only without a ServiceMonitor). */}}
{{- define "sw.scrapeAnnotations" -}}
{{- if eq (toString .Values.metrics.scrapeAnnotations) "auto" }}
{{- not (eq (include "sw.monitoring" (list .Values.metrics.serviceMonitor.enabled .)) "true") }}
{{- else }}
{{- .Values.metrics.scrapeAnnotations }}
{{- end }}
{{- end }}

{{- define "sw.sasl" -}}
{{- hasPrefix "SASL_" .Values.kafka.securityProtocol }}
{{- end }}

{{- define "sw.tls" -}}
{{- or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL") }}
{{- end }}

{{/* A checksum of the Secrets the pods read (looked up at install and upgrade), so that `helm upgrade` after a changed credential rolls them. */}}
{{- define "sw.secretsChecksum" -}}
{{- $data := dict }}
{{- if eq (include "sw.needsSecret" .) "true" }}
{{- $_ := set $data "kafka" ((lookup "v1" "Secret" .Release.Namespace .Values.kafka.credentialsSecret).data | default dict) }}
{{- end }}
{{- if eq (include "sw.caSecret" .) "true" }}
{{- $_ := set $data "ca" ((lookup "v1" "Secret" .Release.Namespace .Values.kafka.caSecret.name).data | default dict) }}
{{- end }}
{{- with .Values.schemaRegistry.passwordSecret.name }}
{{- $_ := set $data "registry" ((lookup "v1" "Secret" $.Release.Namespace .).data | default dict) }}
{{- end }}
{{- $data | toJson | sha256sum }}
{{- end }}

{{/* Does the Secret with the Kafka credentials have to exist? (The CA may come from a Secret of its own.) */}}
{{- define "sw.needsSecret" -}}
{{- or (eq (include "sw.sasl" .) "true") .Values.kafka.tls.clientCert (and .Values.kafka.tls.ca (not .Values.kafka.caSecret.name)) }}
{{- end }}

{{/* Is the CA a Secret of its own (Strimzi's <cluster>-cluster-ca-cert)? */}}
{{- define "sw.caSecret" -}}
{{- and .Values.kafka.tls.ca (ne .Values.kafka.caSecret.name "") | toString }}
{{- end }}

{{- define "sw.oauth" -}}
{{- and (eq (include "sw.sasl" .) "true") (eq .Values.kafka.saslMechanism "OAUTHBEARER") | toString }}
{{- end }}

{{- define "sw.credentialsDir" -}}/etc/sentiment-worker/kafka{{- end }}

{{- define "sw.caDir" -}}/etc/sentiment-worker/kafka-ca{{- end }}

{{/* Where the worker reads the CA bundle. */}}
{{- define "sw.caFile" -}}
{{- if eq (include "sw.caSecret" .) "true" }}
{{- printf "%s/%s" (include "sw.caDir" .) .Values.kafka.caSecret.key }}
{{- else }}
{{- printf "%s/%s" (include "sw.credentialsDir" .) .Values.kafka.secretKeys.ca }}
{{- end }}
{{- end }}

{{- define "sw.registryDir" -}}/etc/sentiment-worker/registry{{- end }}

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

{{/* Security contexts from the values (a key set to null is left to the platform: OpenShift's restricted-v2 picks the uid). */}}
{{- define "sw.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "sw.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* ephemeral-storage a container asks for: the scratch emptyDir, and the model's when it is downloaded into the pod. */}}
{{- define "sw.scratchStorage" -}}
{{- $scratch := .Values.scratch.sizeLimit }}
{{- if eq .Values.model.source "download" }}
{{- printf "%dMi" (add (include "sw.mebibytes" $scratch | int) (include "sw.mebibytes" .Values.model.download.sizeLimit | int)) }}
{{- else }}
{{- $scratch }}
{{- end }}
{{- end }}

{{/* A quantity in Mi or Gi, as a number of MiB. */}}
{{- define "sw.mebibytes" -}}
{{- if hasSuffix "Gi" . }}{{ mul (trimSuffix "Gi" . | int) 1024 }}{{ else if hasSuffix "Mi" . }}{{ trimSuffix "Mi" . | int }}{{ else }}{{ fail (printf "sizes are given in Mi or Gi, not %q" .) }}{{ end }}
{{- end }}

{{/* A model revision that names one commit (40 hex digits); a branch or tag can move under running replicas. */}}
{{- define "sw.checkRevision" -}}
{{- if and (not (regexMatch "^[0-9a-f]{40}$" .Values.model.revision)) (not .Values.model.allowUnpinnedRevision) }}
{{- fail (printf "model.revision %q is not a commit: replicas would load whatever it points to when each starts. Pin a commit (40 hex digits), or set model.allowUnpinnedRevision=true" .Values.model.revision) }}
{{- end }}
{{- end }}

{{/* The model Job's spec (model.source=pvc); its hash names the Job (templates/model-cache.yaml). */}}
{{- define "sw.modelJobSpec" -}}
backoffLimit: 6
template:
  metadata:
    labels:
      app.kubernetes.io/name: {{ include "sw.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/component: model
  spec:
    restartPolicy: OnFailure
    serviceAccountName: {{ include "sw.serviceAccountName" . }}
    automountServiceAccountToken: false
    enableServiceLinks: false
    {{- with .Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- include "sw.podSecurityContext" . | nindent 6 }}
    {{- /* RUNTIME onnxruntime or auto on CPU: the download first, then the export into the claim. */}}
    {{- $export := and (ne .Values.runtime "torch") (ne .Values.accelerator "gpu") }}
    {{- if $export }}
    initContainers:
    {{- else }}
    containers:
    {{- end }}
      - name: fetch-model
        image: {{ include "sw.image" . }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        command: ["fetch-model", "download"]
        env:
          {{- include "sw.fetchEnv" . | nindent 10 }}
        {{- $fetch := deepCopy .Values.model.fetchResources }}
        {{- $_ := set $fetch "requests" (merge (dict "ephemeral-storage" .Values.scratch.sizeLimit) ($fetch.requests | default dict)) }}
        resources:
          {{- toYaml $fetch | nindent 10 }}
        securityContext:
          {{- include "sw.containerSecurityContext" . | nindent 10 }}
        volumeMounts:
          - name: tmp
            mountPath: /tmp
          - name: model
            mountPath: /opt/huggingface
    {{- if $export }}
    {{- $accel := include "sw.accel" . | fromYaml }}
    containers:
      # The ONNX file RUNTIME=onnxruntime reads, made once under HF_HOME in the claim (exits
      # 2, and the Job fails, where ONNX Runtime can't run this model and precision).
      - name: export-model
        image: {{ include "sw.image" . }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        command: ["sentiment-worker", "model", "export"]
        env:
          {{- include "sw.fetchEnv" . | nindent 10 }}
          - name: DEVICE
            value: cpu
          - name: PRECISION
            value: {{ .Values.precision | default $accel.precision | quote }}
          - name: TORCH_THREADS
            value: {{ $accel.threads | quote }}
          - name: HF_HUB_OFFLINE
            value: "1"
        resources:
          {{- toYaml $accel.resources | nindent 10 }}
        securityContext:
          {{- include "sw.containerSecurityContext" . | nindent 10 }}
        volumeMounts:
          - name: tmp
            mountPath: /tmp
          - name: model
            mountPath: /opt/huggingface
    {{- end }}
    volumes:
      - name: tmp
        emptyDir:
          sizeLimit: {{ .Values.scratch.sizeLimit }}
      - name: model
        persistentVolumeClaim:
          claimName: {{ include "sw.modelClaim" . }}
{{- end }}

{{/*
Alert rules that name this release's own objects (consumer group, input topic,
ScaledObject), so they can't live in alerts.yml: a YAML list, empty when none applies.
Their labels name the release's namespace and job, like those of alerts.yml.
*/}}
{{- define "sw.releaseRules" -}}
{{- $rules := list }}
{{- $labels := dict "severity" "warning" "namespace" .Release.Namespace "job" .Values.metrics.job }}
{{- $base := .Values.prometheusRule.runbookBaseUrl }}
{{- $b := .Values.prometheusRule.brokerLag }}
{{- if $b.enabled }}
{{- $group := .Values.kafka.groupId }}
{{- $topic := .Values.kafka.inputTopic }}
{{- $lag := "" }}
{{- $trend := "" }}
{{- if eq $b.exporter "kafka-exporter" }}
{{- /* Per partition; max drops the copies of exporter replicas, clamp_min the -1 of a partition without a committed offset. */}}
{{- $sel := printf "consumergroup=%q, topic=%q" $group $topic }}
{{- if $b.matchers }}{{ $sel = printf "%s, %s" $sel $b.matchers }}{{ end }}
{{- $lag = printf "sum(max by (partition) (clamp_min(kafka_consumergroup_lag{%s}, 0)))" $sel }}
{{- $trend = printf "sum(max by (partition) (deriv(kafka_consumergroup_lag{%s}[10m])))" $sel }}
{{- else if eq $b.exporter "kminion" }}
{{- $sel := printf "group_id=%q, topic_name=%q" $group $topic }}
{{- if $b.matchers }}{{ $sel = printf "%s, %s" $sel $b.matchers }}{{ end }}
{{- $lag = printf "max(kminion_kafka_consumer_group_topic_lag{%s})" $sel }}
{{- $trend = printf "max(deriv(kminion_kafka_consumer_group_topic_lag{%s}[10m]))" $sel }}
{{- else }}
{{- fail (printf "prometheusRule.brokerLag.exporter must be kafka-exporter or kminion, not %q" $b.exporter) }}
{{- end }}
{{- $rules = append $rules (dict
  "alert" "SentimentWorkerBrokerLag"
  "expr" (printf "%s > %d\nand\n%s >= 0\n" $lag (int64 $b.threshold) $trend)
  "for" $b.for
  "labels" (merge (dict "group" $group "topic" $topic) $labels)
  "annotations" (dict
    "summary" (printf "Consumer group %s stays behind on %s" $group $topic)
    "description" (printf "For %s the group %s has been more than %d events behind on %s and not catching up, as %s reports it from the brokers: whether or not any worker runs." $b.for $group (int64 $b.threshold) $topic $b.exporter)
    "runbook_url" (printf "%s#sentimentworkerbrokerlag" $base))) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- /*
KEDA's operator counts failed polls per ScaledObject. Its `namespace` label arrives as
exported_namespace when Prometheus scrapes the operator without honorLabels (the target's
own namespace takes the name): either is matched, never both for one series.
*/}}
{{- $name := include "sw.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $rules = append $rules (dict
  "alert" "SentimentWorkerScalerErrors"
  "expr" (printf "sum by (scaledObject) (\n  rate(keda_scaled_object_errors_total{namespace=%q, exported_namespace=\"\", scaledObject=%q}[5m])\n  or\n  rate(keda_scaled_object_errors_total{exported_namespace=%q, scaledObject=%q}[5m])\n) > 0\n" $ns $name $ns $name)
  "for" "10m"
  "labels" $labels
  "annotations" (dict
    "summary" (printf "KEDA fails to read the lag for %s/%s" $ns $name)
    "description" (printf "For 10 minutes KEDA's scalers of the ScaledObject %s/%s have failed (brokers or Prometheus unreachable, credentials refused): the replica count no longer follows the lag." $ns $name)
    "runbook_url" (printf "%s#sentimentworkerscalererrors" $base))) }}
{{- end }}
{{- toYaml $rules }}
{{- end }}
