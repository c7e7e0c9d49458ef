{{- define "fhirbox.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fhirbox.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fhirbox.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fhirbox.check" -}}
{{- if and (gt (int .Values.replicaCount) 1) (ne .Values.database.type "postgres") -}}
{{- fail "replicaCount > 1 needs database.type=postgres: an embedded SQLite file cannot be shared between replicas" -}}
{{- end -}}
{{- if not (has .Values.database.type (list "sqlite" "postgres")) -}}
{{- fail (printf "database.type must be sqlite or postgres, not %q" .Values.database.type) -}}
{{- end -}}
{{- if eq .Values.database.type "postgres" -}}
{{- $_ := required "database.postgres.host is required when database.type=postgres" .Values.database.postgres.host -}}
{{- end -}}
{{- end -}}

{{- define "fhirbox.vaultConfig" -}}
{{- $secrets := dict -}}
{{- range $name, $s := .Values.vault.secrets -}}
{{- $entry := dict "path" (printf "%s/%s" $.Values.vault.mountPath $s.file) "scope" $s.scope -}}
{{- if $s.rotationGrace -}}{{- $_ := set $entry "rotation_grace" $s.rotationGrace -}}{{- end -}}
{{- $_ := set $secrets $name $entry -}}
{{- end -}}
{{- dict "secret" $secrets | toPrettyJson -}}
{{- end -}}
