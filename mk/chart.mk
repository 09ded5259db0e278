# The Helm chart (charts/queueworker): lint every CI scenario, regenerate what is derived from it.
#   make chart-lint   -> helm lint --strict with each ci/*-values.yaml, promtool on the alert rules
#   make manifests    -> (the Makefile's) manifests/api.yaml and janitor.yaml from the chart; make crd: the CRD
#   make dashboards   -> charts/queueworker/dashboards/*.json from dashboards/build.py
HELM ?= .cluster/bin/helm
CHART_DIR := charts/queueworker

.PHONY: chart-lint dashboards

chart-lint:
	for v in $(CHART_DIR)/ci/*-values.yaml; do $(HELM) lint --strict $(CHART_DIR) -f $$v || exit 1; done
	promtool check rules $(CHART_DIR)/rules/queueworker.rules.yaml
	cd $(CHART_DIR)/rules && promtool test rules queueworker.rules.test.yaml

dashboards:
	$(PY) $(CHART_DIR)/dashboards/build.py
