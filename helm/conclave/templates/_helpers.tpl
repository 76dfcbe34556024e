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

{{/* The head stage's name: exactly one stage of all pools has role head. */}}
{{- define "conclave.headStage" -}}
{{- $heads := list -}}
{{- range .Values.pools -}}
{{- range .stages -}}
{{- if eq .role "head" -}}{{- $heads = append $heads .name -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if ne (len $heads) 1 -}}
{{- fail (printf "exactly one stage must have role head (found %d)" (len $heads)) -}}
{{- end -}}
{{- first $heads -}}
{{- end -}}

{{/* StatefulSet of one stage: <fullname>-<stage>. At most 52 characters, because Kubernetes
adds "-<10-char hash>" to it in the controller-revision-hash label (63 at most); refused
rather than truncated, so two stages can never collide. */}}
{{- define "conclave.stageWorkload" -}}
{{- $root := index . 0 -}}
{{- $stage := index . 1 -}}
{{- $name := printf "%s-%s" (include "conclave.fullname" $root) $stage -}}
{{- if gt (len $name) 52 -}}
{{- fail (printf "workload name %q is longer than 52 characters: shorten the stage name or set fullnameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/*
Stage names come from the signed manifest (stages[].node), never from Kubernetes node names.
Checks at render time: every stage name is listed once across all pools; and, when the signed
manifest is given inline (manifest.signed), every listed stage exists in it with owner equal to
its pool's name and the same role. With manifest.existingSecret the chart cannot read the
manifest; each node still refuses to start on a stage its verified manifest does not list.
*/}}
{{- define "conclave.checkStages" -}}
{{- $seen := dict -}}
{{- range $pool := .Values.pools -}}
{{- range $stage := $pool.stages -}}
{{- if hasKey $seen $stage.name -}}
{{- fail (printf "stage %q is listed twice (pools %s and %s)" $stage.name (get $seen $stage.name) $pool.name) -}}
{{- end -}}
{{- $_ := set $seen $stage.name $pool.name -}}
{{- end -}}
{{- end -}}
{{- if .Values.manifest.signed -}}
{{- $doc := fromJson .Values.manifest.signed -}}
{{- if or (hasKey $doc "Error") (not (hasKey $doc "manifest")) -}}
{{- fail "manifest.signed is not a signed manifest (JSON object with a \"manifest\" member)" -}}
{{- end -}}
{{- $byNode := dict -}}
{{- range $doc.manifest.stages -}}
{{- $_ := set $byNode (toString .node) . -}}
{{- end -}}
{{- range $pool := .Values.pools -}}
{{- range $stage := $pool.stages -}}
{{- $m := get $byNode $stage.name -}}
{{- if not $m -}}
{{- fail (printf "stage %q (pool %s) is not a stage of the signed manifest" $stage.name $pool.name) -}}
{{- end -}}
{{- if ne (toString $m.owner) $pool.name -}}
{{- fail (printf "stage %q: the signed manifest gives owner %q, its pool is %q" $stage.name (toString $m.owner) $pool.name) -}}
{{- end -}}
{{- if ne (toString $m.role) $stage.role -}}
{{- fail (printf "stage %q: the signed manifest gives role %q, values say %q" $stage.name (toString $m.role) $stage.role) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
