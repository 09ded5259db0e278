"""The Helm chart on the real control plane: lint, a server-side dry run of every scenario, install into a
namespace enforcing Pod Security "restricted" (pods really admitted, on the kwok node), the operator's RBAC
proven minimal with `kubectl auth can-i`, and uninstall.

No operator runs here (kwok fakes pods; their images are never pulled), so the worker Deployments the operator
would create are created by the test from the QueueWorkers' pod templates, to put those through admission too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cluster as control_plane
import pytest
import yaml

from tests.support.chart import CHART, CI_VALUES, LINTABLE_CI_VALUES, MINIMAL, template_args
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CRD_COPY = CHART / "crds" / "queueworker.yaml"
# The RabbitMQ Cluster Operator's real CRD (vendored, see its header): the apiserver validates RabbitmqClusters with it.
RABBITMQ_CRD = FIXTURES / "rabbitmq-cluster-crd.yaml"
RABBITMQ_SCENARIO = CHART / "ci" / "rabbitmq-cluster-values.yaml"
RELEASE = "qw"
FULLNAME = f"{RELEASE}-queueworker"
OPERATOR_SA = f"{FULLNAME}-operator"
STORAGE_CLASS = "qw-e2e"


def get_json(k8s: control_plane.Cluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(k8s.kubectl("get", *args, "-o", "json").stdout))


@pytest.fixture(scope="module")
def k8s(k8s_cluster: control_plane.Cluster) -> control_plane.Cluster:
    """The cluster with the QueueWorker CRD (the chart's copy of manifests/crd.yaml), stand-ins for the
    Prometheus Operator's CRDs and the RabbitMQ Cluster Operator's real CRD installed and established."""
    assert CRD_COPY.exists(), "charts/queueworker/crds/queueworker.yaml is missing: copy manifests/crd.yaml (make crd)"
    files = (CRD_COPY, FIXTURES / "monitoring-crds.yaml", RABBITMQ_CRD)
    for crds in files:
        k8s_cluster.kubectl("apply", "--server-side", "-f", str(crds))
    names = [d["metadata"]["name"] for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    k8s_cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", *[f"crd/{n}" for n in names])
    return k8s_cluster


def _namespace(k8s: control_plane.Cluster, labels: dict[str, str]) -> Iterator[str]:
    name = f"chart-{uuid.uuid4().hex[:8]}"
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    k8s.kubectl("apply", "-f", "-", input=json.dumps(doc))
    yield name
    k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(k8s: control_plane.Cluster) -> Iterator[str]:
    yield from _namespace(k8s, {})


@pytest.fixture
def restricted_namespace(k8s: control_plane.Cluster) -> Iterator[str]:
    yield from _namespace(
        k8s,
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
            "pod-security.kubernetes.io/warn": "restricted",
        },
    )


@pytest.fixture
def release_inputs(k8s: control_plane.Cluster) -> Callable[[str], None]:
    """Creates what a real install needs before `helm install`: the referenced Secrets (dummy values, never read:
    no container runs) and a PersistentVolume the chart's ReadWriteMany claim binds to."""
    volumes: list[str] = []

    def create(ns: str) -> None:
        secrets = {
            "queueworker-rabbitmq": {
                "amqp-url": "amqp://qw:e2e@rabbitmq:5672/%2F",
                "management-url": "http://qw:e2e@rabbitmq:15672",
            },  # fmt: skip
            "queueworker-database": {"database-url": "postgresql://qw:e2e@postgres:5432/qw"},
            "queueworker-api-keys": {"api-keys": "e2e-key-0123456789abcdef:acme\n"},
        }
        for name, data in secrets.items():
            doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}
            k8s.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{ns}-storage"},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": STORAGE_CLASS,
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": {"namespace": ns, "name": f"{FULLNAME}-storage"},
                "nfs": {"server": "nfs.invalid", "path": "/exports/qw"},
            },
        }
        k8s.kubectl("apply", "-f", "-", input=json.dumps(pv))
        volumes.append(pv["metadata"]["name"])

    yield create
    for pv in volumes:
        k8s.kubectl("delete", "pv", pv, "--wait=false", check=False)


def install(k8s: control_plane.Cluster, ns: str, *values: Path, sets: tuple[str, ...] = ()) -> None:
    args = ["install", RELEASE, str(CHART), "--namespace", ns]
    for v in values:
        args += ["-f", str(v)]
    for s in (f"storage.storageClassName={STORAGE_CLASS}", *sets):
        args += ["--set", s]
    k8s.helm(*args)


def running_pods(k8s: control_plane.Cluster, ns: str, component: str) -> list[dict[str, Any]]:
    pods = get_json(k8s, "pods", "-n", ns, "-l", f"app.kubernetes.io/component={component}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]


def wait_for_pods(k8s: control_plane.Cluster, ns: str, component: str, count: int) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        pods = running_pods(k8s, ns, component)
        on_node = all(p["spec"]["nodeName"] == control_plane.NODE_NAME for p in pods)
        return pods if len(pods) == count and on_node else None

    def state() -> str:
        columns = "custom-columns=OBJ:.involvedObject.name,REASON:.reason,MSG:.message"
        events = k8s.kubectl("get", "events", "-n", ns, "--field-selector=type=Warning", "-o", columns, check=False)
        return f"{len(running_pods(k8s, ns, component))} running; warnings:\n{events.stdout[-1500:]}"

    return list(wait_for(f"{count} Running {component} pod(s) in {ns}", probe, 60, 0.3, state))


# --- static checks against the real tools ---------------------------------------------------------------------


def test_helm_lint_is_clean_for_every_ci_scenario(k8s_cluster: control_plane.Cluster) -> None:
    for values in LINTABLE_CI_VALUES:  # helm lint takes no --api-versions: the Cluster Operator scenario is dry-run
        out = k8s_cluster.helm("lint", "--strict", str(CHART), "-f", str(values), check=False)
        assert out.returncode == 0 and "0 chart(s) failed" in out.stdout, f"{values.name}:\n{out.stdout}{out.stderr}"


def test_every_scenario_passes_a_server_side_dry_run(k8s: control_plane.Cluster, namespace: str) -> None:
    for values in CI_VALUES:
        rendered = k8s.helm(*template_args(values, release=RELEASE, namespace=namespace)).stdout
        out = k8s.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=rendered, check=False)
        assert out.returncode == 0, f"{values.name}:\n{out.stderr}"
        assert "created (server dry run)" in out.stdout


def test_the_schema_rejects_a_wrong_value_with_a_clear_message(k8s_cluster: control_plane.Cluster) -> None:
    out = k8s_cluster.helm(*template_args(MINIMAL, sets=("api.replicaCount=abc",)), check=False)
    assert out.returncode != 0
    assert "at '/api/replicaCount': got string, want integer" in out.stderr, out.stderr


# --- install, admission, RBAC, uninstall ----------------------------------------------------------------------


def test_install_into_a_restricted_namespace_admits_every_pod_and_uninstall_removes_it(
    k8s: control_plane.Cluster, restricted_namespace: str, release_inputs: Callable[[str], None]
) -> None:
    ns = restricted_namespace
    # Proof that the namespace really enforces "restricted": a default pod is refused.
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1"}]}}  # fmt: skip
    refused = k8s.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bare), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr

    release_inputs(ns)
    install(k8s, ns, MINIMAL)

    # The chart's own Deployments: pods admitted and Running on the kwok node.
    assert len(wait_for_pods(k8s, ns, "operator", 1)) == 1
    assert len(wait_for_pods(k8s, ns, "api", 2)) == 2
    claim = get_json(k8s, "pvc", f"{FULLNAME}-storage", "-n", ns)
    assert claim["status"]["phase"] == "Bound"

    # The QueueWorkers exist; their pod templates pass admission as the Deployments the operator creates.
    workers = get_json(k8s, "queueworkers", "-n", ns)["items"]
    assert sorted(w["metadata"]["name"] for w in workers) == [f"{FULLNAME}-email", f"{FULLNAME}-image"]
    for worker in workers:
        template = worker["spec"]["template"]
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        owner = {"apiVersion": worker["apiVersion"], "kind": "QueueWorker", "name": worker["metadata"]["name"],
                 "uid": worker["metadata"]["uid"], "controller": True}  # fmt: skip
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": worker["metadata"]["name"], "ownerReferences": [owner]},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/component": component}},
                "template": template,
            },  # fmt: skip
        }
        k8s.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(deployment))
        wait_for_pods(k8s, ns, component, 1)

    # The `helm test` pod is admitted too (server-side dry run: kwok would never complete it).
    hook = k8s.helm(
        *template_args(MINIMAL, release=RELEASE, namespace=ns), "-s", "templates/tests/test-api-healthz.yaml"
    )
    dry = k8s.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=hook.stdout, check=False)
    assert dry.returncode == 0, dry.stderr

    # helm uninstall removes what it installed; the storage claim is kept on purpose (resource-policy keep).
    k8s.helm("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "60s")
    left = get_json(k8s, "deployments,services,queueworkers,serviceaccounts,roles,rolebindings,configmaps",
                    "-n", ns, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]  # fmt: skip
    assert left == [], [f"{o['kind']}/{o['metadata']['name']}" for o in left]
    # Every pod goes: the chart's, and the workers' (their Deployments are owned by the deleted QueueWorkers).
    wait_for("every pod gone", lambda: not get_json(k8s, "pods", "-n", ns)["items"], 60, 0.3)
    assert get_json(k8s, "pvc", f"{FULLNAME}-storage", "-n", ns)["metadata"]["name"]


def test_the_operators_rbac_is_sufficient_and_minimal(
    k8s: control_plane.Cluster, namespace: str, release_inputs: Callable[[str], None]
) -> None:
    release_inputs(namespace)
    install(k8s, namespace, MINIMAL, sets=("api.enabled=false",))
    who = f"system:serviceaccount:{namespace}:{OPERATOR_SA}"

    def can(verb: str, resource: str, ns: str | None = namespace) -> bool:
        where = ["-n", ns] if ns else []
        out = k8s.kubectl("auth", "can-i", verb, resource, f"--as={who}", *where, check=False)
        assert out.stdout.strip() in ("yes", "no"), out.stderr
        return out.stdout.strip() == "yes"

    needed = [
        ("list", "queueworkers.queueworker.dev", namespace),
        ("watch", "queueworkers.queueworker.dev", namespace),
        ("patch", "queueworkers.queueworker.dev", namespace),
        ("patch", "queueworkers.queueworker.dev/status", namespace),
        ("create", "deployments.apps", namespace),
        ("patch", "deployments.apps", namespace),
        ("watch", "deployments.apps", namespace),
        ("create", "events", namespace),
        ("patch", "kopfpeerings.kopf.dev", namespace),
    ]
    missing = [n for n in needed if not can(*n)]
    assert not missing, f"the operator lacks: {missing}"

    refused = [
        ("get", "secrets", namespace),
        ("list", "secrets", namespace),
        ("list", "configmaps", namespace),
        ("*", "*", namespace),
        ("*", "*", None),
        ("delete", "deployments.apps", namespace),
        ("delete", "queueworkers.queueworker.dev", namespace),
        ("update", "queueworkers.queueworker.dev", namespace),
        ("create", "pods", namespace),
        ("create", "pods/exec", namespace),
        ("list", "deployments.apps", "default"),
        ("patch", "deployments.apps", "kube-system"),
        ("list", "queueworkers.queueworker.dev", "default"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "clusterroles.rbac.authorization.k8s.io", None),
        ("create", "rolebindings.rbac.authorization.k8s.io", namespace),
        ("list", "namespaces", None),
    ]
    granted = [r for r in refused if can(*r)]
    assert not granted, f"the operator may do more than it needs: {granted}"
    k8s.helm("uninstall", RELEASE, "--namespace", namespace, "--wait", "--timeout", "60s")


# --- RabbitMQ by the RabbitMQ Cluster Operator (rabbitmq.cluster.create) ----------------------------------------


def test_the_rabbitmqcluster_is_admitted_by_the_cluster_operators_own_schema(
    k8s: control_plane.Cluster, restricted_namespace: str, release_inputs: Callable[[str], None]
) -> None:
    ns = restricted_namespace
    rendered = k8s.helm(*template_args(RABBITMQ_SCENARIO, release=RELEASE, namespace=ns)).stdout
    [cluster] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "RabbitmqCluster"]
    # The schema is really enforced: a plugin name its pattern (^\w+$) refuses is rejected ...
    bad = {**cluster, "spec": {**cluster["spec"], "rabbitmq": {"additionalPlugins": ["rabbitmq-prometheus!"]}}}
    refused = k8s.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "spec.rabbitmq.additionalPlugins[0]" in refused.stderr, refused.stderr
    # ... and the chart's passes it, with no field the CRD does not know (strict: unknown fields are errors).
    strict = k8s.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict", "-n", ns, "-f", "-",
                         input=json.dumps(cluster), check=False)  # fmt: skip
    assert strict.returncode == 0, strict.stderr

    # helm install asks the apiserver which APIs it serves: with the CRD there, the capability check passes.
    release_inputs(ns)
    install(k8s, ns, RABBITMQ_SCENARIO)
    stored = get_json(k8s, "rabbitmqclusters", "qw-queueworker-rabbitmq", "-n", ns)
    assert stored["spec"]["replicas"] == 3
    assert stored["spec"]["rabbitmq"]["additionalPlugins"] == ["rabbitmq_prometheus"]
    assert "{quorum_tick_interval, 1000}" in stored["spec"]["rabbitmq"]["advancedConfig"]
    assert stored["spec"]["persistence"] == {"storageClassName": "fast-ssd", "storage": "20Gi"}
    # The API and operator pods, wired to the Cluster Operator's Secret, pass the "restricted" admission.
    assert len(wait_for_pods(k8s, ns, "api", 2)) == 2
    [operator] = wait_for_pods(k8s, ns, "operator", 1)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in operator["spec"]["containers"][0]["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
    assert {n: (r["name"], r["key"]) for n, r in refs.items() if n.startswith("RABBITMQ_")} == {
        f"RABBITMQ_{k.upper()}": ("qw-queueworker-rabbitmq-default-user", k)
        for k in ("username", "password", "host", "port")
    }
    # Kept on uninstall: deleting it would delete the brokers' volumes with the queued tasks.
    k8s.helm("uninstall", RELEASE, "--namespace", ns, "--wait", "--timeout", "60s")
    assert get_json(k8s, "rabbitmqclusters", "qw-queueworker-rabbitmq", "-n", ns)["metadata"]["name"]
    k8s.kubectl("delete", "rabbitmqcluster", "qw-queueworker-rabbitmq", "-n", ns)
