{{/* The chart's name, or nameOverride. */}}
{{- define "gofe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: fullnameOverride, else RELEASE (when it contains the chart's
name) or RELEASE-NAME. Parts append -controller, -proxy, -adapter. */}}
{{- define "gofe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else if contains (include "gofe.name" .) .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "gofe.name" .) | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "gofe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gofe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select this release's pods; each part adds app.kubernetes.io/component. */}}
{{- define "gofe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gofe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The image, tag defaulting to the appVersion. */}}
{{- define "gofe.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* The controller's Lease name. */}}
{{- define "gofe.leaseName" -}}
{{- default (printf "%s-controller" (include "gofe.fullname" .)) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{/* The controller's configuration: files/controller.yaml with the values set over it. */}}
{{- define "gofe.controllerConfig" -}}
{{- $config := .Files.Get "files/controller.yaml" | fromYaml }}
{{- $scrape := .Values.controller.prometheus.scrapeInterval }}
{{- if not $scrape }}
{{- if .Values.metrics.serviceMonitor.enabled }}{{ $scrape = .Values.metrics.serviceMonitor.interval }}
{{- else if .Values.metrics.podMonitor.enabled }}{{ $scrape = .Values.metrics.podMonitor.interval }}
{{- else }}{{ $scrape = "15s" }}{{ end }}
{{- end }}
{{- $_ := set $config.signals "prometheus" (dict "url" .Values.controller.prometheus.url "scrape_interval" $scrape) }}
{{- $_ := set $config "policy" .Values.controller.policy }}
{{- $le := .Values.controller.leaderElection }}
{{- $_ := set $config.kubernetes "leader_election" (dict "enabled" $le.enabled "lease_name" (include "gofe.leaseName" .) "lease_duration" $le.leaseDuration "renew_deadline" $le.renewDeadline "retry_period" $le.retryPeriod) }}
{{- if .Values.controller.watchNamespace }}
{{- $_ := set $config.kubernetes "namespace" .Values.controller.watchNamespace }}
{{- end }}
{{- if .Values.controller.clusterName }}
{{- $_ := set $config.kubernetes "cluster_name" .Values.controller.clusterName }}
{{- end }}
{{- if .Values.controller.remoteClusters }}
{{- $remotes := list }}
{{- range .Values.controller.remoteClusters }}
{{- $remotes = append $remotes (dict "name" .name "secret" (dict "name" .secret "namespace" $.Release.Namespace)) }}
{{- end }}
{{- $_ := set $config.kubernetes "clusters" $remotes }}
{{- end }}
{{- if .Values.injection.enabled }}
{{- $_ := set $config "webhook" (include "gofe.webhookConfig" . | fromYaml) }}
{{- end }}
{{- with .Values.controller.xds.tls }}
{{- if .secretName }}
{{- $tls := dict "cert_file" "/var/run/gofe-xds/tls.crt" "key_file" "/var/run/gofe-xds/tls.key" }}
{{- if .mutual }}
{{- $_ := set $tls "client_ca_file" "/var/run/gofe-xds/ca.crt" }}
{{- end }}
{{- $_ := set $config.xds "tls" $tls }}
{{- end }}
{{- end }}
{{- with .Values.controller.identity }}
{{- if .enabled }}
{{- $svc := printf "%s-controller" (include "gofe.fullname" $) }}
{{- $names := list $svc (printf "%s.%s" $svc $.Release.Namespace) (printf "%s.%s.svc" $svc $.Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc $.Release.Namespace) }}
{{- $_ := set $config "identity" (dict "trust_domain" .trustDomain "workload_ttl" .workloadTtl "root" (dict "cert_file" "/var/run/gofe-mesh-ca/tls.crt" "key_file" "/var/run/gofe-mesh-ca/tls.key") "token_review" true "token_audiences" (list "gofe") "server_names" $names) }}
{{- end }}
{{- end }}
{{- toYaml (mergeOverwrite $config .Values.controller.config) }}
{{- end }}

{{/* The mesh CA's root Secret: controller.identity.rootSecretName, or the generated one. */}}
{{- define "gofe.meshCaSecret" -}}
{{- default (printf "%s-mesh-ca" (include "gofe.fullname" .)) .Values.controller.identity.rootSecretName }}
{{- end }}

{{/* The proxies' base configuration, served by the controller. */}}
{{- define "gofe.proxyConfig" -}}
{{- if .Values.proxy.config }}
{{- toYaml .Values.proxy.config }}
{{- else }}
{{- .Files.Get "files/proxy.yaml" }}
{{- end }}
{{- end }}

{{/* The proxies' bootstrap: files/bootstrap.yaml pointed at the controller's xDS Service. */}}
{{- define "gofe.proxyBootstrap" -}}
{{- $bootstrap := .Files.Get "files/bootstrap.yaml" | fromYaml }}
{{- $address := printf "%s-controller.%s.svc:18000" (include "gofe.fullname" .) .Release.Namespace }}
{{- $server := dict "address" $address }}
{{- if .Values.controller.xds.tls.secretName }}
{{- $_ := set $server "tls" (dict "ca" "/var/run/gofe-xds-ca/ca.crt" "server_name" (printf "%s-controller.%s.svc" (include "gofe.fullname" .) .Release.Namespace)) }}
{{- else if .Values.controller.identity.enabled }}
{{- $_ := set $server "tls" (dict "ca" "/var/run/gofe-mesh-ca/ca.crt" "server_name" (printf "%s-controller.%s.svc" (include "gofe.fullname" .) .Release.Namespace)) }}
{{- $_ := set $bootstrap "identity" (dict "token_file" "/var/run/secrets/gofe/token") }}
{{- end }}
{{- $_ := set $bootstrap "xds_server" $server }}
{{- toYaml $bootstrap }}
{{- end }}

{{/* The adapter's serving certificate Secret: adapter.tls.secretName, or the generated one. */}}
{{- define "gofe.adapterTlsSecret" -}}
{{- default (printf "%s-adapter-tls" (include "gofe.fullname" .)) .Values.adapter.tls.secretName }}
{{- end }}

{{/* The sidecar-injection webhook's serving certificate Secret. */}}
{{- define "gofe.injectorTlsSecret" -}}
{{- printf "%s-injector-tls" (include "gofe.fullname" .) }}
{{- end }}

{{/* What both injection webhooks share (dict: root, caBundle). */}}
{{- define "gofe.injectorWebhook" -}}
{{- $root := .root -}}
clientConfig:
  service:
    name: {{ include "gofe.fullname" $root }}-controller
    namespace: {{ $root.Release.Namespace }}
    path: /inject
    port: 443
  {{- if .caBundle }}
  caBundle: {{ .caBundle }}
  {{- end }}
rules:
  - { operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods], scope: Namespaced }
admissionReviewVersions: [v1]
sideEffects: None
failurePolicy: {{ $root.Values.injection.failurePolicy }}
timeoutSeconds: {{ $root.Values.injection.timeoutSeconds }}
reinvocationPolicy: Never
{{- end }}

{{/* The controller file's webhook section (injection.enabled). */}}
{{- define "gofe.webhookConfig" -}}
{{- $i := .Values.injection }}
{{- $sidecar := dict "image" (include "gofe.image" .) "xds_address" (printf "%s-controller.%s.svc:18000" (include "gofe.fullname" .) .Release.Namespace) "native_sidecar" $i.nativeSidecar "proxy_cpu" $i.proxy.cpu "proxy_memory" $i.proxy.memory "log_level" $i.proxy.logLevel "log_format" .Values.logFormat "image_pull_policy" .Values.image.pullPolicy }}
{{- if $i.proxy.memoryLimit }}
{{- $_ := set $sidecar "proxy_memory_limit" $i.proxy.memoryLimit }}
{{- end }}
{{- toYaml (dict "address" "0.0.0.0:9443" "cert_file" "/var/run/gofe-webhook/tls.crt" "key_file" "/var/run/gofe-webhook/tls.key" "failure_policy" $i.failurePolicy "sidecar" $sidecar) }}
{{- end }}
