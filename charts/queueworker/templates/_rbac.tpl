{{/*
The operator's RBAC rules: the same rules as manifests/rbac.yaml (tests/unit/test_chart.py compares them).
No secrets, no wildcards, nothing cluster-scoped. Each rule says whether kopf (framework) or queueworker
(application) needs it.
*/}}
{{- define "queueworker.operatorNamespacedRules" -}}
# framework: kopf posts Events (scaling, broker errors, handler results) on QueueWorkers.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# framework: kopf peering; operators sharing a KopfPeering object run one at a time.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [list, watch, patch]
# framework: watch QueueWorkers; patch them for kopf's finalizer and progress annotations.
- apiGroups: [queueworker.dev]
  resources: [queueworkers]
  verbs: [list, watch, patch]
# application: write replicas, queue metrics, conditions and the policy history.
- apiGroups: [queueworker.dev]
  resources: [queueworkers/status]
  verbs: [patch]
# application: index Deployments' replicas (list/watch, no per-tick GETs), create the owned worker
# Deployment from spec.template, patch replicas and the pod template.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch]
{{- end }}
