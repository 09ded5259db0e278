"""The test control plane itself: Deployments get Running pods on the fake node, RBAC is enforced,
and the server is the pinned Kubernetes release. Everything later in tests/e2e builds on these."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import cluster as control_plane
import httpx
import pytest
from kubernetes import client, config

pytestmark = pytest.mark.e2e


def wait_until(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Polls probe until it returns something truthy; fails with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


@pytest.fixture(scope="module")
def api_config(k8s_cluster: control_plane.Cluster) -> client.Configuration:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(k8s_cluster.kubeconfig), client_configuration=cfg)
    return cfg


@pytest.fixture
def namespace(k8s_cluster: control_plane.Cluster, api_config: client.Configuration) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(client.ApiClient(api_config))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


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
    api_config: client.Configuration, namespace: str
) -> None:
    api = client.ApiClient(api_config)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)

    def running_pods() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]

    def pods_state(expected: int) -> Callable[[], Any]:
        def probe() -> Any:
            all_pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
            running = running_pods()
            on_node = all(p.spec.node_name == control_plane.NODE_NAME for p in running)
            ready = apps.read_namespaced_deployment(name="web", namespace=namespace).status.ready_replicas or 0
            if len(all_pods) == len(running) == expected and ready == expected and on_node:
                return True
            return {"pods": len(all_pods), "running": len(running), "ready": ready, "on_node": on_node}

        return probe

    # Given a Deployment of 3 replicas, when it is created, then 3 pods run on the kwok node.
    apps.create_namespaced_deployment(namespace, _deployment("web", 3))
    wait_until("3 Running pods", pods_state(3))

    # When scaled up to 5, then 5 pods run; when scaled to 0, then every pod is gone.
    for replicas in (5, 0):
        apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": replicas}})
        wait_until(f"{replicas} Running pods", pods_state(replicas))


def test_rbac_denies_a_service_account_until_a_role_binding_allows_it(
    k8s_cluster: control_plane.Cluster, api_config: client.Configuration, namespace: str
) -> None:
    core = client.CoreV1Api(client.ApiClient(api_config))
    rbac = client.RbacAuthorizationV1Api(client.ApiClient(api_config))
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="bot")))
    token = k8s_cluster.kubectl("create", "token", "bot", "-n", namespace, "--duration=10m").stdout.strip()
    as_bot = httpx.Client(
        base_url=k8s_cluster.server,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=api_config.ssl_ca_cert),
    )
    pods_url = f"/api/v1/namespaces/{namespace}/pods"

    # Given a fresh ServiceAccount, its token authenticates but may not list pods.
    assert as_bot.get("/apis").status_code == 200
    denied = as_bot.get(pods_url)
    assert denied.status_code == 403, denied.text
    assert f"system:serviceaccount:{namespace}:bot" in denied.json()["message"]

    # When a Role granting list on pods is bound to it, then listing pods in that namespace is allowed...
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "bot-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "bot", "namespace": namespace}],
        },
    )
    allowed = wait_until("the RoleBinding to take effect", lambda: as_bot.get(pods_url).status_code == 200)
    assert allowed
    # ...and nothing more: other namespaces and other verbs stay forbidden.
    assert as_bot.get("/api/v1/namespaces/default/pods").status_code == 403
    assert as_bot.get(f"/api/v1/namespaces/{namespace}/secrets").status_code == 403


def test_server_and_tools_report_the_pinned_versions(k8s_cluster: control_plane.Cluster) -> None:
    pinned = control_plane.pinned_k8s_version()
    versions = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == pinned
    assert versions["clientVersion"]["gitVersion"] == pinned
    # helm reaches the same API server through the same kubeconfig.
    assert k8s_cluster.helm("version", "--short").stdout.startswith("v3.")
    assert k8s_cluster.helm("list", "--all-namespaces", "-o", "json").stdout.strip() == "[]"
