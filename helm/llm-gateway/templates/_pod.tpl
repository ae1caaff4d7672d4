{{/*
The gateway's two containers and their volumes, shared by both modes: the Deployment's pod in
gateway mode, the application's pod (through the sidecar patch) in sidecar mode. Every command is
written out in full, so what a pod runs can be read from the rendered manifests.
*/}}

{{/* The containers' securityContext; in sidecar mode it also carries what the gateway's own pod
securityContext would (the application's pod securityContext is left as it is). */}}
{{- define "llm-gateway.containerSecurityContext" -}}
{{- $context := deepCopy .Values.securityContext }}
{{- if include "llm-gateway.sidecar" . }}
{{- $pod := .Values.podSecurityContext }}
{{- range $key := list "runAsNonRoot" "runAsUser" "runAsGroup" "seccompProfile" }}
{{- if and (hasKey $pod $key) (not (hasKey $context $key)) }}
{{- $_ := set $context $key (get $pod $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $context }}
{{- end }}

{{/* The pod-template annotations the chart adds (none when rollOnConfigChange is false). */}}
{{- define "llm-gateway.podAnnotations" -}}
{{- with include "llm-gateway.configChecksum" . }}
# Rolls the pods when the config changes (auto: only a restart-only setting).
checksum/llm-gateway-config: {{ . }}
{{- end }}
{{- end }}

{{- define "llm-gateway.extprocContainer" -}}
{{- $adminPort := include "llm-gateway.adminPort" . | int }}
{{- $sidecar := include "llm-gateway.sidecar" . }}
name: extproc
image: {{ include "llm-gateway.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if $sidecar }}
# A native sidecar: started before the application, stopped after it.
restartPolicy: Always
{{- end }}
command:
  - extproc
  - --log-level
  - {{ .Values.extproc.logLevel | quote }}
  - serve
  - --config
  - {{ include "llm-gateway.configFile" . }}
{{- if .Values.credentials.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.credentials.existingSecret }}
      optional: {{ .Values.credentials.optional }}
{{- end }}
{{- if or .Values.extraEnv .Values.externalRedis.existingSecret }}
env:
  {{- if .Values.externalRedis.existingSecret }}
  # The whole Redis URL (gateway.yaml's governance.redis.url_env names this variable).
  - name: {{ include "llm-gateway.redisUrlEnv" . }}
    valueFrom:
      secretKeyRef:
        name: {{ .Values.externalRedis.existingSecret }}
        key: {{ .Values.externalRedis.secretKey }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
ports:
  - name: {{ include "llm-gateway.adminPortName" . }}
    containerPort: {{ $adminPort }}
    protocol: TCP
{{- if $sidecar }}
startupProbe:
  # The processor serving; Envoy, declared after it, starts only then.
  httpGet:
    path: /healthz
    port: {{ include "llm-gateway.adminPortName" . }}
  periodSeconds: 1
  failureThreshold: 120
{{- end }}
readinessProbe:
  # Ready only while Envoy answers LIVE too (processor.ready_requires_envoy).
  httpGet:
    path: /readyz
    port: {{ include "llm-gateway.adminPortName" . }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ include "llm-gateway.adminPortName" . }}
  initialDelaySeconds: 5
  periodSeconds: 10
  failureThreshold: 3
lifecycle:
  preStop:
    exec:
      # Every request in flight through Envoy needs the processor: it keeps serving
      # until Envoy has drained and exited (bounded); SIGTERM follows.
      command:
        - extproc
        - wait-envoy-exit
        - --config
        - {{ include "llm-gateway.configFile" . }}
        - --timeout
        - {{ include "llm-gateway.processorStopWait" . | quote }}
resources:
  {{- toYaml .Values.extproc.resources | nindent 2 }}
securityContext:
  {{- include "llm-gateway.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: llm-gateway-config
    mountPath: {{ include "llm-gateway.configDir" . }}
    readOnly: true
  {{- if .Values.clientKeys.existingSecret }}
  - name: llm-gateway-client-keys
    mountPath: {{ include "llm-gateway.clientKeysDir" . }}
    readOnly: true
  {{- end }}
  - name: llm-gateway-socket
    mountPath: {{ include "llm-gateway.socketDir" . }}
  - name: llm-gateway-xds
    mountPath: {{ include "llm-gateway.xdsDir" . }}
  - name: llm-gateway-tmp-extproc
    mountPath: /tmp
{{- end }}

{{- define "llm-gateway.envoyContainer" -}}
{{- $listenerPort := include "llm-gateway.listenerPort" . | int }}
{{- $adminPort := include "llm-gateway.adminPort" . | int }}
{{- $sidecar := include "llm-gateway.sidecar" . }}
name: envoy
image: {{ include "llm-gateway.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if $sidecar }}
# A native sidecar, declared after extproc: started after it, stopped before it.
restartPolicy: Always
{{- end }}
# The bootstrap and the first listener, routes and clusters files are derived from the
# same gateway.yaml at start-up, never kept apart; the processor rewrites the files
# whenever it (re)loads the config, and Envoy follows them without a restart.
command:
  - sh
  - -c
  - >-
    extproc render-envoy --config {{ include "llm-gateway.configFile" . }} -o /tmp/envoy.yaml
    --xds-dir {{ include "llm-gateway.xdsDir" . }}
    && exec envoy -c /tmp/envoy.yaml --disable-hot-restart
    --concurrency {{ int .Values.envoy.concurrency }} --log-level {{ .Values.envoy.logLevel }}
{{- if $sidecar }}
# The listener is on loopback, out of the kubelet's reach: the processor's /readyz (on the pod
# IP) answers ready only while this Envoy is LIVE, so the application starts after both.
startupProbe:
  httpGet:
    path: /readyz
    port: {{ $adminPort }}
  periodSeconds: 1
  failureThreshold: 120
{{- else }}
ports:
  - name: http
    containerPort: {{ $listenerPort }}
    protocol: TCP
readinessProbe:
  # Answered by the processor through Envoy: ready means the whole path works.
  httpGet:
    path: /health
    port: http
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  tcpSocket:
    port: http
  initialDelaySeconds: 5
  periodSeconds: 10
  failureThreshold: 3
{{- end }}
lifecycle:
  preStop:
    exec:
      # Envoy exits at once on SIGTERM, so drain it first: fail its health checks,
      # keep accepting for drainDelaySeconds (each connection told to close), close
      # the listener, wait up to shutdown_grace_seconds for requests in flight.
      command:
        - extproc
        - drain
        - --config
        - {{ include "llm-gateway.configFile" . }}
        - --delay
        - {{ int .Values.drainDelaySeconds | quote }}
resources:
  {{- toYaml .Values.envoy.resources | nindent 2 }}
securityContext:
  {{- include "llm-gateway.containerSecurityContext" . | nindent 2 }}
volumeMounts:
  - name: llm-gateway-config
    mountPath: {{ include "llm-gateway.configDir" . }}
    readOnly: true
  - name: llm-gateway-socket
    mountPath: {{ include "llm-gateway.socketDir" . }}
  - name: llm-gateway-xds
    mountPath: {{ include "llm-gateway.xdsDir" . }}
  - name: llm-gateway-tmp-envoy
    mountPath: /tmp
{{- end }}

{{/* Both containers, extproc first (a list). */}}
{{- define "llm-gateway.containers" -}}
{{ include "llm-gateway.extprocContainer" . | trim | indent 2 | trimPrefix "  " | printf "- %s" }}
{{ include "llm-gateway.envoyContainer" . | trim | indent 2 | trimPrefix "  " | printf "- %s" }}
{{- end }}

{{- define "llm-gateway.volumes" -}}
- name: llm-gateway-config
  configMap:
    name: {{ include "llm-gateway.fullname" . }}
{{- with .Values.clientKeys.existingSecret }}
- name: llm-gateway-client-keys
  secret:
    secretName: {{ . }}
    # Read by uid 10001: through fsGroup in gateway mode (0440), world-readable in sidecar
    # mode (0444), where the application's pod may set no fsGroup.
    defaultMode: {{ if include "llm-gateway.sidecar" $ }}292{{ else }}288{{ end }}
{{- end }}
- name: llm-gateway-socket
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: llm-gateway-xds
  emptyDir:
    sizeLimit: 16Mi
- name: llm-gateway-tmp-extproc
  emptyDir:
    sizeLimit: 64Mi
- name: llm-gateway-tmp-envoy
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
