"""What the real-node suites share: the stack (real node, images, broker, PostgreSQL, SMTP), the README's
"On Kubernetes" commands, waiting, pod state, the API through its Service, and a pod's memory from its cgroup."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster as control_plane
import httpx
import images
import real_node
from PIL import Image
from postgres import Postgres
from rabbitmq import Broker

from tests.support import wait as support_wait
from tests.support.images import image_bytes
from tests.support.smtp import Recorder

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results" / "real-node.json"
NAMESPACE = "queueworker"  # the README's (and manifests/kustomization.yaml's)
RELEASE = "qw"
FULLNAME = f"{RELEASE}-queueworker"
MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")


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
    shop_image: str = ""  # examples/shop's workers image (FROM ours), loaded on the node
    shop_database_url: str = ""  # the shop's own PostgreSQL database as the pods reach it (the gateway address)

    @property
    def amqp_url(self) -> str:
        """The broker as the host reaches it, with the pods' user."""
        return f"amqp://qw:{self.subs['PASS']}@127.0.0.1:{self.broker.port}/%2F"

    @property
    def shop_database_host_url(self) -> str:
        return self.shop_database_url.replace(f"@{self.node.gateway_ip}:", "@127.0.0.1:")

    @property
    def store_url(self) -> str:
        """The task store as the host reaches it (the pods use the gateway address)."""
        return f"postgresql://qw:{self.subs['PASS']}@127.0.0.1:{self.postgres.port}/qw"

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
    """tests.support.wait.wait_for, with a probe's passing failure (the API or kubectl not answering yet while
    pods start) read as "not yet" rather than as the test's failure."""

    def tolerant() -> Any:
        try:
            return probe()
        except (httpx.HTTPError, subprocess.SubprocessError, control_plane.ClusterError) as exc:
            return _NotYet(exc)

    return support_wait.wait_for(what, tolerant, timeout, 0.2, state)


class _NotYet:
    """A probe's exception, falsy (not done yet) and shown as the last value seen if the wait times out."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.exc)


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


def write_figures(figures: dict[str, Any]) -> None:
    """Merged into bench/results/real-node.json: other suites' keys stay, and so do figures this run did not measure
    (a focused run, `-k janitor`, replaces only its own)."""
    figures["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print("\nhelm/manifests on the real node:", json.dumps(figures, indent=2))
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        data = {}
    kept = data.get("helm_and_manifests", {})
    for k, v in figures.items():
        kept[k] = {**kept[k], **v} if isinstance(v, dict) and isinstance(kept.get(k), dict) else v
    data["helm_and_manifests"] = kept
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


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


def pod_memory_dir(pod: dict[str, Any]) -> Path:
    """The pod's memory cgroup (cgroup v1, the kubelet's cgroupfs driver): kubepods/<qos>/pod<uid>."""
    uid = pod["metadata"]["uid"]
    found = [p for p in MEMORY_CGROUP.glob(f"kubepods*/**/pod{uid}") if p.is_dir()]
    assert found, f"no memory cgroup for pod {pod['metadata']['name']} ({uid})"
    return found[0]


def reset_memory_peak(pod: dict[str, Any]) -> None:
    (pod_memory_dir(pod) / "memory.max_usage_in_bytes").write_text("0")


def memory_peak_mib(pod: dict[str, Any]) -> float:
    """The pod's peak memory (all its containers, page cache included, as the kernel counts it against the
    limit) since the last reset."""
    return int((pod_memory_dir(pod) / "memory.max_usage_in_bytes").read_text()) / 2**20


def memory_rss_mib(pod: dict[str, Any]) -> float:
    """The pod's anonymous memory now (memory.stat total_rss: heap, decoded images; no page cache, which the
    kernel reclaims before it OOM-kills)."""
    stat = (pod_memory_dir(pod) / "memory.stat").read_text()
    match = re.search(r"^total_rss (\d+)$", stat, re.M)
    return int(match.group(1)) / 2**20 if match else 0.0


class RssPeaks:
    """Samples each pod's anonymous memory every `interval` s in the background; `peaks` in MiB."""

    def __init__(self, pods: list[dict[str, Any]], interval: float = 0.1) -> None:
        self.pods = pods
        self.peaks = {p["metadata"]["name"]: 0.0 for p in pods}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            for p in self.pods:
                try:
                    rss = memory_rss_mib(p)
                except (OSError, AssertionError):  # the pod's cgroup is gone (a restart): reported elsewhere
                    continue
                name = p["metadata"]["name"]
                self.peaks[name] = max(self.peaks[name], rss)
            self._stop.wait(interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def container_problems(pods: list[dict[str, Any]]) -> list[str]:
    """Restarts, OOM kills and evictions among `pods`: what a memory limit that does not hold looks like."""
    out = []
    for p in pods:
        name = p["metadata"]["name"]
        if p["status"].get("reason") == "Evicted":
            out.append(f"{name}: evicted: {p['status'].get('message')}")
        for c in p["status"].get("containerStatuses", []):
            last = (c.get("lastState") or {}).get("terminated") or {}
            if c.get("restartCount") or last:
                how = ", ".join(f"{k} {last[k]}" for k in ("exitCode", "signal", "finishedAt", "message") if k in last)
                out.append(f"{name}/{c['name']}: {c.get('restartCount')} restarts, last {last.get('reason')} ({how})")
    return out


def problems_by_pod(pods: list[dict[str, Any]]) -> dict[str, list[str]]:
    """`container_problems` of each pod, by pod name."""
    return {p["metadata"]["name"]: container_problems([p]) for p in pods}


def new_problems(before: dict[str, list[str]], pods: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The pods among `pods` whose container problems differ from `before` (`problems_by_pod` earlier): what
    happened since then (a pod new since then counts from none)."""
    return {n: c for n, c in problems_by_pod(pods).items() if c != before.get(n, [])}


def why_gone(s: Stack, names: set[str]) -> dict[str, list[str]]:
    """The events of pods that went away (who deleted, evicted or scaled them in), and the operator's scale lines:
    what a test reports when a pod it watched was replaced."""
    events = s.get("events")["items"]
    out = {n: [f"{e.get('reason')}: {e.get('message')}" for e in events
               if e.get("involvedObject", {}).get("name") == n] for n in sorted(names)}  # fmt: skip
    rs = [
        f"{e.get('involvedObject', {}).get('name')} {e.get('reason')}: {e.get('message')}"
        for e in events
        if e.get("involvedObject", {}).get("kind") in ("ReplicaSet", "Deployment", "QueueWorker")
    ]
    out["scaling events"] = rs[-12:]
    log = s.kubectl("-n", NAMESPACE, "logs", f"deployment/{FULLNAME}-operator", "--tail", "400", check=False).stdout
    out["operator scale lines"] = [line for line in log.splitlines() if " -> " in line][-12:]
    return out


def worker_in_progress(pod: dict[str, Any]) -> float:
    """The worker's `tasks_in_progress` gauge, read from its metrics port on the pod's IP (the host is the
    bridge's gateway: it reaches pod IPs directly)."""
    ip = pod["status"].get("podIP")
    if not ip:
        return 0.0
    try:
        text = httpx.get(f"http://{ip}:9100/metrics", timeout=2, trust_env=False).text
    except httpx.HTTPError:
        return 0.0
    match = re.search(r"^queueworker_worker_tasks_in_progress\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0
