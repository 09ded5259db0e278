# The test control plane (tests/cluster/): binaries built from pinned Go modules into a cache outside
# the repo (~/.cache/queueworker/cluster, or QW_CLUSTER_CACHE), linked into .cluster/bin.
#   make cluster-up    -> leaves it running; kubectl --kubeconfig .cluster/kubeconfig get nodes
#   make cluster-up REAL_NODE=1 -> also a real node qw-node-0 (containerd + kubelet + kube-proxy + CoreDNS; root;
#                         changes the host, see tests/cluster/README.md)
#   make cluster-down  -> stops it (and the real node), restores the host, removes its state (binaries stay cached)
#   make test-real     -> the real-node suites alone (tests/e2e/test_real_node.py, test_helm_real.py)
# Reuse a running one in the e2e tests: QW_KUBECONFIG=.cluster/kubeconfig make test-e2e
CLUSTER_DIR ?= .cluster
REAL_NODE ?=

.PHONY: cluster-bin cluster-up cluster-down cluster-status test-e2e test-real

cluster-bin:
	bash tests/cluster/build.sh

cluster-up:  # builds (cached) into $(CLUSTER_DIR)/bin first
	python3 tests/cluster/cluster.py up --dir $(CLUSTER_DIR) $(if $(filter-out 0,$(REAL_NODE)),--real-node)

cluster-down:
	python3 tests/cluster/cluster.py down --dir $(CLUSTER_DIR)

cluster-status:
	python3 tests/cluster/cluster.py status --dir $(CLUSTER_DIR)

test-e2e: deps cluster-bin rabbitmq4-root
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test-real: deps cluster-bin  # the real node's suites alone (+ the chart and manifests on it); `make test` runs them too
	$(PY) -m pytest -p no:cacheprovider tests/e2e/test_real_node.py tests/e2e/test_helm_real.py $(PYTEST_ARGS)
