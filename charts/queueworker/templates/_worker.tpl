{{- /*
One QueueWorker: the operator creates the Deployment <name>-worker from spec.template and scales it between
minReplicas and maxReplicas by the depth of spec.queue. Fields as in manifests/crd.yaml. Arguments: ctx (the
root), kind, w (the kind's values), image, app (QW_APP: the module defining a user kind, "" for built-in kinds).
*/}}
{{- define "queueworker.queueWorker" -}}
{{- $ := .ctx }}{{- $kind := .kind }}{{- $w := .w }}{{- $image := .image }}{{- $app := .app }}
{{- $sel := dict "ctx" $ "component" (printf "worker-%s" ($kind | replace "_" "-")) }}
---
apiVersion: queueworker.dev/v1alpha1
kind: QueueWorker
metadata:
  name: {{ include "queueworker.fullname" $ }}-{{ $kind | replace "_" "-" }}
  labels:
    {{- include "queueworker.labels" $sel | nindent 4 }}
spec:
  queue: qw.{{ $kind }}
  vhost: {{ $.Values.rabbitmq.vhost | quote }}
  # The broker the operator reads queue depths from: its management URL comes from the operator's own env.
  broker: default
  pollingInterval: {{ $w.pollingInterval }}
  minReplicas: {{ $w.minReplicas }}
  maxReplicas: {{ $w.maxReplicas }}
  scaling:
    mode: QueueLength
    messagesPerReplica: {{ $w.messagesPerReplica }}
    {{- if hasKey $w "cooldownSeconds" }}
    cooldownSeconds: {{ $w.cooldownSeconds }}
    {{- end }}
    {{- if hasKey $w "scaleDownStabilizationSeconds" }}
    scaleDownStabilizationSeconds: {{ $w.scaleDownStabilizationSeconds }}
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "queueworker.labels" $sel | nindent 8 }}
        queueworker.dev/worker: "true"
    spec:
      # Workers never call the Kubernetes API.
      automountServiceAccountToken: false
      # The runtime stops taking work on SIGTERM and finishes what it holds within QW_GRACE_PERIOD (25 s).
      terminationGracePeriodSeconds: 30
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "queueworker.podSecurityContext" $ | nindent 8 }}
      containers:
        - name: worker
          image: {{ include "queueworker.image" (dict "ctx" $ "image" $image) }}
          imagePullPolicy: {{ $image.pullPolicy }}
          args: [{{ $kind | quote }}]
          env:
            {{- include "queueworker.commonEnv" $ | nindent 12 }}
            {{- include "queueworker.amqpEnv" $ | nindent 12 }}
            {{- include "queueworker.databaseEnv" $ | nindent 12 }}
            - name: QW_METRICS_HOST
              value: 0.0.0.0
            - name: QW_METRICS_PORT
              value: "9100"
            - name: QW_CONCURRENCY
              value: {{ $w.concurrency | quote }}
            - name: QW_PREFETCH
              value: {{ $w.prefetch | quote }}
            # Only the image worker reads uploads; the others get a scratch dir on the writable /tmp.
            {{- include "queueworker.storageEnv" (dict "ctx" $ "uses" (eq $kind "image")) | trim | nindent 12 }}
            {{- with $w.smtp }}
            - name: QW_SMTP_HOST
              value: {{ .host | quote }}
            - name: QW_SMTP_PORT
              value: {{ .port | quote }}
            - name: QW_SMTP_STARTTLS
              value: {{ .starttls | quote }}
            - name: QW_SMTP_FROM
              value: {{ .from | quote }}
            {{- if .existingSecret }}
            - name: QW_SMTP_USERNAME
              valueFrom:
                secretKeyRef:
                  name: {{ .existingSecret }}
                  key: {{ .usernameKey }}
            - name: QW_SMTP_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ .existingSecret }}
                  key: {{ .passwordKey }}
            {{- end }}
            {{- end }}
            {{- with $app }}
            - name: QW_APP
              value: {{ . | quote }}
            {{- end }}
            {{- with $w.env }}
            {{- include "queueworker.extraEnv" . | trim | nindent 12 }}
            {{- end }}
            {{- range $w.secretEnv }}
            - name: {{ .name }}
              valueFrom:
                secretKeyRef:
                  name: {{ .secretName }}
                  key: {{ .key }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: 9100
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: 15
            timeoutSeconds: 5
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 5
            timeoutSeconds: 5
          securityContext:
            {{- include "queueworker.containerSecurityContext" $ | nindent 12 }}
          resources:
            {{- toYaml $w.resources | nindent 12 }}
          volumeMounts:
            {{- include "queueworker.tmpMount" $ | nindent 12 }}
            {{- with include "queueworker.storageMount" (dict "ctx" $ "uses" (eq $kind "image")) | trim }}{{ . | nindent 12 }}{{ end }}
      volumes:
        {{- include "queueworker.tmpVolume" $ | nindent 8 }}
        {{- with include "queueworker.storageVolume" (dict "ctx" $ "uses" (eq $kind "image")) | trim }}{{ . | nindent 8 }}{{ end }}
      {{- with $.Values.workers.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $.Values.workers.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $.Values.workers.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
