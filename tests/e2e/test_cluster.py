"""The test control plane itself: Deployments get Running pods on the fake node, RBAC is enforced,
and the server is the pinned Kubernetes release. Everything later in tests/e2e builds on these."""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cluster as control_plane
import httpx
import pytest

from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def namespace(k8s_cluster: control_plane.Cluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false")


def get_json(k8s_cluster: control_plane.Cluster, *args: str) -> Any:
    return json.loads(k8s_cluster.kubectl("get", "-o", "json", *args).stdout)


def apply(k8s_cluster: control_plane.Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    k8s_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                # No kubelet runs: kwok marks the pod Running, the image is never pulled.
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
            },
        },
    }


def test_deployment_pods_run_on_the_fake_node_and_follow_scaling(
    k8s_cluster: control_plane.Cluster, namespace: str
) -> None:
    def pods() -> dict[str, Any]:
        items = get_json(k8s_cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
        running = [p for p in items if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p]
        nodes = {str(p["spec"].get("nodeName")) for p in running}
        ready = get_json(k8s_cluster, "deployment/web", "-n", namespace)["status"].get("readyReplicas", 0)
        return {"pods": len(items), "running": len(running), "ready": ready, "nodes": sorted(nodes)}

    def settled_at(expected: int) -> Callable[[], bool]:
        def probe() -> bool:
            seen = pods()
            return seen["pods"] == seen["running"] == seen["ready"] == expected and (
                set(seen["nodes"]) <= {control_plane.NODE_NAME}
            )

        return probe

    # Given a Deployment of 3 replicas, when it is applied, then 3 pods run on the kwok node.
    apply(k8s_cluster, namespace, _deployment("web", 3))
    wait_for("3 Running pods", settled_at(3), 60, 0.2, state=pods)

    # When scaled up to 5, then 5 pods run; when scaled to 0, then every pod is gone.
    for replicas in (5, 0):
        k8s_cluster.kubectl("scale", "deployment/web", "-n", namespace, f"--replicas={replicas}")
        wait_for(f"{replicas} Running pods", settled_at(replicas), 60, 0.2, state=pods)


def test_rbac_denies_a_service_account_until_a_role_binding_allows_it(
    k8s_cluster: control_plane.Cluster, namespace: str, tmp_path: Path
) -> None:
    ca_data = k8s_cluster.kubectl(
        "config", "view", "--raw", "--minify", "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}"
    ).stdout
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(base64.b64decode(ca_data))
    k8s_cluster.kubectl("create", "serviceaccount", "bot", "-n", namespace)
    token = k8s_cluster.kubectl("create", "token", "bot", "-n", namespace, "--duration=10m").stdout.strip()
    as_bot = httpx.Client(
        base_url=k8s_cluster.server,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(ca_file)),
    )
    pods_url = f"/api/v1/namespaces/{namespace}/pods"

    # Given a fresh ServiceAccount, its token authenticates but may not list pods.
    assert as_bot.get("/apis").status_code == 200
    denied = as_bot.get(pods_url)
    assert denied.status_code == 403, denied.text
    assert f"system:serviceaccount:{namespace}:bot" in denied.json()["message"]

    # When a Role granting list on pods is bound to it, then listing pods in that namespace is allowed...
    k8s_cluster.kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    k8s_cluster.kubectl(
        "create", "rolebinding", "bot-reads-pods", "--role=pod-reader", f"--serviceaccount={namespace}:bot",
        "-n", namespace,
    )  # fmt: skip

    def bot_lists_pods() -> int:
        return as_bot.get(pods_url).status_code

    wait_for("the RoleBinding to take effect", lambda: bot_lists_pods() == 200, 60, 0.2, state=bot_lists_pods)
    # ...and nothing more: other namespaces and other resources stay forbidden.
    assert as_bot.get("/api/v1/namespaces/default/pods").status_code == 403
    assert as_bot.get(f"/api/v1/namespaces/{namespace}/secrets").status_code == 403


def test_server_and_tools_report_the_pinned_versions(k8s_cluster: control_plane.Cluster) -> None:
    pinned = control_plane.pinned_k8s_version()
    versions = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned
    # helm reaches the same API server through the same kubeconfig.
    assert k8s_cluster.helm("version", "--short").stdout.startswith("v3.")
    assert json.loads(k8s_cluster.helm("list", "--all-namespaces", "-o", "json").stdout) == []
