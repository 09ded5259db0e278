"""The e2e suites' Kubernetes: a real etcd, kube-apiserver (RBAC on), controller-manager, scheduler and a
kwok fake node, built from pinned Go modules (tests/cluster/build.sh, cached) and started once per session.

QW_KUBECONFIG=path reuses a running control plane (e.g. `make cluster-up`, then
QW_KUBECONFIG=.cluster/kubeconfig). QW_REAL_NODE=1 starts it with the real node (containerd + kubelet,
tests/cluster/real_node.py) for the whole session; without it, tests/e2e/test_real_node.py adds the node for
its module only. Nothing here skips: a control plane that cannot be built or started
fails the tests, with the failing component's log tail in the error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))

import subprocess  # noqa: E402
from typing import Any  # noqa: E402

import cluster as control_plane  # noqa: E402

from tests.e2e.harness import Env, drop_env, make_env, stop  # noqa: E402
from tests.support.wait import wait_for


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[control_plane.Cluster]:
    """A running control plane: `.kubeconfig`, `.server`, `.kubectl(*args)`, `.helm(*args)`."""
    bin_dir = control_plane.build()  # a cache hit takes about a second
    reuse = os.environ.get("QW_KUBECONFIG")
    if reuse:
        yield control_plane.attach(Path(reuse), bin_dir)
        return
    cluster_dir = tmp_path_factory.mktemp("k8s")
    real_node = os.environ.get("QW_REAL_NODE", "") not in ("", "0")
    cluster = control_plane.start(cluster_dir, bin_dir, die_with_parent=True, real_node=real_node)
    try:
        yield cluster
    finally:
        # Logs stay in pytest's basetemp (the last three runs are kept) for debugging a failure.
        control_plane.stop(cluster_dir, remove=False)


@pytest.fixture(scope="module")
def env(k8s_cluster: control_plane.Cluster, broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Per test module: a namespace bound to the shipped RBAC and a vhost on the session broker."""
    e = make_env(k8s_cluster, broker, tmp_path_factory.mktemp("operator"))
    yield e
    drop_env(e, broker)


@pytest.fixture
def operator(env: Env, request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    """One operator per test (about 1 s to start), so a test may kill it; it stops cleanly (SIGTERM), leaving
    the peering for the next one at once."""
    name = f"operator-{request.node.name}"
    proc = env.start_operator(name)
    wait_for("the operator to lead", lambda: "Resuming operations" in env.log(name), 30)
    yield proc
    stop(proc)
    if "Forbidden" in env.log(name):
        pytest.fail("the operator hit a permission error:\n" + env.log(name)[-3000:])
