{{/* Chart name, at most 63 characters. */}}
{{- define "smtpcheck.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 characters (DNS label). A release name
that already contains the chart name is used as it is.
*/}}
{{- define "smtpcheck.fullname" -}}
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

{{- define "smtpcheck.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "smtpcheck.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smtpcheck.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Common labels. Call with (dict "ctx" $ "component" "api"). */}}
{{- define "smtpcheck.labels" -}}
helm.sh/chart: {{ include "smtpcheck.chart" .ctx }}
{{ include "smtpcheck.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: {{ include "smtpcheck.name" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "smtpcheck.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smtpcheck.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "smtpcheck.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when the bundled Redis runs (no external URL given), else "". */}}
{{- define "smtpcheck.redis.bundled" -}}
{{- if not (or .Values.redis.url .Values.redis.existingSecret .Values.redis.sentinel.hosts) }}
{{- if not .Values.redis.bundled.enabled }}
{{- fail "redis: set redis.url or redis.existingSecret, or enable redis.bundled" }}
{{- end }}
{{- "true" }}
{{- end }}
{{- end }}

{{- define "smtpcheck.redis.fullname" -}}
{{- printf "%s-redis" (include "smtpcheck.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
REDIS_URL for redis.sentinel: redis+sentinel://[:password@]host:port,.../service/db
(rediss+sentinel:// with sentinel.tls). One password for sentinels and data nodes.
*/}}
{{- define "smtpcheck.redis.sentinelUrl" -}}
{{- $s := .Values.redis.sentinel }}
{{- $auth := "" }}
{{- with $s.password }}
{{- $auth = printf ":%s@" . }}
{{- end }}
{{- $hosts := list }}
{{- range $s.hosts }}
{{- $hosts = append $hosts (ternary (toString .) (printf "%s:26379" .) (contains ":" (toString .))) }}
{{- end }}
{{- printf "%s://%s%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" (default false $s.tls)) $auth (join "," $hosts) $s.service (int $s.db) }}
{{- end }}

{{/* The Secret and key REDIS_URL comes from. */}}
{{- define "smtpcheck.redis.secretName" -}}
{{- if and (not (or .Values.redis.url .Values.redis.sentinel.hosts)) .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else }}
{{- include "smtpcheck.fullname" . }}
{{- end }}
{{- end }}

{{- define "smtpcheck.redis.secretKey" -}}
{{- if and (not (or .Values.redis.url .Values.redis.sentinel.hosts)) .Values.redis.existingSecret }}
{{- .Values.redis.existingSecretKey }}
{{- else }}
{{- "REDIS_URL" }}
{{- end }}
{{- end }}

{{/* The Secret SMTPCHECK_SECRET_KEY and SMTPCHECK_API_KEYS come from. */}}
{{- define "smtpcheck.secretName" -}}
{{- default (include "smtpcheck.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "smtpcheck.secretKeyKey" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.keys.secretKey }}
{{- else }}
{{- "SMTPCHECK_SECRET_KEY" }}
{{- end }}
{{- end }}

{{- define "smtpcheck.apiKeysKey" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.keys.apiKeys }}
{{- else }}
{{- "SMTPCHECK_API_KEYS" }}
{{- end }}
{{- end }}

{{/* "true" when the chart makes its own Secret. */}}
{{- define "smtpcheck.secret.create" -}}
{{- if or (not .Values.secret.existingSecret) .Values.redis.url (include "smtpcheck.redis.bundled" .) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
A checksum of the values behind the ConfigMap and Secret that a component
reads, so its pods roll when they change (workers do not read the API keys).
Generated values are left out: they never change once made.
Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "smtpcheck.configChecksum" -}}
{{- $v := .ctx.Values }}
{{- $secret := $v.secret }}
{{- if ne .component "api" }}
{{- $secret = omit $v.secret "apiKeys" }}
{{- end }}
{{- $inputs := dict "config" $v.config "secret" $secret "redis" (pick $v.redis "url" "existingSecret" "existingSecretKey") "bundledPassword" $v.redis.bundled.password }}
{{- toJson $inputs | sha256sum }}
{{- end }}

{{/* A Kubernetes-safe name part for a vantage: lower case, [a-z0-9-]. */}}
{{- define "smtpcheck.vantage.slug" -}}
{{- regexReplaceAll "[^a-z0-9-]" (lower .) "-" | trunc 40 | trimSuffix "-" | trimSuffix "-" }}
{{- end }}

{{/*
The vantages, each merged over workerDefaults (maps one level deep: a key of
the vantage wins; anything else the vantage sets replaces the default), as a
JSON list. Fails on two names that map to one Kubernetes name.
*/}}
{{- define "smtpcheck.vantages" -}}
{{- $seen := dict }}
{{- $out := list }}
{{- if not .Values.vantages }}
{{- fail "vantages: list at least one vantage point (e.g. - name: default)" }}
{{- end }}
{{- range .Values.vantages }}
{{- $v := deepCopy $.Values.workerDefaults }}
{{- range $key, $value := (deepCopy .) }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $v $key)) }}
{{- $m := deepCopy (get $v $key) }}
{{- range $k, $x := $value }}
{{- $_ := set $m $k $x }}
{{- end }}
{{- $_ := set $v $key $m }}
{{- else }}
{{- $_ := set $v $key $value }}
{{- end }}
{{- end }}
{{- $slug := include "smtpcheck.vantage.slug" $v.name }}
{{- if hasKey $seen $slug }}
{{- fail (printf "vantages: %q and %q would share the Kubernetes name %q" (get $seen $slug) $v.name $slug) }}
{{- end }}
{{- $_ := set $seen $slug $v.name }}
{{- $_ := set $v "slug" $slug }}
{{- $_ := set $v "fullname" (printf "%s-worker-%s" (include "smtpcheck.fullname" $ | trunc 22 | trimSuffix "-") $slug | trunc 63 | trimSuffix "-") }}
{{- $out = append $out $v }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Pod volumes shared by the API and the workers. */}}
{{- define "smtpcheck.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.medium }}
    medium: {{ . }}
    {{- end }}
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{/* The Secret with Redis's CA (and client certificate), as a volume and its mount. */}}
{{- define "smtpcheck.redis.tlsVolume" -}}
{{- with .Values.redis.tls.existingSecret }}
- name: redis-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "smtpcheck.redis.tlsMount" -}}
{{- if .Values.redis.tls.existingSecret }}
- name: redis-tls
  mountPath: /etc/smtpcheck/redis-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* Env every smtpcheck container gets: REDIS_URL and SMTPCHECK_SECRET_KEY. */}}
{{- define "smtpcheck.secretEnv" -}}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "smtpcheck.redis.secretName" . }}
      key: {{ include "smtpcheck.redis.secretKey" . }}
- name: SMTPCHECK_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "smtpcheck.secretName" . }}
      key: {{ include "smtpcheck.secretKeyKey" . }}
{{- end }}

{{/*
NetworkPolicy egress rules to DNS and to Redis (bundled or external). DNS
ports: networkPolicy.dns.ports plus any port named in config.dnsServers.
*/}}
{{- define "smtpcheck.egress.dnsAndRedis" -}}
{{- $dnsPorts := list }}
{{- range .Values.networkPolicy.dns.ports }}
{{- $dnsPorts = append $dnsPorts (int .) }}
{{- end }}
{{- range .Values.config.dnsServers }}
{{- $parts := splitList ":" (toString .) }}
{{- if or (contains "]:" (toString .)) (eq (len $parts) 2) }}
{{- $dnsPorts = append $dnsPorts (int (last $parts)) }}
{{- end }}
{{- end }}
- ports:
    {{- range (uniq $dnsPorts) }}
    - protocol: UDP
      port: {{ . }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.networkPolicy.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if include "smtpcheck.redis.bundled" . }}
- ports:
    - protocol: TCP
      port: 6379
  to:
    - podSelector:
        matchLabels:
          {{- include "smtpcheck.selectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
{{- else }}
{{- $redisPorts := list }}
{{- range .Values.redis.external.ports }}
{{- $redisPorts = append $redisPorts (int .) }}
{{- end }}
{{- range .Values.redis.sentinel.hosts }}
{{- $parts := splitList ":" (toString .) }}
{{- $redisPorts = append $redisPorts (ternary (int (last $parts)) 26379 (eq (len $parts) 2)) }}
{{- end }}
- ports:
    {{- range (uniq $redisPorts) }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .Values.redis.external.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget's budget: minAvailable when set, else maxUnavailable. */}}
{{- define "smtpcheck.pdbBudget" -}}
{{- if not (kindIs "invalid" .minAvailable) }}
minAvailable: {{ .minAvailable }}
{{- else }}
maxUnavailable: {{ .maxUnavailable | default 1 }}
{{- end }}
{{- end }}
