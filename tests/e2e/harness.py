"""The e2e suites' operator harness: a namespace with the shipped RBAC and CRD, a vhost, the operator as a
subprocess under the ServiceAccount's token (not cluster-admin), and small helpers to watch what it does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster as control_plane
import pika
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.support.util import free_port

ROOT = Path(__file__).resolve().parents[2]
SA = "queueworker-operator"
PEERING = "queueworker"


def rbac_for(namespace: str) -> list[dict[str, Any]]:
    """manifests/rbac.yaml moved into the test namespace, rules untouched."""
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests/rbac.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}, "nothing cluster-scoped"
    for d in docs:
        d["metadata"]["namespace"] = namespace
        for s in d.get("subjects", []):
            s["namespace"] = namespace
    return docs


@dataclass
class Env:
    cluster: control_plane.Cluster
    namespace: str
    sa_kubeconfig: Path
    apps: k8s.AppsV1Api
    custom: k8s.CustomObjectsApi
    core: k8s.CoreV1Api
    amqp: str
    vhost: str
    mgmt_url: str
    closed_port: int
    tmp: Path
    prom_url: str = ""  # the broker's rabbitmq_prometheus endpoint
    metrics_urls: dict[str, str] = field(default_factory=dict)  # operator name -> its /metrics URL

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def apply(self, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=check)

    def replicas(self, name: str) -> int | None:
        try:
            return int(self.apps.read_namespaced_deployment(name, self.namespace).spec.replicas)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def qw(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            "queueworker.dev", "v1alpha1", self.namespace, "queueworkers", name
        )

    def condition(self, name: str, type_: str) -> str | None:
        for c in self.qw(name).get("status", {}).get("conditions", []):
            if c["type"] == type_:
                return str(c["status"])
        return None

    def events(self, reason: str) -> list[str]:
        evs = self.core.list_namespaced_event(self.namespace).items
        return [e.message for e in evs if e.reason == reason and e.involved_object.kind == "QueueWorker"]

    def start_operator(
        self, name: str, *extra: str, prometheus: bool = True, settings: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """The operator as shipped: depth from the Prometheus endpoint (prometheus=False: management API only);
        `settings`: more QW_* variables. Its metrics are served at `metrics_urls[name]`."""
        metrics_port = free_port()
        self.metrics_urls[name] = f"http://127.0.0.1:{metrics_port}/metrics"
        env = {
            **os.environ,
            "KUBECONFIG": str(self.sa_kubeconfig),
            "QW_RABBITMQ_MANAGEMENT_URL": self.mgmt_url,
            "QW_RABBITMQ_PROMETHEUS_URL": self.prom_url if prometheus else "",
            "QW_BROKERS": f"down=http://guest:guest@127.0.0.1:{self.closed_port}",
            "QW_DEFAULT_INTERVAL": "1",
            "QW_METRICS_PORT": str(metrics_port),
            "QW_HEALTH_PORT": str(free_port()),
            "QW_HEALTH_HOST": "127.0.0.1",
            "QW_METRICS_HOST": "127.0.0.1",
            "QW_LOG_FORMAT": "text",
            "QW_PEERING_LIFETIME": "10",
            **(settings or {}),
        }
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        cmd = [sys.executable, "-m", "qw_operator", "--namespace", self.namespace, "--peering", PEERING, *extra]
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def queue(self, name: str) -> None:
        with pika.BlockingConnection(pika.URLParameters(self.amqp)) as conn:
            conn.channel().queue_declare(name, durable=True)

    def publish(self, queue: str, n: int) -> None:
        with pika.BlockingConnection(pika.URLParameters(self.amqp)) as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            for i in range(n):
                ch.basic_publish("", queue, str(i).encode())

    def purge(self, queue: str) -> None:
        with pika.BlockingConnection(pika.URLParameters(self.amqp)) as conn:
            conn.channel().queue_purge(queue)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def make_env(k8s_cluster: control_plane.Cluster, broker: Any, tmp: Path) -> Env:
    """A fresh namespace (CRD, shipped RBAC, peering) and a fresh vhost on `broker`; `drop_env` removes both."""
    tmp.mkdir(parents=True, exist_ok=True)
    ns = f"qwop-{uuid.uuid4().hex[:6]}"
    k8s_cluster.kubectl("apply", "-f", str(ROOT / "manifests/crd.yaml"))
    k8s_cluster.kubectl("wait", "--for=condition=Established", "crd/queueworkers.queueworker.dev", "--timeout=30s")
    k8s_cluster.kubectl("create", "namespace", ns)
    k8s_cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac_for(ns)})
    )
    peering = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING, "namespace": ns}}
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(peering))
    # A kubeconfig holding only the ServiceAccount's token: the operator runs with exactly the shipped RBAC.
    token = k8s_cluster.kubectl("create", "token", SA, "-n", ns, "--duration=2h").stdout.strip()
    admin = json.loads(Path(k8s_cluster.kubeconfig).read_text())
    cluster_entry = admin["clusters"][0]["cluster"]
    sa_cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster_entry}],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": SA, "namespace": ns}}],
        "current-context": "sa",
    }
    sa_kubeconfig = tmp / "sa-kubeconfig"
    sa_kubeconfig.write_text(json.dumps(sa_cfg))
    vhost = f"qwop-{uuid.uuid4().hex[:8]}"
    q = urllib.parse.quote(vhost, safe="")
    broker.api(f"/api/vhosts/{q}", "PUT", {})
    broker.api(f"/api/permissions/{q}/guest", "PUT", {"configure": ".*", "write": ".*", "read": ".*"})
    api = k8s_config.new_client_from_config(config_file=str(k8s_cluster.kubeconfig))
    e = Env(
        k8s_cluster,
        ns,
        sa_kubeconfig,
        k8s.AppsV1Api(api),
        k8s.CustomObjectsApi(api),
        k8s.CoreV1Api(api),
        f"amqp://guest:guest@127.0.0.1:{broker.port}/{q}",
        vhost,
        broker.management_url,
        free_port(),
        tmp,
        f"http://127.0.0.1:{broker.prom_port}",
    )
    return e


def drop_env(e: Env, broker: Any) -> None:
    e.cluster.kubectl("delete", "namespace", e.namespace, "--wait=false", check=False)
    try:
        broker.api(f"/api/vhosts/{urllib.parse.quote(e.vhost, safe='')}", "DELETE")
    except OSError:
        pass  # a private broker may already be gone


def deployment(name: str, replicas: int) -> dict[str, Any]:
    """A plain Deployment named `name` at `replicas` (busybox; kwok's nodes never run it)."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "w", "image": "busybox"}]}},
        },
    }


def queueworker(name: str, env: Env, queue: str, **spec: Any) -> dict[str, Any]:
    scaling = spec.pop("scaling", {})
    return {
        "apiVersion": "queueworker.dev/v1alpha1",
        "kind": "QueueWorker",
        "metadata": {"name": name, "annotations": spec.pop("annotations", {})},
        "spec": {
            "queue": queue,
            "vhost": env.vhost,
            "pollingInterval": 1,
            "minReplicas": 0,
            "maxReplicas": 5,
            "scaling": {"messagesPerReplica": 10, "scaleDownStabilizationSeconds": 2, "cooldownSeconds": 3, **scaling},
            **spec,
        },
    }
