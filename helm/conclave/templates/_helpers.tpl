{{/* Chart name. */}}
{{- define "conclave.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart, or fullnameOverride. */}}
{{- define "conclave.fullname" -}}
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

{{- define "conclave.labels" -}}
app.kubernetes.io/name: {{ include "conclave.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "conclave.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conclave.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "conclave.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "conclave.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "conclave.manifestSecret" -}}
{{- default (printf "%s-manifest" (include "conclave.fullname" .)) .Values.manifest.existingSecret -}}
{{- end -}}

{{/* Image by digest only: a tag can move, the manifest pins the digest. */}}
{{- define "conclave.image" -}}
{{- required "image.digest is required (sha256:...)" .Values.image.digest | printf "%s@%s" .Values.image.repository -}}
{{- end -}}

{{/* Exactly one head pool. */}}
{{- define "conclave.headPool" -}}
{{- $heads := list -}}
{{- range .Values.pools -}}
{{- if eq .role "head" -}}{{- $heads = append $heads .name -}}{{- end -}}
{{- end -}}
{{- if ne (len $heads) 1 -}}
{{- fail (printf "exactly one pool must have role head (found %d)" (len $heads)) -}}
{{- end -}}
{{- first $heads -}}
{{- end -}}
