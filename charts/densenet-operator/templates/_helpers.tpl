{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "densenet-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object's name. <release>-<chart>, or <release> alone when it
already contains the chart name.
*/}}
{{- define "densenet-operator.fullname" -}}
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

{{- define "densenet-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "densenet-operator.labels" -}}
helm.sh/chart: {{ include "densenet-operator.chart" . }}
{{ include "densenet-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: densenet-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator pods' labels, and the Deployment's and Service's selector. */}}
{{- define "densenet-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "densenet-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "densenet-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "densenet-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when the replicas coordinate through a kopf peering object, else "". */}}
{{- define "densenet-operator.peering" -}}
{{- if kindIs "bool" .Values.peering.enabled }}
{{- if .Values.peering.enabled }}true{{ end }}
{{- else if gt (int .Values.replicas) 1 }}true
{{- end }}
{{- end }}

{{- define "densenet-operator.peeringName" -}}
{{- default (include "densenet-operator.fullname" .) .Values.peering.name }}
{{- end }}

{{- define "densenet-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "densenet-operator.trainerImage" -}}
{{- default (printf "densenet-trainer:%s" .Chart.AppVersion) .Values.trainer.image }}
{{- end }}

{{/* The trainer image of an Ascend family: (dict "root" $ "family" "910b"). */}}
{{- define "densenet-operator.ascendTrainerImage" -}}
{{- $root := .root }}
{{- default (printf "densenet-trainer:%s-%s" $root.Chart.AppVersion .family) (index $root.Values.trainer.ascendImages .family) }}
{{- end }}
