# The test control plane (tests/cluster/): binaries built from pinned Go modules into a cache outside
# the repo (~/.cache/queueworker/cluster, or QW_CLUSTER_CACHE), linked into .cluster/bin.
#   make cluster-up    -> leaves it running; kubectl --kubeconfig .cluster/kubeconfig get nodes
#   make cluster-up REAL_NODE=1 -> also a real node qw-node-0 (containerd + kubelet + kube-proxy + CoreDNS; root;
#                         changes the host, see tests/cluster/README.md)
#   make cluster-down  -> stops it (and the real node), restores the host, removes its state (binaries stay cached)
#   make test-real     -> the real-node suites alone (tests/e2e/test_real_node.py, test_helm_real.py)
#   make fleet         -> the operator's fleet e2e (tests/e2e/test_operator_fleet.py) at 1,000 QueueWorkers
#                         (FLEET_N=...; `make test` runs it at 200): statuses, restart without flapping or 429
# Reuse a running one in the e2e tests: QW_KUBECONFIG=.cluster/kubeconfig make test-e2e
CLUSTER_DIR ?= .cluster
REAL_NODE ?=

.PHONY: cluster-bin cluster-up cluster-down cluster-status test-e2e test-real fleet

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

# Every wait in the module is bounded; the timeout (SIGINT: pytest still stops the operator, broker and control
# plane) bounds the whole run too.
FLEET_N ?= 1000
FLEET_TIMEOUT ?= 2400
fleet: deps cluster-bin
	QW_FLEET_N=$(FLEET_N) timeout -k 60 -s INT $(FLEET_TIMEOUT) \
	  $(PY) -m pytest -p no:cacheprovider -s tests/e2e/test_operator_fleet.py $(PYTEST_ARGS)
