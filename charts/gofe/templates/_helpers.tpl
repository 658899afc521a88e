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
{{- $_ := set $config.signals "prometheus" (dict "url" .Values.controller.prometheus.url) }}
{{- $_ := set $config "policy" .Values.controller.policy }}
{{- $le := .Values.controller.leaderElection }}
{{- $_ := set $config.kubernetes "leader_election" (dict "enabled" $le.enabled "lease_name" (include "gofe.leaseName" .) "lease_duration" $le.leaseDuration "renew_deadline" $le.renewDeadline "retry_period" $le.retryPeriod) }}
{{- if .Values.controller.watchNamespace }}
{{- $_ := set $config.kubernetes "namespace" .Values.controller.watchNamespace }}
{{- end }}
{{- toYaml (mergeOverwrite $config .Values.controller.config) }}
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
{{- $_ := set $bootstrap "xds_server" (dict "address" $address) }}
{{- toYaml $bootstrap }}
{{- end }}

{{/* The adapter's serving certificate Secret: adapter.tls.secretName, or the generated one. */}}
{{- define "gofe.adapterTlsSecret" -}}
{{- default (printf "%s-adapter-tls" (include "gofe.fullname" .)) .Values.adapter.tls.secretName }}
{{- end }}
