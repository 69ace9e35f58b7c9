{{/* Labels every object carries; `meshcnictl status` and `disable` select on them. */}}
{{- define "meshcni.labels" -}}
app.kubernetes.io/name: meshcni
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: meshcni
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The labels plus the component: agent or controller. */}}
{{- define "meshcni.componentLabels" -}}
{{ include "meshcni.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The controller pods' selector: never changes across versions. */}}
{{- define "meshcni.controllerSelector" -}}
app.kubernetes.io/name: meshcni-controller
{{- end -}}

{{/* The agent pods' selector: never changes across versions. */}}
{{- define "meshcni.selector" -}}
app.kubernetes.io/name: meshcni
app.kubernetes.io/component: agent
{{- end -}}

{{/* The platform's entry in .Values.platforms; fails on an unknown name. */}}
{{- define "meshcni.platform" -}}
{{- $p := index .Values.platforms .Values.platform -}}
{{- if not $p -}}
{{- fail (printf "platform %q is not in .Values.platforms: use one of %s, or set cniBinDir and cniConfDir" .Values.platform (keys .Values.platforms | sortAlpha | join ", ")) -}}
{{- end -}}
{{- toJson $p -}}
{{- end -}}

{{- define "meshcni.cniBinDir" -}}
{{- .Values.cniBinDir | default (include "meshcni.platform" . | fromJson).cniBinDir -}}
{{- end -}}

{{- define "meshcni.cniConfDir" -}}
{{- .Values.cniConfDir | default (include "meshcni.platform" . | fromJson).cniConfDir -}}
{{- end -}}

{{- define "meshcni.privileged" -}}
{{- if or .Values.privileged (include "meshcni.platform" . | fromJson).privileged }}true{{ else }}false{{ end -}}
{{- end -}}

{{/* Excluded namespaces, comma-separated, the chart's own always last. */}}
{{- define "meshcni.excludeNamespaces" -}}
{{- $ns := list -}}
{{- range .Values.excludeNamespaces }}{{ if ne . $.Release.Namespace }}{{ $ns = append $ns . }}{{ end }}{{ end -}}
{{- append ($ns | uniq) .Release.Namespace | join "," -}}
{{- end -}}

{{/* repository@digest when a digest is given (it pins the bytes), else repository:tag. */}}
{{- define "meshcni.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}
