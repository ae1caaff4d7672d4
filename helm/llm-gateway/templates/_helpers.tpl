{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "llm-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already holds it. */}}
{{- define "llm-gateway.fullname" -}}
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

{{- define "llm-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-gateway.labels" -}}
helm.sh/chart: {{ include "llm-gateway.chart" . }}
{{ include "llm-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llm-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the ConfigMap is mounted, and the file both containers read. */}}
{{- define "llm-gateway.configDir" -}}/etc/llm-gateway{{- end }}
{{- define "llm-gateway.configFile" -}}/etc/llm-gateway/gateway.yaml{{- end }}
{{/* The emptyDir shared by both containers for the processor's unix socket. */}}
{{- define "llm-gateway.socketDir" -}}/var/run/llm-gateway{{- end }}
{{/* The emptyDir shared by both containers for Envoy's listener, routes and clusters files:
the processor rewrites them on a reload, Envoy watches them. */}}
{{- define "llm-gateway.xdsDir" -}}/var/run/llm-gateway-xds{{- end }}

{{/* "gateway" or "sidecar" (values.schema.json allows nothing else). */}}
{{- define "llm-gateway.sidecar" -}}
{{- if eq (toString .Values.mode) "sidecar" }}true{{ end }}
{{- end }}

{{/* The environment variable of the extproc container holding externalRedis's URL. */}}
{{- define "llm-gateway.redisUrlEnv" -}}LLM_GATEWAY_REDIS_URL{{- end }}
{{/* Where clientKeys.existingSecret is mounted in the extproc container. */}}
{{- define "llm-gateway.clientKeysDir" -}}/etc/llm-gateway-client-keys{{- end }}

{{/*
The gateway config the pods read (the ConfigMap's gateway.yaml): .Values.gateway plus what the
chart derives, each only where the user left it unset (a user value that contradicts the pod is
refused by llm-gateway.validate):
  listener.address          0.0.0.0 (gateway mode) or 127.0.0.1 (sidecar mode)
  processor.admin_address   0.0.0.0 (the kubelet's probes and Prometheus reach the pod IP)
  processor.unix_socket     /var/run/llm-gateway/extproc.sock (the shared socket volume)
  reload.xds_directory      /var/run/llm-gateway-xds (the shared xds volume)
  governance.redis.url      externalRedis.url, when set
  governance.redis.url_env  LLM_GATEWAY_REDIS_URL, when externalRedis.existingSecret is set
*/}}
{{- define "llm-gateway.config" -}}
{{- $gateway := deepCopy (.Values.gateway | default dict) }}
{{- $address := "0.0.0.0" }}
{{- if include "llm-gateway.sidecar" . }}{{ $address = "127.0.0.1" }}{{ end }}
{{- $derived := dict
  "listener" (dict "address" $address)
  "processor" (dict "admin_address" "0.0.0.0" "unix_socket" (printf "%s/extproc.sock" (include "llm-gateway.socketDir" .)))
  "reload" (dict "xds_directory" (include "llm-gateway.xdsDir" .)) }}
{{- $redis := .Values.externalRedis | default dict }}
{{- if $redis.existingSecret }}
{{- $_ := set $derived "governance" (dict "redis" (dict "url_env" (include "llm-gateway.redisUrlEnv" .))) }}
{{- else if $redis.url }}
{{- $_ := set $derived "governance" (dict "redis" (dict "url" $redis.url)) }}
{{- end }}
{{- toYaml (merge $gateway $derived) }}
{{- end }}

{{/*
rollOnConfigChange=auto: the settings a reload refuses (extproc/config/changes.py, RESTART_ONLY;
the unit tests keep files/restart-only-settings.yaml equal to it), read from the derived config.
*/}}
{{- define "llm-gateway.restartOnlySettings" -}}
{{- $config := include "llm-gateway.config" . | fromYaml }}
{{- $found := dict }}
{{- range $path := .Files.Get "files/restart-only-settings.yaml" | fromYamlArray }}
{{- $value := $config }}
{{- range $key := splitList "." $path }}
{{- if kindIs "map" $value }}{{ $value = get $value $key }}{{ else }}{{ $value = "" }}{{ end }}
{{- end }}
{{- $_ := set $found $path $value }}
{{- end }}
{{- toJson $found }}
{{- end }}

{{/* The pod-template checksum annotation's value, empty when rollOnConfigChange is false. */}}
{{- define "llm-gateway.configChecksum" -}}
{{- if eq (toString .Values.rollOnConfigChange) "auto" }}
{{- include "llm-gateway.restartOnlySettings" . | sha256sum }}
{{- else if eq (toString .Values.rollOnConfigChange) "true" }}
{{- include "llm-gateway.config" . | sha256sum }}
{{- end }}
{{- end }}

{{/* Ports and grace period read from the gateway config, with the config's own defaults. */}}
{{- define "llm-gateway.listenerPort" -}}
{{- $listener := .Values.gateway.listener | default dict }}
{{- $listener.port | default 8080 | int }}
{{- end }}

{{- define "llm-gateway.adminPort" -}}
{{- $processor := .Values.gateway.processor | default dict }}
{{- $processor.admin_port | default 9090 | int }}
{{- end }}

{{/* Container port names: prefixed in sidecar mode, where the application's pod has its own. */}}
{{- define "llm-gateway.adminPortName" -}}
{{- if include "llm-gateway.sidecar" . }}llmgw-admin{{ else }}admin{{ end }}
{{- end }}

{{/* processor.shutdown_grace_seconds rounded up to whole seconds (0 is a valid value). */}}
{{- define "llm-gateway.shutdownGrace" -}}
{{- $processor := .Values.gateway.processor | default dict }}
{{- if hasKey $processor "shutdown_grace_seconds" }}
{{- $processor.shutdown_grace_seconds | float64 | ceil | int }}
{{- else }}30{{- end }}
{{- end }}

{{/*
The longest shutdown: Envoy's drain (drainDelaySeconds + shutdown_grace_seconds), then 5 s for
Envoy and the processor to exit. The processor's preStop waits for Envoy at most this long.
*/}}
{{- define "llm-gateway.processorStopWait" -}}
{{- add (int .Values.drainDelaySeconds) (include "llm-gateway.shutdownGrace" . | int) 5 }}
{{- end }}

{{- define "llm-gateway.terminationGrace" -}}
{{- $needed := include "llm-gateway.processorStopWait" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 5 }}
{{- else }}
{{- $set := int .Values.terminationGracePeriodSeconds }}
{{- if lt $set $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least drainDelaySeconds + gateway.processor.shutdown_grace_seconds + 5 (%d)" $set $needed) }}
{{- end }}
{{- $set }}
{{- end }}
{{- end }}

{{/* Whether the gateway config uses Redis (limits or the cache). */}}
{{- define "llm-gateway.usesRedis" -}}
{{- $gateway := .Values.gateway | default dict }}
{{- $governance := $gateway.governance | default dict }}
{{- $cache := $gateway.cache | default dict }}
{{- if or (eq (toString $governance.backend) "redis") (eq (toString $cache.backend) "redis") }}true{{ end }}
{{- end }}

{{/*
Chart-specific checks of the values and the derived gateway config (the processor validates the
rest at start-up). Each failure names the value to change.
*/}}
{{- define "llm-gateway.validate" -}}
{{- $_ := required "gateway: the gateway configuration is required" .Values.gateway }}
{{- $config := include "llm-gateway.config" . | fromYaml }}
{{- $listener := $config.listener | default dict }}
{{- $processor := $config.processor | default dict }}
{{- $sidecar := include "llm-gateway.sidecar" . }}
{{- if $sidecar }}
{{- if not (has (toString $listener.address) (list "127.0.0.1" "::1")) }}
{{- fail "gateway.listener.address must be 127.0.0.1 or ::1 in sidecar mode (the application calls Envoy on loopback; leave it unset)" }}
{{- end }}
{{- if not .Values.sidecar.deploymentName }}
{{- fail "sidecar.deploymentName is required in sidecar mode: the name of the application's Deployment the patch is for" }}
{{- end }}
{{- if eq (toString $processor.ready_requires_envoy) "false" }}
{{- fail "gateway.processor.ready_requires_envoy must stay true in sidecar mode: the processor's /readyz is the only probe of Envoy on loopback" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled is for gateway mode: in sidecar mode the application's Deployment (and its own autoscaler) decides the replicas" }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- fail "networkPolicy.enabled is for gateway mode: a NetworkPolicy selects whole pods and would isolate the application; add the gateway's ports to the application's own policy (helm/README.md, \"NetworkPolicy\")" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.sidecar.podLabels) }}
{{- fail "serviceMonitor.enabled in sidecar mode needs sidecar.podLabels: labels that select the application's pods" }}
{{- end }}
{{- else }}
{{- if not (has (toString $listener.address) (list "0.0.0.0" "::")) }}
{{- fail "gateway.listener.address must be 0.0.0.0 or :: in gateway mode so the Service and probes reach Envoy (leave it unset)" }}
{{- end }}
{{- end }}
{{- if not (has (toString $processor.admin_address) (list "0.0.0.0" "::")) }}
{{- fail "gateway.processor.admin_address must be 0.0.0.0 or :: so the kubelet's probes reach it" }}
{{- end }}
{{- $socket := $processor.unix_socket }}
{{- if and $socket (not (hasPrefix (printf "%s/" (include "llm-gateway.socketDir" .)) (toString $socket))) }}
{{- fail (printf "gateway.processor.unix_socket must be inside %s (the volume both containers share)" (include "llm-gateway.socketDir" .)) }}
{{- end }}
{{- $reload := $config.reload | default dict }}
{{- if ne (toString $reload.xds_directory) (include "llm-gateway.xdsDir" .) }}
{{- fail (printf "gateway.reload.xds_directory must be %s (the volume both containers share)" (include "llm-gateway.xdsDir" .)) }}
{{- end }}
{{- $redis := .Values.externalRedis | default dict }}
{{- $userRedis := ((.Values.gateway.governance | default dict).redis | default dict) }}
{{- if and (or $redis.url $redis.existingSecret) (or $userRedis.url $userRedis.url_env) }}
{{- fail "externalRedis and gateway.governance.redis.url/url_env both name a Redis: set one of them" }}
{{- end }}
{{- if and $redis.url $redis.existingSecret }}
{{- fail "externalRedis: set url or existingSecret, not both" }}
{{- end }}
{{- if and $redis.existingSecret (not $redis.secretKey) }}
{{- fail "externalRedis.secretKey is required with externalRedis.existingSecret (the Secret key holding the whole URL)" }}
{{- end }}
{{- if $redis.url }}
{{- if contains ":" ((urlParse (toString $redis.url)).userinfo | default "") }}
{{- fail "externalRedis.url must not carry a password: put the whole URL in a Secret and use externalRedis.existingSecret" }}
{{- end }}
{{- end }}
{{- if and (include "llm-gateway.usesRedis" .) (not (or $redis.url $redis.existingSecret $userRedis.url $userRedis.url_env)) }}
{{- fail "gateway.governance.backend or gateway.cache.backend is redis but no Redis is given: set externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
{{- end }}
