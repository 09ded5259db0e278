# The test control plane (tests/cluster/): binaries built from pinned Go modules into a cache outside
# the repo (~/.cache/queueworker/cluster, or QW_CLUSTER_CACHE), linked into .cluster/bin.
#   make cluster-up    -> leaves it running; kubectl --kubeconfig .cluster/kubeconfig get nodes
#   make cluster-down  -> stops it and removes its state (binaries stay cached)
# Reuse a running one in the e2e tests: QW_KUBECONFIG=.cluster/kubeconfig make test-e2e
CLUSTER_DIR ?= .cluster

.PHONY: cluster-bin cluster-up cluster-down cluster-status test-e2e

cluster-bin:
	bash tests/cluster/build.sh

cluster-up:  # builds (cached) into $(CLUSTER_DIR)/bin first
	python3 tests/cluster/cluster.py up --dir $(CLUSTER_DIR)

cluster-down:
	python3 tests/cluster/cluster.py down --dir $(CLUSTER_DIR)

cluster-status:
	python3 tests/cluster/cluster.py status --dir $(CLUSTER_DIR)

test-e2e: deps cluster-bin rabbitmq4-root
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)
