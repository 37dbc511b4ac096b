{{/* The change relay (kms-injector relay): names and labels. Its own component label, so the
webhook's Service, PDB and anti-affinity never select relay pods and the other way round. */}}
{{- define "kms-injector.relay.fullname" -}}
{{- printf "%s-relay" (include "kms-injector.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kms-injector.relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kms-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end }}

{{- define "kms-injector.relay.labels" -}}
helm.sh/chart: {{ include "kms-injector.chart" . }}
{{ include "kms-injector.relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kms-injector
{{- end }}

{{/* The Secret with the relay's serving certificate (files modes); ca.crt in it is the CA agents trust. */}}
{{- define "kms-injector.relay.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "kms-injector.relay.fullname" .)) .Values.relay.tls.secretName }}
{{- end }}

{{- define "kms-injector.relay.dnsNames" -}}
{{- $svc := include "kms-injector.relay.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* What agents put in AgentConfig.relay_url (the webhook adds it when the relay is enabled). */}}
{{- define "kms-injector.relay.url" -}}
{{- printf "https://%s.%s.svc:%v" (include "kms-injector.relay.fullname" .) .Release.Namespace .Values.relay.service.port }}
{{- end }}
