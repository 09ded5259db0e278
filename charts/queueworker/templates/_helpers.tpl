{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "queueworker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or the release name alone when it already contains the chart name. */}}
{{- define "queueworker.fullname" -}}
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

{{- define "queueworker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "api"). Never change them: selectors are immutable. */}}
{{- define "queueworker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "queueworker.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of one component's objects. */}}
{{- define "queueworker.labels" -}}
helm.sh/chart: {{ include "queueworker.chart" .ctx }}
{{ include "queueworker.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: queueworker
{{- end }}

{{/* "repository:tag" with the tag defaulting to appVersion: call with (dict "ctx" $ "image" .Values.api.image). */}}
{{- define "queueworker.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "queueworker.operatorServiceAccount" -}}
{{- printf "%s-operator" (include "queueworker.fullname" .) }}
{{- end }}

{{- define "queueworker.storageClaim" -}}
{{- default (printf "%s-storage" (include "queueworker.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{/* Fails the render with a message naming the missing value. */}}
{{- define "queueworker.required" -}}
{{- required (printf "%s is required: %s" .key .why) .value }}
{{- end }}

{{/* Env shared by every service. */}}
{{- define "queueworker.commonEnv" -}}
- name: QW_ENV
  value: prod
- name: QW_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: QW_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- include "queueworker.queueLimitsEnv" . }}
{{- end }}

{{/* The queue bounds: every process that declares queues must declare them with the same arguments. */}}
{{- define "queueworker.queueLimitsEnv" -}}
{{- $q := .Values.rabbitmq.queueLimits }}
{{- range $name, $value := dict "QW_QUEUE_MAX_LENGTH" $q.maxLength "QW_QUEUE_MAX_BYTES" $q.maxBytes "QW_DEAD_LETTER_MAX_LENGTH" $q.deadLetterMaxLength "QW_DEAD_LETTER_MAX_BYTES" $q.deadLetterMaxBytes "QW_DEAD_LETTER_TTL_SECONDS" $q.deadLetterTtlSeconds "QW_NOTIFICATIONS_LOG_MAX_LENGTH" $q.notificationsLogMaxLength "QW_NOTIFICATIONS_LOG_MAX_BYTES" $q.notificationsLogMaxBytes "QW_NOTIFICATIONS_LOG_TTL_SECONDS" $q.notificationsLogTtlSeconds }}
- name: {{ $name }}
  value: {{ $value | int64 | toString | quote }}
{{- end }}
{{- end }}

{{/* Broker URLs come from the Secret, never literals: the AMQP URL for the API and workers, the management URL
for the operator only (each process gets just the credentials it uses). With rabbitmq.cluster.create the URLs are
put together by the kubelet ($(VAR) references) from the keys of the Secret the Cluster Operator creates; the
operator's container lists amqpEnv first, since a $(VAR) only resolves to a variable defined above it. */}}
{{- define "queueworker.amqpEnv" -}}
{{- include "queueworker.amqpEnvLines" . | trim }}
{{- end }}

{{- define "queueworker.amqpEnvLines" -}}
{{- if .Values.rabbitmq.cluster.create }}
{{- $secret := printf "%s-default-user" (include "queueworker.rabbitmqCluster" .) }}
{{- range $name, $key := dict "RABBITMQ_USERNAME" "username" "RABBITMQ_PASSWORD" "password" "RABBITMQ_HOST" "host" "RABBITMQ_PORT" "port" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
- name: QW_RABBITMQ_URL
  value: "amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@$(RABBITMQ_HOST):$(RABBITMQ_PORT)/{{ .Values.rabbitmq.vhost | urlquery }}"
{{- else }}
- name: QW_RABBITMQ_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "queueworker.rabbitmqSecret" . }}
      key: {{ .Values.rabbitmq.amqpUrlKey }}
{{- end }}
{{- end }}

{{- define "queueworker.managementEnv" -}}
{{- include "queueworker.managementEnvLines" . | trim }}
{{- end }}

{{- define "queueworker.managementEnvLines" -}}
{{- if .Values.rabbitmq.cluster.create }}
- name: QW_RABBITMQ_MANAGEMENT_URL
  value: "http://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@$(RABBITMQ_HOST):15672"
{{- else }}
- name: QW_RABBITMQ_MANAGEMENT_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "queueworker.rabbitmqSecret" . }}
      key: {{ .Values.rabbitmq.managementUrlKey }}
{{- end }}
{{- with (include "queueworker.prometheusUrl" .) }}
- name: QW_RABBITMQ_PROMETHEUS_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The RabbitmqCluster's name: its Service has this name, its headless Service "<name>-nodes" (a DNS label, so
the name stays short). */}}
{{- define "queueworker.rabbitmqCluster" -}}
{{- default (printf "%s-rabbitmq" (include "queueworker.fullname" .)) .Values.rabbitmq.cluster.name | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/* Depth from every broker pod's rabbitmq_prometheus port: a headless Service's name resolves to each pod, and
the operator reads every address of a name and merges them (a node reports the queues it hosts). */}}
{{- define "queueworker.prometheusUrl" -}}
{{- if .Values.rabbitmq.prometheusUrl }}
{{- .Values.rabbitmq.prometheusUrl }}
{{- else if .Values.rabbitmq.cluster.create }}
{{- printf "http://%s-nodes.%s.svc:15692" (include "queueworker.rabbitmqCluster" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "queueworker.rabbitmqSecret" -}}
{{- include "queueworker.required" (dict "key" "rabbitmq.existingSecret" "why" "name a Secret holding the AMQP and management URLs" "value" .Values.rabbitmq.existingSecret) }}
{{- end }}

{{- define "queueworker.databaseEnv" -}}
- name: QW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "queueworker.required" (dict "key" "database.existingSecret" "why" "name a Secret holding the database URL" "value" .Values.database.existingSecret) }}
      key: {{ .Values.database.urlKey }}
{{- end }}

{{/* name: value pairs from a map, sorted so renders are stable. */}}
{{- define "queueworker.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{- define "queueworker.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "queueworker.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* The writable /tmp every container gets (the root filesystem is read-only). */}}
{{- define "queueworker.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "queueworker.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Where uploads and results live, for a pod that reads or writes them (`uses`; any other gets a scratch dir on
/tmp): an S3-compatible bucket (storage.type=s3: QW_STORAGE_URL and the s3 settings, the key pair as files of the
existing Secret, never in env) or the shared volume at /data/storage. Called with (dict "ctx" $ "uses" bool). */}}
{{- define "queueworker.storageEnv" -}}
{{- $v := .ctx.Values.storage }}
{{- if not .uses }}
- name: QW_STORAGE_DIR
  value: /tmp/storage
{{- else if eq $v.type "s3" }}
{{- $bucket := include "queueworker.required" (dict "key" "storage.s3.bucket" "why" "name the bucket (it must exist)" "value" $v.s3.bucket) }}
- name: QW_STORAGE_URL
  value: {{ printf "s3://%s/%s" $bucket $v.s3.prefix | trimSuffix "/" | quote }}
{{- with $v.s3.endpoint }}
- name: QW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: QW_S3_REGION
  value: {{ $v.s3.region | quote }}
- name: QW_S3_PATH_STYLE
  value: {{ $v.s3.pathStyle | quote }}
{{- if $v.s3.existingSecret }}
- name: QW_S3_ACCESS_KEY_ID
  value: "@/etc/queueworker/s3/{{ $v.s3.accessKeyIdKey }}"
- name: QW_S3_SECRET_ACCESS_KEY
  value: "@/etc/queueworker/s3/{{ $v.s3.secretAccessKeyKey }}"
{{- end }}
{{- else }}
- name: QW_STORAGE_DIR
  value: /data/storage
{{- end }}
{{- end }}

{{- define "queueworker.storageMount" -}}
{{- $v := .ctx.Values.storage }}
{{- if and .uses (eq $v.type "s3") $v.s3.existingSecret }}
- name: s3-credentials
  mountPath: /etc/queueworker/s3
  readOnly: true
{{- else if and .uses (ne $v.type "s3") }}
- name: storage
  mountPath: /data/storage
{{- end }}
{{- end }}

{{- define "queueworker.storageVolume" -}}
{{- $v := .ctx.Values.storage }}
{{- if and .uses (eq $v.type "s3") $v.s3.existingSecret }}
- name: s3-credentials
  secret:
    secretName: {{ $v.s3.existingSecret }}
    items:
      - key: {{ $v.s3.accessKeyIdKey }}
        path: {{ $v.s3.accessKeyIdKey }}
      - key: {{ $v.s3.secretAccessKeyKey }}
        path: {{ $v.s3.secretAccessKeyKey }}
{{- else if and .uses (ne $v.type "s3") }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ include "queueworker.storageClaim" .ctx }}
{{- end }}
{{- end }}
