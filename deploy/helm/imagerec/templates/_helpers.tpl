{{/* Names, labels and the environment every imagerec process shares. */}}

{{- define "imagerec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "imagerec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "imagerec.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "imagerec.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name; 52 characters leave room for StatefulSet pod suffixes. */}}
{{- define "imagerec.component" -}}
{{- printf "%s-%s" (include "imagerec.fullname" .root) .name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "imagerec.workerHeadless" -}}
{{- printf "%s-headless" (include "imagerec.component" (dict "root" . "name" "worker")) -}}
{{- end -}}

{{- define "imagerec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "imagerec.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "imagerec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagerec.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "imagerec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "imagerec.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: imagerec
{{- end -}}

{{- define "imagerec.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Checks that stop a release which would install but not work. Called by every template that
depends on them, so `helm template` and `helm install` both fail with the reason.
*/}}
{{- define "imagerec.validate" -}}
{{- $partitions := int .Values.kafka.topicPartitions -}}
{{- if lt $partitions 1 -}}
{{- fail "kafka.topicPartitions must be at least 1" -}}
{{- end -}}
{{- if gt (int .Values.workers.replicas) $partitions -}}
{{- fail (printf "workers.replicas (%d) exceeds kafka.topicPartitions (%d): Kafka gives each partition of image-uploads to one worker of the group, so the extra workers would sit idle. Lower workers.replicas, or raise kafka.topicPartitions before the topics are first created." (int .Values.workers.replicas) $partitions) -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if gt (int .Values.autoscaling.maxReplicas) $partitions -}}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.topicPartitions (%d): workers beyond the partition count get no partition and cannot reduce lag." (int .Values.autoscaling.maxReplicas) $partitions) -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail "autoscaling.minReplicas exceeds autoscaling.maxReplicas" -}}
{{- end -}}
{{- if not (has .Values.autoscaling.provider (list "hpa" "keda")) -}}
{{- fail (printf "autoscaling.provider must be hpa or keda, not %q" .Values.autoscaling.provider) -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int .Values.workers.tableStandbyReplicas) 0) (lt (int .Values.workers.replicas) 2) (not .Values.autoscaling.enabled) -}}
{{- fail "workers.tableStandbyReplicas needs at least 2 workers (a standby lives on another worker)" -}}
{{- end -}}
{{- if not .Values.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers: name at least one broker (host:port)" -}}
{{- end -}}
{{- if not (or .Values.redis.url .Values.secrets.redisUrl) -}}
{{- fail "redis.url (or secrets.redisUrl) is required; with Sentinel it still gives the database number" -}}
{{- end -}}
{{- if not .Values.s3.endpoint -}}
{{- fail "s3.endpoint is required (host:port)" -}}
{{- end -}}
{{- range $name, $_ := .Values.config.extraEnv -}}
{{- if not (hasPrefix "IMAGEREC_" $name) -}}
{{- fail (printf "config.extraEnv: %s is not an imagerec setting (IMAGEREC_*)" $name) -}}
{{- end -}}
{{- if regexMatch "(KEY|SECRET|PEPPER|PASSWORD)" $name -}}
{{- fail (printf "config.extraEnv: %s is a credential; put it in a Secret (see secrets.*)" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* One variable read from an existing Secret whose key is the variable's name. */}}
{{- define "imagerec.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key | default .name }}
{{- end -}}

{{/* A component's least-privilege S3 key, as the plain S3 settings the code reads. */}}
{{- define "imagerec.s3ComponentEnv" -}}
{{- $upper := upper .component -}}
{{- include "imagerec.secretEnv" (dict "name" "IMAGEREC_S3_ACCESS_KEY" "secret" .root.Values.secrets.s3Components "key" (printf "IMAGEREC_S3_%s_ACCESS_KEY" $upper)) }}
{{ include "imagerec.secretEnv" (dict "name" "IMAGEREC_S3_SECRET_KEY" "secret" .root.Values.secrets.s3Components "key" (printf "IMAGEREC_S3_%s_SECRET_KEY" $upper)) }}
{{- end -}}

{{/* The servers and shared settings; the same for workers, functions and the job. */}}
{{- define "imagerec.commonEnv" -}}
- name: IMAGEREC_KAFKA_BOOTSTRAP
  value: {{ join "," .Values.kafka.bootstrapServers | quote }}
- name: IMAGEREC_TOPIC_PARTITIONS
  value: {{ .Values.kafka.topicPartitions | int | quote }}
- name: IMAGEREC_TOPIC_REPLICATION
  value: {{ .Values.kafka.replicationFactor | int | quote }}
- name: IMAGEREC_TOPIC_MIN_ISR
  value: {{ .Values.kafka.minInsyncReplicas | int | quote }}
- name: IMAGEREC_S3_ENDPOINT
  value: {{ .Values.s3.endpoint | quote }}
- name: IMAGEREC_S3_SECURE
  value: {{ .Values.s3.secure | toString | quote }}
- name: IMAGEREC_S3_REGION
  value: {{ .Values.s3.region | quote }}
{{- if .Values.secrets.redisUrl }}
{{ include "imagerec.secretEnv" (dict "name" "IMAGEREC_REDIS_URL" "secret" .Values.secrets.redisUrl) }}
{{- else }}
- name: IMAGEREC_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- if .Values.redis.sentinels }}
- name: IMAGEREC_REDIS_SENTINELS
  value: {{ join "," .Values.redis.sentinels | quote }}
- name: IMAGEREC_REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinelMaster | quote }}
{{- end }}
- name: IMAGEREC_HOME
  value: /data
- name: IMAGEREC_MODEL_CACHE
  value: /var/cache/imagerec/models
- name: IMAGEREC_MAX_UPLOAD_BYTES
  value: {{ .Values.config.maxUploadBytes | int64 | quote }}
- name: IMAGEREC_RESULT_TTL_S
  value: {{ .Values.config.resultTtlS | int64 | quote }}
- name: IMAGEREC_INFERENCE_ENGINE
  value: {{ .Values.config.inferenceEngine | quote }}
- name: IMAGEREC_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: IMAGEREC_LOG_JSON
  value: "true"
{{- range $name, $value := .Values.config.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
- name: HOME
  value: /tmp
- name: TF_CPP_MIN_LOG_LEVEL
  value: "2"
- name: PYTHONUNBUFFERED
  value: "1"
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- end -}}

{{/*
The image's converted model lives under /opt/imagerec/models (Dockerfile); the root filesystem
is read-only, and custom models and TFLite engines are written next to the cached ones, so an
init container copies the baked cache into a writable emptyDir first.
*/}}
{{- define "imagerec.seedModelsContainer" -}}
- name: seed-models
  image: {{ include "imagerec.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "-c", "cp -R /opt/imagerec/models/. /var/cache/imagerec/models/"]
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {memory: 128Mi}
  volumeMounts:
    - name: model-cache
      mountPath: /var/cache/imagerec/models
{{- end -}}

{{/*
Inference threads for a container: the CPU request, rounded down, at least 1. A container sees
every core of its node, and one TFLite thread per node core against a CPU limit of two spins
threads against each other (docs/OPERATIONS.md, "Scaling out").
*/}}
{{- define "imagerec.cpuThreads" -}}
{{- $cpu := toString (dig "requests" "cpu" "1" .) -}}
{{- if hasSuffix "m" $cpu -}}
{{- max 1 (div (atoi (trimSuffix "m" $cpu)) 1000) -}}
{{- else -}}
{{- max 1 (int (float64 $cpu)) -}}
{{- end -}}
{{- end -}}

{{- define "imagerec.podSpecCommon" -}}
serviceAccountName: {{ include "imagerec.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
