"""README's "On Kubernetes" block, run as written on the real node (containerd + kubelet + kube-proxy + CoreDNS):
`helm install` of the chart with its default values, and `kubectl apply` of manifests/, with our images built
here and real RabbitMQ, PostgreSQL and SMTP servers on the host.

What the test changes in the README's commands, and nothing else (printed when it runs):
- USER, PASS, the host names `rabbitmq` and `postgres` (-> the bridge gateway, where the host's servers listen:
  a pod's loopback is its own) and the API key placeholder;
- `helm install` gets one values file more (printed): the locally built images (imagePullPolicy IfNotPresent:
  imported into the node's containerd, no registry), the real node's placement (nodeSelector + toleration for
  the operator, the API, the workers; the `helm test` pod follows the API's) and the SMTP server;
- the plain manifests name ghcr.io/queueworker/*:0.1.0: the same local images are tagged with those names in the
  node's containerd, and while they run the real node is the only schedulable node (kwok's node cordoned, the
  real node's taint lifted, both put back after), as on a one-node cluster: the YAML needs no placement.
Storage: the chart's default is a ReadWriteMany claim of the cluster's default StorageClass; this cluster has no
provisioner at all (nor a default class), so the test creates what an administrator would, a hostPath
PersistentVolume without a class bound to the claim's name (claimRef), for each of the two claims.

The chart: operator Ready and leading (kopf peering: its log and the KopfPeering's status), the API serving
/readyz through its Service, `helm test` passing, an image uploaded through the Service processed by a worker
pod and the result downloaded, a burst of emails scaling the email workers up (real pods; every mail received
once) and back to their minimum. The plain manifests: operator Ready and leading, the example QueueWorker (min 0)
scaling a worker pod up for an uploaded image, the result downloaded. Figures (helm install -> all pods Ready,
burst -> first new worker pod Running, ...) go into bench/results/real-node.json under "helm" and "manifests".
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster as control_plane
import httpx
import images
import pytest
import real_node
import yaml
from PIL import Image
from postgres import Postgres
from rabbitmq import Broker, free_broker_ports

from tests.support.images import image_bytes
from tests.support.smtp import Recorder, smtp_server
from tests.support.util import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results" / "real-node.json"
NAMESPACE = "queueworker"  # the README's (and manifests/kustomization.yaml's)
RELEASE = "qw"
FULLNAME = f"{RELEASE}-queueworker"
MANIFEST_IMAGES = {t: f"ghcr.io/queueworker/{t}:0.1.0" for t in images.TARGETS}  # what manifests/ reference
BURST = 200  # emails; the SMTP server answers each DATA after SMTP_DELAY s, so one replica needs ~15 s
SMTP_DELAY = 0.3
STABILIZATION_S = 10  # the test's scale-down window (the CRD default is HPA's 300 s)


def readme_block() -> list[str]:
    """The commands of README.md's "On Kubernetes" bash block, continuation lines joined, comments dropped."""
    text = README.read_text()
    section = text[text.index("## On Kubernetes") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's On Kubernetes section has no bash block"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def parts(commands: list[str]) -> dict[str, list[str]]:
    """secrets (namespace and Secrets), helm (install and test), plain (kubectl apply and what follows)."""
    out: dict[str, list[str]] = {"secrets": [], "helm": [], "plain": []}
    for cmd in commands:
        if cmd.startswith("helm "):
            out["helm"].append(cmd)
        elif out["helm"] or "apply" in cmd:
            out["plain"].append(cmd)
        else:
            out["secrets"].append(cmd)
    return out


@dataclass
class Stack:
    cluster: control_plane.Cluster
    node: real_node.RealNode
    built: images.Built
    broker: Broker
    postgres: Postgres
    smtp_port: int
    smtp: Recorder
    host_dir: Path
    subs: dict[str, str]  # README placeholder -> value
    api_key: str
    figures: dict[str, Any] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def run_readme(self, cmd: str, *extra: str) -> subprocess.CompletedProcess[str]:
        for placeholder, value in self.subs.items():
            cmd = cmd.replace(placeholder, value)
        argv = [*shlex.split(cmd, comments=True), *extra]
        assert argv[0] in ("kubectl", "helm"), cmd
        print("$", shlex.join(argv))
        # As a user runs it: from the repository's root (relative paths), against the test cluster.
        c = self.cluster
        full = [str(c.bin_dir / argv[0]), "--kubeconfig", str(c.kubeconfig), *argv[1:]]
        proc = subprocess.run(full, capture_output=True, text=True, cwd=REPO, env={**os.environ, **c.env})
        if proc.returncode != 0:
            raise control_plane.ClusterError(
                f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("-n", NAMESPACE, "get", *args, "-o", "json").stdout))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", selector)["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def volume_for(self, claim: str) -> None:
        """A hostPath PersistentVolume (no class, like a claim of a cluster without a default class) for the claim
        `claim` in NAMESPACE, owned by the workers' uid."""
        path = self.host_dir / f"pv-{claim}"
        path.mkdir()
        shutil.chown(path, 10001, 10001)
        name = f"{NAMESPACE}-{claim}-{uuid.uuid4().hex[:6]}"
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"namespace": NAMESPACE, "name": claim},
                "hostPath": {"path": str(path), "type": "Directory"},
            },
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(pv))
        self.volumes.append(name)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, state: Callable[[], Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.HTTPError, subprocess.SubprocessError, control_plane.ClusterError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last seen: {state() if state else last!r}")


def ready(pod: dict[str, Any]) -> bool:
    conds = pod["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def pod_state(s: Stack) -> str:
    out = s.kubectl("-n", NAMESPACE, "get", "pods,qw,pvc", "-o", "wide", check=False).stdout
    events = s.kubectl("-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
    return out + "\n" + events[-3000:]


def ctr(node: real_node.RealNode, *args: str) -> None:
    subprocess.run(
        ["ctr", "--address", node.containerd_address, "-n", "k8s.io", *args], check=True, capture_output=True
    )


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(k8s_cluster: control_plane.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = time.monotonic()
    host_dir = tmp_path_factory.mktemp("helm-real")
    ours = k8s_cluster.node is None
    node = k8s_cluster.node or control_plane.start_node(k8s_cluster.dir, k8s_cluster.bin_dir, die_with_parent=True)
    gateway = node.gateway_ip
    amqp, mgmt, prom = free_broker_ports()
    broker = Broker(f"helm-real-{amqp}", amqp, mgmt, prom, base=host_dir, extra_ip=gateway)
    pg = Postgres(free_port(), extra_ip=gateway, allow_subnet=node.subnet)  # under /tmp: its user must reach it
    password = secrets.token_hex(12)
    api_key = secrets.token_hex(16)
    figures: dict[str, Any] = {}
    volumes: list[str] = []
    with smtp_server(host=gateway, delay=SMTP_DELAY) as (smtp_port, recorder):
        try:
            t = time.monotonic()

            def load_images() -> images.Built:
                built = images.build(images.BASE_REF)
                for path in images.save(built).values():
                    real_node.load_image(node, path)
                return built

            with ThreadPoolExecutor(3) as pool:
                built_f = pool.submit(load_images)
                broker_f = pool.submit(broker.start)
                pg_f = pool.submit(pg.start)
                built = built_f.result()
                broker_f.result()
                pg_f.result()
            figures["images_and_servers_ready_s"] = round(time.monotonic() - t, 1)
            broker.add_user("qw", password)
            pg.add_user("qw", password, "qw")
            subs = {
                "USER": "qw",
                "PASS": password,
                "@rabbitmq:5672/": f"@{gateway}:{amqp}/",
                "@rabbitmq:15672": f"@{gateway}:{mgmt}",
                "@postgres/": f"@{gateway}:{pg.port}/",
                "A-KEY-OF-16-OR-MORE-CHARS": api_key,
            }
            print("\nREADME placeholders replaced:", json.dumps({k: v for k, v in subs.items() if k != "PASS"}))
            s = Stack(
                k8s_cluster, node, built, broker, pg, smtp_port, recorder, host_dir, subs, api_key, figures, volumes
            )
            # A namespace of an earlier, killed run (a reused control plane) must be gone first.
            k8s_cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=120s")
            for cmd in parts(readme_block())["secrets"]:
                s.run_readme(cmd)
            yield s
        finally:
            k8s_cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--timeout", "60s", check=False)
            # QueueWorkers first, while an operator may still run to release them; a finalizer left by an
            # operator already gone (a failed test) would keep the namespace from going.
            k8s_cluster.kubectl("-n", NAMESPACE, "delete", "qw", "--all", "--timeout=30s", check=False)
            unfinalize = '{"metadata":{"finalizers":null}}'
            for qw in k8s_cluster.kubectl("-n", NAMESPACE, "get", "qw", "-o", "name", check=False).stdout.split():
                k8s_cluster.kubectl("-n", NAMESPACE, "patch", qw, "--type=merge", "-p", unfinalize, check=False)
            k8s_cluster.kubectl("delete", "namespace", NAMESPACE, "--timeout=120s", check=False)
            for pv in volumes:
                k8s_cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
            broker.destroy()
            pg.stop()
            shutil.rmtree(pg.dir, ignore_errors=True)
            if ours:
                control_plane.stop_node(k8s_cluster.dir)
            figures["module_s"] = round(time.monotonic() - started, 1)
            _write_figures(figures)


def _write_figures(figures: dict[str, Any]) -> None:
    """Merged into bench/results/real-node.json: other suites' keys stay."""
    figures["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print("\nhelm/manifests on the real node:", json.dumps(figures, indent=2))
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    data["helm_and_manifests"] = figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- the API, through its Service from the host


def api_client(s: Stack, service: str) -> httpx.Client:
    ip = s.get("service", service)["spec"]["clusterIP"]
    port = s.get("service", service)["spec"]["ports"][0]["port"]
    return httpx.Client(
        base_url=f"http://{ip}:{port}", headers={"Authorization": f"Bearer {s.api_key}"}, timeout=30, trust_env=False
    )


def image_roundtrip(client: httpx.Client, timeout: float) -> dict[str, Any]:
    """Uploads a PNG (to 32 px wide WebP), waits for the task to succeed, downloads and checks the result."""
    files = {"file": ("photo.png", image_bytes("PNG", (160, 120), "navy"), "image/png")}
    resp = client.post("/v1/images", files=files, data={"width": "32", "format": "WEBP"})
    assert resp.status_code == 202, resp.text
    task_id = resp.json()["task_id"]
    status = wait_for(
        f"image task {task_id} to succeed",
        lambda: (t := client.get(f"/v1/tasks/{task_id}").json())["status"] in ("succeeded", "failed", "dead") and t,
        timeout,
    )
    assert status["status"] == "succeeded", status
    result = client.get(f"/v1/tasks/{task_id}/result")
    assert result.status_code == 200
    img = Image.open(io.BytesIO(result.content))
    assert (img.format, img.width) == ("WEBP", 32)
    return dict(status)


def first_new_running(s: Stack, selector: str, before: set[str]) -> Callable[[], bool]:
    def probe() -> bool:
        return any(
            p["metadata"]["name"] not in before and p["status"].get("phase") == "Running" for p in s.pods(selector)
        )

    return probe


def operator_leads(s: Stack, selector: str, peering: str) -> str:
    """The operator's pod is Ready, its log says it resumed (kopf peering: it leads) and the KopfPeering lists it."""
    pod = wait_for("the operator pod Ready", lambda: next((p for p in s.pods(selector) if ready(p)), None), 90,
                   lambda: pod_state(s))  # fmt: skip
    name = pod["metadata"]["name"]
    wait_for(
        "the operator to lead",
        lambda: "Resuming operations" in s.kubectl("-n", NAMESPACE, "logs", name).stdout,
        60,
        lambda: s.kubectl("-n", NAMESPACE, "logs", name, check=False).stdout[-3000:],
    )
    status = s.get("kopfpeering", peering).get("status", {})
    assert name in status, status
    return str(name)


# ---------------------------------------------------------------- tests


def test_helm_install_as_the_readme_says(stack: Stack) -> None:
    s = stack
    values = {
        t: {
            "image": {"repository": ref.rpartition(":")[0], "tag": ref.rpartition(":")[2]},
            **json.loads(json.dumps(real_node.POD_PLACEMENT)),  # a copy each: no YAML anchors in the file shown
        }
        for t, ref in s.built.refs.items()
    }
    values["workers"]["kinds"] = {
        "email": {"smtp": {"host": s.node.gateway_ip, "port": s.smtp_port, "starttls": False}}
    }
    values_file = s.host_dir / "real-node-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    print("\nvalues added to the README's helm install:\n" + values_file.read_text())
    s.volume_for(f"{FULLNAME}-storage")
    helm = parts(readme_block())["helm"]
    install = next(c for c in helm if c.startswith("helm install"))
    try:
        t0 = time.monotonic()
        s.run_readme(install, "-f", str(values_file))

        # Every pod Ready: the operator, two API replicas, one worker of each kind (their minReplicas).
        expected = {"operator": 1, "api": 2, "worker-image": 1, "worker-email": 1}

        def all_ready() -> bool:
            pods = s.pods(f"app.kubernetes.io/instance={RELEASE}")
            by: dict[str, int] = {}
            for p in pods:
                assert p["spec"].get("nodeName") in (None, real_node.NODE_NAME), p["metadata"]["name"]
                if ready(p):
                    comp = p["metadata"]["labels"]["app.kubernetes.io/component"]
                    by[comp] = by.get(comp, 0) + 1
            return by == expected

        wait_for("every pod of the release Ready", all_ready, 180, lambda: pod_state(s))
        s.figures["helm"] = {"install_to_all_pods_ready_s": round(time.monotonic() - t0, 1)}
        operator_leads(s, "app.kubernetes.io/component=operator", FULLNAME)

        client = api_client(s, f"{FULLNAME}-api")
        resp = client.get("/readyz")
        assert (resp.status_code, resp.json()) == (200, {"broker": True, "store": True})
        for cmd in helm[1:]:  # helm test: /healthz and /readyz from a pod, through the Service's DNS name
            t = time.monotonic()
            out = s.run_readme(cmd, "--timeout", "120s")  # exits non-zero unless the test pod succeeded
            assert "Succeeded" in out.stdout, out.stdout
            s.figures["helm"]["helm_test_s"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        image_roundtrip(client, 60)
        s.figures["helm"]["image_task_roundtrip_s"] = round(time.monotonic() - t, 1)

        # A burst of emails: the operator scales the email workers up (real pods), then back to 1.
        for kind in ("email", "image"):
            patch = {"spec": {"scaling": {"scaleDownStabilizationSeconds": STABILIZATION_S}}}
            s.kubectl("-n", NAMESPACE, "patch", "qw", f"{FULLNAME}-{kind}", "--type=merge", "-p", json.dumps(patch))
        selector = "app.kubernetes.io/component=worker-email"
        before = {p["metadata"]["name"] for p in s.pods(selector)}
        errors: list[str] = []

        def send(i: int) -> None:
            try:
                body = {"to": f"user{i}@example.com", "subject": f"burst {i}", "text": "hello"}
                r = client.post("/v1/emails", json=body)
                if r.status_code != 202:
                    errors.append(r.text)
            except Exception as exc:  # noqa: BLE001 - reported by the test's thread
                errors.append(repr(exc))

        posted: list[float] = []

        def burst() -> None:  # 8 clients at once
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(send, range(BURST)))
            posted.append(time.monotonic())

        t = time.monotonic()
        sender = threading.Thread(target=burst)
        sender.start()
        wait_for("a new email worker pod Running", first_new_running(s, selector, before), 90, lambda: pod_state(s))
        s.figures["helm"]["burst_to_first_new_worker_running_s"] = round(time.monotonic() - t, 1)
        sender.join()
        s.figures["helm"]["burst_posted_s"] = round(posted[0] - t, 1)  # all 202s (BURST emails, 8 clients)
        assert not errors, errors[:3]
        peak = max(len(s.pods(selector)), 2)
        wait_for(f"{BURST} mails received", lambda: len(s.smtp.accepted) >= BURST, 120, lambda: len(s.smtp.accepted))
        s.figures["helm"]["burst_drained_s"] = round(time.monotonic() - t, 1)
        subjects = [m["Subject"] for m in s.smtp.messages()]
        assert sorted(subjects) == sorted(f"burst {i}" for i in range(BURST))  # each mail once
        wait_for(
            "the email workers back to their minimum (1)",
            lambda: (
                s.get("deployment", f"{FULLNAME}-email-worker")["spec"]["replicas"] == 1 and len(s.pods(selector)) == 1
            ),
            STABILIZATION_S + 90,
            lambda: pod_state(s),
        )
        s.figures["helm"]["burst_peak_email_pods"] = peak
        s.figures["helm"]["burst_to_back_at_minimum_s"] = round(time.monotonic() - t, 1)
    finally:
        t = time.monotonic()
        s.cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s", check=False)
        wait_for("every pod of the release gone", lambda: not s.pods(f"app.kubernetes.io/instance={RELEASE}"), 120)
        s.figures.setdefault("helm", {})["uninstall_s"] = round(time.monotonic() - t, 1)


def test_plain_manifests_as_the_readme_says(stack: Stack) -> None:
    s = stack
    for target, name in MANIFEST_IMAGES.items():
        ctr(s.node, "images", "tag", "--force", s.built.refs[target], name)
    s.volume_for("queueworker-storage")
    taint = real_node.NODE_TAINT
    s.kubectl("cordon", control_plane.NODE_NAME)
    s.kubectl("taint", "node", real_node.NODE_NAME, f"{taint['key']}-")
    try:
        t0 = time.monotonic()
        for cmd in parts(readme_block())["plain"]:
            s.run_readme(cmd)
        operator_leads(s, "app.kubernetes.io/name=queueworker-operator", "queueworker")
        s.figures["manifests"] = {"apply_to_operator_leading_s": round(time.monotonic() - t0, 1)}
        api = "app.kubernetes.io/name=queueworker,app.kubernetes.io/component=api"
        wait_for("both API pods Ready", lambda: sum(ready(p) for p in s.pods(api)) == 2, 90, lambda: pod_state(s))
        for p in s.pods(api) + s.pods("app.kubernetes.io/name=queueworker-operator"):
            assert p["spec"]["nodeName"] == real_node.NODE_NAME
        s.figures["manifests"]["apply_to_all_pods_ready_s"] = round(time.monotonic() - t0, 1)
        client = api_client(s, "queueworker-api")
        assert client.get("/readyz").status_code == 200

        # The example QueueWorker `images` has minReplicas 0: the upload makes the operator start a worker pod.
        assert s.get("deployment", "images-worker")["spec"]["replicas"] == 0
        t = time.monotonic()
        failed: list[BaseException] = []

        def roundtrip() -> None:
            try:
                image_roundtrip(client, 120)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                failed.append(exc)

        worker = threading.Thread(target=roundtrip)
        worker.start()
        wait_for("the example's worker pod Running", first_new_running(s, "app=images-worker", set()), 90,
                 lambda: pod_state(s))  # fmt: skip
        s.figures["manifests"]["upload_to_first_worker_running_s"] = round(time.monotonic() - t, 1)
        worker.join()
        if failed:
            raise failed[0]
        assert s.get("qw", "images")["status"]["replicas"] >= 1
        s.figures["manifests"]["upload_to_result_s"] = round(time.monotonic() - t, 1)
    finally:
        # The QueueWorker before the operator (its finalizer is the operator's to remove); the rest goes with the
        # namespace at the end of the module.
        s.kubectl("-n", NAMESPACE, "delete", "qw", "images", "--ignore-not-found", "--timeout=60s", check=False)
        s.kubectl("uncordon", control_plane.NODE_NAME, check=False)
        s.kubectl("taint", "node", real_node.NODE_NAME, f"{taint['key']}={taint['value']}:{taint['effect']}",
                  "--overwrite", check=False)  # fmt: skip
        for name in MANIFEST_IMAGES.values():
            subprocess.run(["ctr", "--address", s.node.containerd_address, "-n", "k8s.io", "images", "rm", name],
                           capture_output=True)  # fmt: skip
