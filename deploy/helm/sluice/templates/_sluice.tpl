{{/* Names, labels and the pieces both processes share. */}}

{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
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

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The rendered ConfigMap, hashed into each pod's annotations so a config change rolls them. */}}
{{- define "sluice.configChecksum" -}}
{{- include (print .Template.BasePath "/configmap.yaml") . | sha256sum -}}
{{- end -}}

{{/* A sink name (letters, digits, `.`, `_`, `-`) as a DNS label. */}}
{{- define "sluice.sinkSlug" -}}
{{- . | lower | replace "_" "-" | replace "." "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
The consumer Deployments, as JSON {"groups": [{name, component, sinks, settings}]}: one per sink
(deployment: perSink) or one for all sinks (shared). `settings` holds the consumer values with
the sink's own ones (consumer.sinks.NAME) merged over them.
*/}}
{{- define "sluice.consumerGroups" -}}
{{- $root := . -}}
{{- $sinks := .Values.config.sinks | default list -}}
{{- $base := omit .Values.consumer "sinks" -}}
{{- $groups := list -}}
{{- if eq .Values.consumer.deployment "perSink" -}}
{{- $seen := dict -}}
{{- range $sinks -}}
{{- $slug := include "sluice.sinkSlug" .name -}}
{{- if hasKey $seen $slug -}}
{{- fail (printf "config.sinks: %q and %q both make the Deployment name suffix %q: rename one of them, or set consumer.deployment: shared" (get $seen $slug) .name $slug) -}}
{{- end -}}
{{- $_ := set $seen $slug .name -}}
{{- $own := get ($root.Values.consumer.sinks | default dict) .name | default dict -}}
{{- $settings := mergeOverwrite (deepCopy $base) (deepCopy $own) -}}
{{- $groups = append $groups (dict "name" (printf "%s-consumer-%s" (include "sluice.fullname" $root | trunc 50 | trimSuffix "-") $slug | trunc 63 | trimSuffix "-") "component" (printf "consumer-%s" $slug) "sinks" (list .) "settings" $settings) -}}
{{- end -}}
{{- range $name, $_ := .Values.consumer.sinks | default dict -}}
{{- $known := false -}}
{{- range $sinks -}}{{- if eq .name $name -}}{{- $known = true -}}{{- end -}}{{- end -}}
{{- if not $known -}}
{{- fail (printf "consumer.sinks.%s: no sink of that name in config.sinks" $name) -}}
{{- end -}}
{{- end -}}
{{- else if $sinks -}}
{{- $groups = append $groups (dict "name" (printf "%s-consumer" (include "sluice.fullname" $root | trunc 54 | trimSuffix "-")) "component" "consumer" "sinks" $sinks "settings" $base) -}}
{{- end -}}
{{- toJson (dict "groups" $groups) -}}
{{- end -}}

{{/* Kafka topic of a table: {topic_prefix}.{schema}.{table}. */}}
{{- define "sluice.topic" -}}
{{- $prefix := .root.Values.config.kafka.topic_prefix | default "sluice" -}}
{{- if contains "${" $prefix -}}
{{- fail "config.kafka.topic_prefix uses an environment variable: the chart needs the topic for autoscaling, so write the prefix out" -}}
{{- end -}}
{{- printf "%s.%s" $prefix .table -}}
{{- end -}}

{{/* Partitions of the topics the producer creates, the most consumers of a sink that work. */}}
{{- define "sluice.partitions" -}}
{{- .Values.config.kafka.partitions | default 6 | int -}}
{{- end -}}

{{/* The environment of both processes: SLUICE_CONFIG, SLUICE_LISTEN, secrets, plain values. */}}
{{- define "sluice.env" -}}
{{- $root := .root -}}
- name: SLUICE_CONFIG
  value: /etc/sluice/sluice.yaml
- name: SLUICE_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .port) | quote }}
{{- range $root.Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      {{- if hasKey . "optional" }}
      optional: {{ .optional }}
      {{- end }}
{{- end }}
{{- with $root.Values.env }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes of both processes: the config, a writable /tmp, extra volumes. */}}
{{- define "sluice.volumes" -}}
- name: config
  configMap:
    name: {{ include "sluice.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sluice.volumeMounts" -}}
- name: config
  mountPath: /etc/sluice
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The pod template of either process. Arguments: root, component, command (list), port, settings
(the process's values: probes, resources, scheduling, env, extraArgs, podAnnotations).
*/}}
{{- define "sluice.podTemplate" -}}
{{- $root := .root -}}
{{- $s := .settings -}}
metadata:
  labels:
    {{- include "sluice.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "sluice.configChecksum" $root }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $s.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "sluice.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .container }}
      image: {{ include "sluice.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      command:
        {{- toYaml .command | nindent 8 }}
      {{- with $s.extraArgs }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .port }}
          protocol: TCP
      env:
        {{- include "sluice.env" (dict "root" $root "port" .port "extra" $s.env) | nindent 8 }}
      {{- with $root.Values.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $s.resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- include "sluice.volumeMounts" $root | nindent 8 }}
  volumes:
    {{- include "sluice.volumes" $root | nindent 4 }}
  {{- with $s.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $s.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
