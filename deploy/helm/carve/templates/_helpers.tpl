{{/* The namespace of every namespaced object: namespace.name, else the release's. */}}
{{- define "carve.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* repository:tag of one entry of .Values.images. */}}
{{- define "carve.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* A container's optional fields: imagePullPolicy, then resources. Call with (list $ resources). */}}
{{- define "carve.containerExtras" -}}
{{- $root := index . 0 -}}
{{- $res := index . 1 -}}
{{- with $root.Values.imagePullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- with $res }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* carve-csi's flags that differ from its defaults only when the values do. */}}
{{- define "carve.driverNameArg" -}}
{{- if ne .Values.driverName "carve.csi.dev" }}
- --drivername={{ .Values.driverName }}
{{- end }}
{{- end -}}

{{/* Optional pod fields: nodeSelector, affinity, tolerations. Call with the component's values. */}}
{{- define "carve.podPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
