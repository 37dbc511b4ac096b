{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "kms-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource. */}}
{{- define "kms-injector.fullname" -}}
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

{{- define "kms-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kms-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kms-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "kms-injector.labels" -}}
helm.sh/chart: {{ include "kms-injector.chart" . }}
{{ include "kms-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kms-injector
{{- end }}

{{- define "kms-injector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kms-injector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Cluster-scoped objects (webhook configuration, ClusterRole) share the full name: a second
release of the same name in another namespace is refused by Helm instead of silently clashing. */}}
{{- define "kms-injector.webhookConfigName" -}}
{{- include "kms-injector.fullname" . }}
{{- end }}

{{- define "kms-injector.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "kms-injector.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "kms-injector.leaseName" -}}
{{- default (printf "%s-tls" (include "kms-injector.fullname" .)) .Values.tls.auto.leaseName }}
{{- end }}

{{/* DNS names the serving certificate must cover (how the API server reaches the Service). */}}
{{- define "kms-injector.dnsNames" -}}
{{- $svc := include "kms-injector.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* repository[:tag][@digest] from an {repository, tag, digest} map; tag defaults to appVersion. */}}
{{- define "kms-injector.imageRef" -}}
{{- $img := index . 0 }}
{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Namespaces the API server never sends: kube-system and our own, always, plus the extras. */}}
{{- define "kms-injector.excludedNamespaces" -}}
{{- concat (list "kube-system" .Release.Namespace) .Values.webhook.excludeNamespaces | uniq | toJson }}
{{- end }}
