{{/* Chart name. */}}
{{- define "tg-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "tg-bridge.fullname" -}}
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

{{/* Name of one service's resources: <fullname>-<service>. Needs dict "root" "name". */}}
{{- define "tg-bridge.componentName" -}}
{{- printf "%s-%s" (include "tg-bridge.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tg-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "tg-bridge.labels" -}}
helm.sh/chart: {{ include "tg-bridge.chart" . }}
app.kubernetes.io/name: {{ include "tg-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tg-bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one service. Needs dict "root" "name". */}}
{{- define "tg-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tg-bridge.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Labels of one service's resources. Needs dict "root" "name". */}}
{{- define "tg-bridge.componentLabels" -}}
{{ include "tg-bridge.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* The service's settings: `defaults` overridden by its own entry. Needs dict "root" "svc". */}}
{{- define "tg-bridge.settings" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.defaults) (deepCopy .svc)) -}}
{{- end -}}

{{- define "tg-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tg-bridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tg-bridge.configMapName" -}}
{{- default (printf "%s-config" (include "tg-bridge.fullname" .)) .Values.config.existingConfigMap -}}
{{- end -}}

{{- define "tg-bridge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The ConfigMaps and Secrets one service's pods reference but the chart does not render, as a
list of "Kind/name". Needs dict "root" "s" (the service's settings).
*/}}
{{- define "tg-bridge.references" -}}
{{- $root := .root -}}
{{- $creds := .s.credentials | default list -}}
{{- $refs := list -}}
{{- with $root.Values.config.existingConfigMap }}{{ $refs = append $refs (printf "ConfigMap/%s" .) }}{{ end -}}
{{- with $root.Values.bus.creds.existingSecret }}{{ $refs = append $refs (printf "Secret/%s" .) }}{{ end -}}
{{- if or (has "tg" $creds) (has "tgWebhook" $creds) }}{{ with $root.Values.secrets.tg.existingSecret }}{{ $refs = append $refs (printf "Secret/%s" .) }}{{ end }}{{ end -}}
{{- if has "entra" $creds }}{{ with $root.Values.secrets.entra.existingSecret }}{{ $refs = append $refs (printf "Secret/%s" .) }}{{ end }}{{ end -}}
{{- if has "dataverseWebhook" $creds }}{{ with $root.Values.secrets.dataverse.existingSecret }}{{ $refs = append $refs (printf "Secret/%s" .) }}{{ end }}{{ end -}}
{{- range .s.extraVolumes | default list }}
{{- if .configMap }}{{ $refs = append $refs (printf "ConfigMap/%s" .configMap.name) }}{{ end }}
{{- if .secret }}{{ $refs = append $refs (printf "Secret/%s" .secret.secretName) }}{{ end }}
{{- end -}}
{{- toJson (uniq $refs) -}}
{{- end -}}

{{/*
sha256 over the referenced objects' data, read with lookup (install/upgrade); under helm template
lookup returns nothing and only the names are hashed. Needs dict "root" "s".
*/}}
{{- define "tg-bridge.referencesChecksum" -}}
{{- $root := .root -}}
{{- $parts := list -}}
{{- range (include "tg-bridge.references" . | fromJsonArray) }}
{{- $kind := index (splitList "/" .) 0 -}}
{{- $name := index (splitList "/" .) 1 -}}
{{- $obj := lookup "v1" $kind $root.Release.Namespace $name -}}
{{- $parts = append $parts (printf "%s=%s%s" . (toJson ($obj.data | default dict)) (toJson ($obj.binaryData | default dict))) -}}
{{- end -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}
