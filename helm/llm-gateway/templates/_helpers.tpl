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

{{/* Ports and grace period read from the gateway config, with the config's own defaults. */}}
{{- define "llm-gateway.listenerPort" -}}
{{- $listener := .Values.gateway.listener | default dict }}
{{- $listener.port | default 8080 | int }}
{{- end }}

{{- define "llm-gateway.adminPort" -}}
{{- $processor := .Values.gateway.processor | default dict }}
{{- $processor.admin_port | default 9090 | int }}
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

{{/*
Chart-specific checks of the gateway config (the processor validates the rest at start-up).
*/}}
{{- define "llm-gateway.validate" -}}
{{- $gateway := required "gateway: the gateway configuration is required" .Values.gateway }}
{{- $listener := $gateway.listener | default dict }}
{{- $processor := $gateway.processor | default dict }}
{{- $wildcard := list "0.0.0.0" "::" }}
{{- if not (has ($listener.address | default "127.0.0.1") $wildcard) }}
{{- fail "gateway.listener.address must be 0.0.0.0 or :: so the Service and probes reach Envoy" }}
{{- end }}
{{- if not (has ($processor.admin_address | default "127.0.0.1") $wildcard) }}
{{- fail "gateway.processor.admin_address must be 0.0.0.0 or :: so the kubelet's probes reach it" }}
{{- end }}
{{- $socket := "/tmp/llm-gateway/extproc.sock" }}
{{- if hasKey $processor "unix_socket" }}{{ $socket = $processor.unix_socket }}{{ end }}
{{- if and $socket (not (hasPrefix (printf "%s/" (include "llm-gateway.socketDir" .)) (toString $socket))) }}
{{- fail (printf "gateway.processor.unix_socket must be inside %s (the volume both containers share)" (include "llm-gateway.socketDir" .)) }}
{{- end }}
{{- $reload := $gateway.reload | default dict }}
{{- if ne (toString ($reload.xds_directory | default "/tmp/llm-gateway/xds")) (include "llm-gateway.xdsDir" .) }}
{{- fail (printf "gateway.reload.xds_directory must be %s (the volume both containers share)" (include "llm-gateway.xdsDir" .)) }}
{{- end }}
{{- end }}
