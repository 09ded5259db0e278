"""README's "On Kubernetes" block, run as written on the real node (containerd + kubelet + kube-proxy + CoreDNS):
`helm install` of the chart with its default values, and `kubectl apply` of manifests/, with our images built
here and real RabbitMQ, PostgreSQL and SMTP servers on the host.

What the test changes in the README's commands, and nothing else (printed when it runs):
- USER, PASS, the host names `rabbitmq` and `postgres` (-> the bridge gateway, where the host's servers listen:
  a pod's loopback is its own) and the API key placeholder;
- `helm install` gets one values file more (printed): the locally built images (imagePullPolicy IfNotPresent:
  imported into the node's containerd, no registry), the real node's placement (nodeSelector + toleration for
  the operator, the API, the workers; the `helm test` pod follows the API's), the SMTP server, the broker's
  Prometheus endpoint (`rabbitmq.prometheusUrl`, which the README recommends), and the shop's `inventory` and
  `analytics` kinds (`workers.userKinds` from examples/shop/values.yaml, only the image replaced: the shop's image,
  examples/shop/Containerfile FROM the workers image, built and loaded here; the Secret `shop-database` its README
  asks for, pointing at the shop's own database on the same PostgreSQL), and S3 storage (see Storage below);
- the plain manifests name ghcr.io/queueworker/*:0.1.0: the same local images are tagged with those names in the
  node's containerd, and while they run the real node is the only schedulable node (kwok's node cordoned, the
  real node's taint lifted, both put back after), as on a one-node cluster: the YAML needs no placement.
Storage: the chart release keeps uploads and results in an S3 bucket (`storage.type: s3` in the printed values file:
a SeaweedFS `weed` server on the host at the bridge gateway, the key pair in an existing Secret), so it needs no
volume at all. The plain manifests use the ReadWriteMany claim; this cluster has no provisioner at all (nor a
default class), so the test creates what an administrator would, a hostPath PersistentVolume without a class bound
to the claim's name (claimRef).

The chart (one release for the class TestHelmRelease): operator Ready and leading (kopf peering: its log and the
KopfPeering's status), the API serving /readyz through its Service, `helm test` passing, an image uploaded through
the Service processed by a worker pod and the result downloaded, the shop's tasks queued with the SDK's Client from
the host (analytics scaled from 0 to a pod and back; every task's effect in the shop's tables once), a burst of
emails scaling the email workers up (real pods; every mail received once) and back to their minimum. Then the closed
loop of tests/e2e/test_closed_loop.py on real pods (same burst, same scaling, same per-worker settings: its drain
time beside the process-level one), and again with a worker pod deleted mid-task and a scale-in while the workers
are busy (the kubelet's SIGTERM within the chart's grace period): every task done once, every mail sent once. The
probes: a broker outage makes every worker pod unready (and back), while the API keeps answering through its Service
(503 + Retry-After for new work, task status still served). The memory limits: the largest image the API accepts,
uploaded by many clients at once, stays inside the API's and the image workers' limits (cgroup peaks).
The plain manifests: operator Ready and leading, the example QueueWorker (min 0) scaling a worker pod up for an
uploaded image, the result downloaded. Figures go into bench/results/real-node.json under "helm_and_manifests".
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cluster as control_plane
import httpx
import images
import psycopg
import pytest
import real_node
import yaml
from postgres import Postgres
from queueworker import Client
from qw_core.settings import ApiSettings
from qw_core.store import open_store
from rabbitmq import Broker, free_broker_ports
from seaweed import ACCESS_KEY, SECRET_KEY, Seaweed

from tests.e2e.real_stack import (
    FULLNAME,
    NAMESPACE,
    RELEASE,
    REPO,
    RssPeaks,
    Stack,
    api_client,
    ctr,
    first_new_running,
    image_roundtrip,
    memory_peak_mib,
    new_problems,
    operator_leads,
    parts,
    pod_state,
    problems_by_pod,
    readme_block,
    ready,
    reset_memory_peak,
    wait_for,
    why_gone,
    worker_in_progress,
    write_figures,
)
from tests.support.images import largest_accepted_png
from tests.support.smtp import smtp_server
from tests.support.util import free_port

pytestmark = pytest.mark.e2e

MANIFEST_IMAGES = {t: f"ghcr.io/queueworker/{t}:0.1.0" for t in images.TARGETS}  # what manifests/ reference
BURST = 200  # emails; the SMTP server answers each DATA after SMTP_DELAY s, so one replica needs ~15 s
SMTP_DELAY = 0.3
STABILIZATION_S = 10  # the test's scale-down window (the CRD default is HPA's 300 s)
# The process-level closed loop's burst and settings (tests/e2e/test_closed_loop.py), for a like-for-like figure.
LOOP_TASKS = int(os.environ.get("QW_CLOSED_LOOP_TASKS", 2000))
LOOP_SMTP_LATENCY = 0.05
LOOP_MIN, LOOP_MAX = 1, 5
LOOP_SCALING = {"messagesPerReplica": 20, "scaleDownStabilizationSeconds": 5, "cooldownSeconds": 5}
LOOP_POLLING_S = 1  # the process-level loop's operator polls every second (QW_DEFAULT_INTERVAL=1)
LOOP_WORKER_ENV = {"QW_CONCURRENCY": "1", "QW_PREFETCH": "4"}  # the process-level loop's (4: the default)
FINAL = ("succeeded", "dead", "failed")
TENANT = "tenant"  # the README's API key line names it
EMAIL_WORKERS = "app.kubernetes.io/component=worker-email"
IMAGE_WORKERS = "app.kubernetes.io/component=worker-image"
SHOP_VALUES = REPO / "examples" / "shop" / "values.yaml"
SHOP_KINDS = ("inventory", "analytics")  # the shop's kinds this release runs (confirmation would need its SMTP)
SHOP_ORDERS = 30  # each: one inventory and one analytics task, as the shop's POST /orders queues them
SHOP_ITEMS = [{"sku": "A", "qty": 1}, {"sku": "C", "qty": 2}]


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

            def load_images() -> tuple[images.Built, str]:
                built = images.build(images.BASE_REF)
                for path in images.save(built).values():
                    real_node.load_image(node, path)
                # The shop's image, as its README says a team builds theirs: FROM the workers image just built.
                t = time.monotonic()
                shop = images.build_app(built.refs["workers"])
                real_node.load_image(node, images.save_app(shop))
                figures["shop_image_built_and_loaded_s"] = round(time.monotonic() - t, 1)
                return built, shop

            with ThreadPoolExecutor(3) as pool:
                built_f = pool.submit(load_images)
                broker_f = pool.submit(broker.start)
                pg_f = pool.submit(pg.start)
                built, shop_image = built_f.result()
                broker_f.result()
                pg_f.result()
            figures["images_and_servers_ready_s"] = round(time.monotonic() - t, 1)
            broker.add_user("qw", password)
            pg.add_user("qw", password, "qw")
            shop_database_url = pg.add_user("shop", secrets.token_hex(12), "shop")  # the shop's own database
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
                k8s_cluster, node, built, broker, pg, smtp_port, recorder, host_dir, subs, api_key, figures, volumes,
                shop_image, shop_database_url,
            )  # fmt: skip
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
            write_figures(figures)


def shop_kinds(image: str) -> list[dict[str, Any]]:
    """examples/shop/values.yaml's entries for SHOP_KINDS, as shipped but for the image (the one built here)."""
    shipped = yaml.safe_load(SHOP_VALUES.read_text())["workers"]["userKinds"]
    repository, _, tag = image.rpartition(":")
    return [{**k, "image": {"repository": repository, "tag": tag}} for k in shipped if k["name"] in SHOP_KINDS]


def shop_tables(s: Stack) -> dict[str, Any]:
    """What the shop's tasks wrote in the shop's own database (read from the host)."""
    with psycopg.connect(s.shop_database_host_url) as conn:
        one = lambda sql: conn.execute(sql).fetchone()  # noqa: E731
        return {
            "reservations": one("SELECT count(*), coalesce(sum(units), 0) FROM shop_reservations"),
            "sales": one("SELECT count(*), coalesce(sum(total_cents), 0) FROM shop_sales"),
            "stock": dict(conn.execute("SELECT sku, qty FROM shop_stock").fetchall()),
        }


# ---------------------------------------------------------------- helpers of the closed loop on real pods


def submit_emails(client: httpx.Client, n: int, prefix: str, clients: int = 16) -> list[str]:
    """n emails through the API's Service from `clients` threads; a 429 (the tenant's rate) or 503 (backpressure)
    is retried after its Retry-After, as a client would. Returns the task ids."""
    base, headers = str(client.base_url), dict(client.headers)
    local = threading.local()

    def one(i: int) -> str:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=base, headers=headers, timeout=30, trust_env=False)
        body = {"to": f"user{i}@example.com", "subject": f"{prefix} {i}", "text": f"task {i}"}
        for _ in range(60):
            r = local.c.post("/v1/emails", json=body)
            if r.status_code == 202:
                return str(r.json()["task_id"])
            assert r.status_code in (429, 503), r.text  # over the tenant's rate, or backpressure: retry later
            time.sleep(float(r.headers.get("Retry-After", "0.5")))
        raise AssertionError(f"email {i}: the API kept answering {r.status_code}")

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(n)))


def final_count(store: Any) -> int:
    counts = store.counts(TENANT)
    return sum(counts.get(s, 0) for s in FINAL)


def loop_settings(s: Stack) -> None:
    """The process-level loop's settings on the shipped email QueueWorker and its Deployment (a rollout), and the
    SMTP server's latency; idempotent."""
    spec: dict[str, Any] = {"minReplicas": LOOP_MIN, "maxReplicas": LOOP_MAX, "pollingInterval": LOOP_POLLING_S}
    spec["scaling"] = LOOP_SCALING
    s.kubectl("-n", NAMESPACE, "patch", "qw", f"{FULLNAME}-email", "--type=merge", "-p", json.dumps({"spec": spec}))
    deployment = f"deployment/{FULLNAME}-email-worker"
    s.kubectl("-n", NAMESPACE, "set", "env", deployment, *(f"{k}={v}" for k, v in LOOP_WORKER_ENV.items()))
    s.kubectl("-n", NAMESPACE, "rollout", "status", deployment, "--timeout=120s")
    wait_for("one email worker (the rollout's old pod gone)", lambda: len(s.pods(EMAIL_WORKERS)) == LOOP_MIN, 60,
             lambda: pod_state(s))  # fmt: skip
    s.smtp.delay = LOOP_SMTP_LATENCY


def mails_by_task(s: Stack, ids: list[str]) -> collections.Counter[str]:
    wanted = set(ids)
    return collections.Counter(t for m in s.smtp.messages() if (t := m["X-QW-Task-Id"]) in wanted)


def assert_exactly_once(s: Stack, store: Any, ids: list[str]) -> None:
    records = {t: store.get(t) for t in ids}
    assert all(r is not None for r in records.values()), "a task the API accepted has no record"
    statuses = collections.Counter(r.status for r in records.values())
    assert statuses == {"succeeded": len(ids)}, statuses
    assert all(r.completions == 1 for r in records.values()), "a task completed twice"
    sent = mails_by_task(s, ids)
    assert set(sent) == set(ids) and max(sent.values()) == 1, sent.most_common(3)


class Peaks:
    """Polled in the background from the moment it is made: when the Deployment's spec.replicas first rose (the
    operator's decision), when the first new pod ran (the decision plus scheduling and the kubelet's start), and
    the most pods Running at once."""

    def __init__(self, s: Stack, selector: str, deployment: str) -> None:
        self.s, self.selector, self.deployment = s, selector, deployment
        self.before = {p["metadata"]["name"] for p in s.pods(selector)}
        self.replicas0 = s.get("deployment", deployment)["spec"]["replicas"]
        self.peak = 0
        self.first_scale_up: float | None = None
        self.first_new_running: float | None = None
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _since(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.first_scale_up is None:
                    if self.s.get("deployment", self.deployment)["spec"]["replicas"] > self.replicas0:
                        self.first_scale_up = self._since()
                running = [p for p in self.s.pods(self.selector) if p["status"].get("phase") == "Running"]
            except (subprocess.SubprocessError, control_plane.ClusterError):
                continue
            self.peak = max(self.peak, len(running))
            if self.first_new_running is None and any(p["metadata"]["name"] not in self.before for p in running):
                self.first_new_running = self._since()
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- the chart, one release for the class

S3_BUCKET, S3_PREFIX, S3_SECRET = "queueworker", "helm", "queueworker-s3"


@pytest.fixture(scope="module")
def s3_on_host(stack: Stack) -> Iterator[Seaweed]:
    """The release's S3 server: SeaweedFS on the host, at the bridge gateway (a pod's loopback is its own)."""
    server = Seaweed(stack.host_dir / "seaweed", bucket=S3_BUCKET, ip=stack.node.gateway_ip)
    server.start()
    yield server
    server.stop()


def bucket_keys(server: Seaweed, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.fixture(scope="class")
def release(stack: Stack, s3_on_host: Seaweed) -> Iterator[Stack]:
    """README's `helm install` (plus the printed values file), every pod Ready; `helm uninstall` after."""
    s = stack
    values = {
        t: {
            "image": {"repository": ref.rpartition(":")[0], "tag": ref.rpartition(":")[2]},
            **json.loads(json.dumps(real_node.POD_PLACEMENT)),  # a copy each: no YAML anchors in the file shown
        }
        for t, ref in s.built.refs.items()
    }
    # Depth from the broker's Prometheus endpoint, as the README recommends (fresher than the management API).
    values["rabbitmq"] = {"prometheusUrl": f"http://{s.node.gateway_ip}:{s.broker.prom_port}"}
    values["workers"]["kinds"] = {
        "email": {"smtp": {"host": s.node.gateway_ip, "port": s.smtp_port, "starttls": False}}
    }
    # The shop's inventory and analytics kinds as examples/shop/values.yaml ships them, from the shop's image.
    values["workers"]["userKinds"] = shop_kinds(s.shop_image)
    # Uploads and results in a bucket: no volume; the key pair from an existing Secret (created below).
    s3 = {"bucket": S3_BUCKET, "prefix": S3_PREFIX, "endpoint": s3_on_host.endpoint, "existingSecret": S3_SECRET}
    values["storage"] = {"type": "s3", "s3": s3}
    values_file = s.host_dir / "real-node-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    print("\nvalues added to the README's helm install:\n" + values_file.read_text())
    s.kubectl("-n", NAMESPACE, "create", "secret", "generic", S3_SECRET, f"--from-literal=access-key-id={ACCESS_KEY}",
              f"--from-literal=secret-access-key={SECRET_KEY}")  # fmt: skip
    # The Secret examples/shop's README asks for: the shop's own database.
    s.kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", "shop-database", f"--from-literal=url={s.shop_database_url}"
    )
    install = next(c for c in parts(readme_block())["helm"] if c.startswith("helm install"))
    s.figures["helm"] = {}
    try:
        t0 = time.monotonic()
        s.run_readme(install, "-f", str(values_file))

        # Every pod Ready: the operator, two API replicas, one worker of each kind (their minReplicas), and the
        # shop's kinds at theirs (inventory 1: its example keeps one warm; analytics 0).
        expected = {"operator": 1, "api": 2, "worker-image": 1, "worker-email": 1}
        expected |= {
            f"worker-{k['name']}": k["minReplicas"] for k in values["workers"]["userKinds"] if k.get("minReplicas")
        }

        def all_ready() -> bool:
            by: dict[str, int] = {}
            for p in s.pods(f"app.kubernetes.io/instance={RELEASE}"):
                assert p["spec"].get("nodeName") in (None, real_node.NODE_NAME), p["metadata"]["name"]
                if ready(p):
                    comp = p["metadata"]["labels"]["app.kubernetes.io/component"]
                    by[comp] = by.get(comp, 0) + 1
            return by == expected

        wait_for("every pod of the release Ready", all_ready, 180, lambda: pod_state(s))
        s.figures["helm"]["install_to_all_pods_ready_s"] = round(time.monotonic() - t0, 1)
        yield s
    finally:
        t = time.monotonic()
        s.cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s", check=False)
        wait_for("every pod of the release gone", lambda: not s.pods(f"app.kubernetes.io/instance={RELEASE}"), 120)
        s.figures["helm"]["uninstall_s"] = round(time.monotonic() - t, 1)


class TestHelmRelease:
    def test_operator_leads_api_serves_helm_test_passes_an_image_is_processed(
        self, release: Stack, s3_on_host: Seaweed
    ) -> None:
        s = release
        operator_leads(s, "app.kubernetes.io/component=operator", FULLNAME)
        client = api_client(s, f"{FULLNAME}-api")
        resp = client.get("/readyz")
        assert (resp.status_code, resp.json()) == (200, {"broker": True, "store": True})
        for cmd in parts(readme_block())["helm"][1:]:  # helm test: /healthz and /readyz from a pod, by DNS name
            t = time.monotonic()
            out = s.run_readme(cmd, "--timeout", "120s")  # exits non-zero unless the test pod succeeded
            assert "Succeeded" in out.stdout, out.stdout
            s.figures["helm"]["helm_test_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        status = image_roundtrip(client, 60)
        s.figures["helm"]["image_task_roundtrip_s"] = round(time.monotonic() - t, 1)
        # Through the bucket (storage.type s3): the upload went (removed by the janitor later), the result is there.
        results = bucket_keys(s3_on_host, f"{S3_PREFIX}/results/")
        assert f"{S3_PREFIX}/results/{TENANT}/{status['task_id']}.webp" in results, results
        assert not [p for p in s.pods(f"app.kubernetes.io/instance={RELEASE}") if any(
            "persistentVolumeClaim" in v for v in p["spec"].get("volumes", []))]  # fmt: skip

    def test_the_janitor_runs_on_the_real_node_and_removes_ended_uploads(
        self, release: Stack, s3_on_host: Seaweed
    ) -> None:
        """The chart's CronJob, run now (`kubectl create job --from=cronjob/...`): placed like the workers (the
        release sets no janitor placement of its own), it reaches the database and the bucket from a pod and
        removes the upload of a task that ended."""
        s = release
        status = image_roundtrip(api_client(s, f"{FULLNAME}-api"), 60)
        uploads = f"{S3_PREFIX}/uploads/"
        assert bucket_keys(s3_on_host, uploads), "the ended task's upload was gone before the janitor ran"
        t = time.monotonic()
        run_janitor_now(s, f"{FULLNAME}-janitor")
        s.figures["helm"]["janitor_job_s"] = round(time.monotonic() - t, 1)
        assert bucket_keys(s3_on_host, uploads) == [], f"task {status['task_id']} ended; its upload stayed"

    def test_a_users_kinds_run_from_their_image_and_scale_from_their_queues(self, release: Stack) -> None:
        """examples/shop's inventory (one replica kept warm, as shipped) and analytics (none while its queue is
        empty) kinds, from the shop's image: SHOP_ORDERS orders' tasks enqueued with the SDK's Client from the
        host. The operator starts an analytics pod from zero and stops it after the drain; every task succeeds
        once and its effect is in the shop's own tables."""
        s = release
        analytics, inventory = (f"{FULLNAME}-{k}-worker" for k in ("analytics", "inventory"))
        for kind in SHOP_KINDS:  # the test's scale-down windows (the CRD's defaults: 300 s each)
            scaling = {"scaleDownStabilizationSeconds": STABILIZATION_S, "cooldownSeconds": STABILIZATION_S}
            patch = json.dumps({"spec": {"scaling": scaling}})
            s.kubectl("-n", NAMESPACE, "patch", "qw", f"{FULLNAME}-{kind}", "--type=merge", "-p", patch)
        wait_for("the analytics Deployment, at 0 replicas", lambda: s.get("deployment", analytics)["spec"]["replicas"]
                 == 0, 60, lambda: pod_state(s))  # fmt: skip
        pods = "app.kubernetes.io/component=worker-analytics"
        assert s.pods(pods) == []
        peaks = Peaks(s, pods, analytics)
        client = Client(s.amqp_url, database_url=s.store_url, tenant=TENANT)
        store = open_store(s.store_url)
        try:
            t0 = time.monotonic()
            ids = []
            for i in range(SHOP_ORDERS):
                order_id = f"e2e-{i}"
                ids.append(client.enqueue("inventory", order_id=order_id, items=SHOP_ITEMS))
                ids.append(client.enqueue("analytics", order_id=order_id, total_cents=1000 + i))
            enqueued = time.monotonic() - t0
            wait_for("an analytics pod Ready", lambda: any(ready(p) for p in s.pods(pods)), 120, lambda: pod_state(s))
            first_ready = time.monotonic() - t0
            wait_for("every task final", lambda: final_count_of(store, ids) >= len(ids), 120,
                     lambda: store.counts(TENANT))  # fmt: skip
            drained = time.monotonic() - t0
            records = [store.get(t) for t in ids]
            assert collections.Counter(r.status for r in records if r) == {"succeeded": len(ids)}, records[:3]
            assert all(r.completions == 1 for r in records if r), "a task completed twice"
            tables = shop_tables(s)
            n = SHOP_ORDERS
            assert tables["reservations"] == (n, n * sum(i["qty"] for i in SHOP_ITEMS)), tables
            assert tables["sales"] == (n, sum(1000 + i for i in range(n))), tables
            assert (tables["stock"]["A"], tables["stock"]["C"]) == (100_000 - n, 100_000 - 2 * n), tables

            wait_for("analytics back to 0 pods, inventory to its 1", lambda: (
                s.get("deployment", analytics)["spec"]["replicas"] == 0 and not s.pods(pods)
                and s.get("deployment", inventory)["spec"]["replicas"] == 1
            ), 2 * STABILIZATION_S + 90, lambda: pod_state(s))  # fmt: skip
            peaks.stop()
            assert peaks.first_scale_up is not None and peaks.peak >= 1, (peaks.first_scale_up, peaks.peak)
            s.figures["shop_kinds"] = {
                "tasks": len(ids),
                "enqueued_s": round(enqueued, 1),
                "first_task_to_analytics_spec_replicas_up_s": peaks.first_scale_up,
                "first_task_to_first_analytics_pod_running_s": peaks.first_new_running,
                "first_task_to_first_analytics_pod_ready_s": round(first_ready, 1),
                "drain_s": round(drained, 1),
                "back_to_zero_s": round(time.monotonic() - t0, 1),
                "peak_running_analytics_pods": peaks.peak,
            }
        finally:
            peaks.stop()
            client.close()
            store.close()

    def test_an_email_burst_scales_real_worker_pods_up_and_back(self, release: Stack) -> None:
        """The shipped email QueueWorker (only its scale-down window shortened): a burst through the API's
        Service, new worker pods Running, every mail once, back to the minimum."""
        s = release
        client = api_client(s, f"{FULLNAME}-api")
        for kind in ("email", "image"):
            patch = {"spec": {"scaling": {"scaleDownStabilizationSeconds": STABILIZATION_S}}}
            s.kubectl("-n", NAMESPACE, "patch", "qw", f"{FULLNAME}-{kind}", "--type=merge", "-p", json.dumps(patch))
        before = {p["metadata"]["name"] for p in s.pods(EMAIL_WORKERS)}
        ids: list[str] = []
        t = time.monotonic()
        sender = threading.Thread(target=lambda: ids.extend(submit_emails(client, BURST, "burst", clients=8)))
        sender.start()
        wait_for("a new email worker pod Running", first_new_running(s, EMAIL_WORKERS, before), 90,
                 lambda: pod_state(s))  # fmt: skip
        s.figures["helm"]["burst_to_first_new_worker_running_s"] = round(time.monotonic() - t, 1)
        sender.join()
        assert len(ids) == BURST
        s.figures["helm"]["burst_posted_s"] = round(time.monotonic() - t, 1)
        peak = max(len(s.pods(EMAIL_WORKERS)), 2)
        wait_for(f"{BURST} mails received", lambda: len(mails_by_task(s, ids)) >= BURST, 120,
                 lambda: len(s.smtp.accepted))  # fmt: skip
        s.figures["helm"]["burst_drained_s"] = round(time.monotonic() - t, 1)
        sent = mails_by_task(s, ids)
        assert set(sent) == set(ids) and max(sent.values()) == 1, sent.most_common(3)  # each mail once
        wait_for(
            "the email workers back to their minimum (1)",
            lambda: (
                s.get("deployment", f"{FULLNAME}-email-worker")["spec"]["replicas"] == 1
                and len(s.pods(EMAIL_WORKERS)) == 1
            ),
            STABILIZATION_S + 90,
            lambda: pod_state(s),
        )
        s.figures["helm"]["burst_peak_email_pods"] = peak
        s.figures["helm"]["burst_to_back_at_minimum_s"] = round(time.monotonic() - t, 1)

    def test_closed_loop_on_real_pods(self, release: Stack) -> None:
        """tests/e2e/test_closed_loop.py's burst and settings, with worker pods instead of its stand-in kubelet:
        every task done once, every mail once; the figures sit beside the process-level ones."""
        s = release
        loop_settings(s)
        client = api_client(s, f"{FULLNAME}-api")
        store = open_store(s.store_url)
        try:
            base = final_count(store)
            peaks = Peaks(s, EMAIL_WORKERS, f"{FULLNAME}-email-worker")
            t0 = time.monotonic()
            ids = submit_emails(client, LOOP_TASKS, "loop")
            submitted = time.monotonic() - t0
            wait_for("every task final", lambda: final_count(store) - base >= len(ids), 60 + LOOP_TASKS / 5,
                     lambda: store.counts(TENANT))  # fmt: skip
            drained = time.monotonic() - t0
            wait_for("back to one worker pod", lambda: len(s.pods(EMAIL_WORKERS)) == LOOP_MIN, 90,
                     lambda: pod_state(s))  # fmt: skip
            back = time.monotonic() - t0
            peaks.stop()
            assert_exactly_once(s, store, ids)
            assert peaks.peak > LOOP_MIN, peaks.peak  # it scaled out...
            s.figures["closed_loop_real_pods"] = {
                "tasks": LOOP_TASKS,
                "submit_s": round(submitted, 1),
                "burst_to_spec_replicas_up_s": peaks.first_scale_up,
                "burst_to_first_new_worker_pod_running_s": peaks.first_new_running,
                "drain_s": round(drained, 1),
                "back_to_min_s": round(back, 1),
                "peak_running_worker_pods": peaks.peak,
            }
        finally:
            store.close()

    def test_closed_loop_with_a_pod_deleted_mid_task_and_a_busy_scale_in(self, release: Stack) -> None:
        """While the backlog drains: `kubectl delete pod` of a worker with a task in hand, then maxReplicas
        lowered to 1 while the workers are busy (the Deployment controller removes pods; the kubelet sends
        SIGTERM and allows the chart's grace period). Each stopping worker finishes what it holds and returns its
        unstarted prefetch: every task succeeds once, every mail goes out once."""
        s = release
        loop_settings(s)
        client = api_client(s, f"{FULLNAME}-api")
        store = open_store(s.store_url)
        n = max(1000, LOOP_TASKS // 2)
        grace = s.get("deployment", f"{FULLNAME}-email-worker")["spec"]["template"]["spec"]
        grace_s = grace.get("terminationGracePeriodSeconds", 30)
        try:
            done0 = store.counts(TENANT).get("succeeded", 0)
            done = lambda: store.counts(TENANT).get("succeeded", 0) - done0  # noqa: E731
            t0 = time.monotonic()
            ids = submit_emails(client, n, "faults")
            wait_for("three worker pods Running and progress", lambda: (
                sum(p["status"].get("phase") == "Running" for p in s.pods(EMAIL_WORKERS)) >= 3 and done() > n // 10
            ), 120, lambda: pod_state(s))  # fmt: skip

            # A worker pod with a task in hand, deleted as a user would.
            victim = wait_for("a worker pod mid-task", lambda: next(
                (p for p in s.pods(EMAIL_WORKERS) if ready(p) and worker_in_progress(p) >= 1), None), 30)  # fmt: skip
            name = victim["metadata"]["name"]
            t = time.monotonic()
            s.kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=false")
            wait_for(f"pod {name} gone", lambda: all(p["metadata"]["name"] != name for p in s.get("pods")["items"]),
                     grace_s + 30)  # fmt: skip
            deleted_pod_gone = time.monotonic() - t
            # Gone inside the grace period: the worker left on SIGTERM, it was not SIGKILLed at the deadline.
            assert deleted_pod_gone < grace_s, (deleted_pod_gone, grace_s)

            # A scale-in while busy: at most one replica from now on.
            wait_for("progress after the deletion", lambda: done() > n * 4 // 10, 120)
            busy = [p["metadata"]["name"] for p in s.pods(EMAIL_WORKERS) if worker_in_progress(p) >= 1]
            patch = {"spec": {"maxReplicas": 1}}
            s.kubectl("-n", NAMESPACE, "patch", "qw", f"{FULLNAME}-email", "--type=merge", "-p", json.dumps(patch))
            wait_for("the scale-in to one pod", lambda: len(s.pods(EMAIL_WORKERS)) == 1, grace_s + 60,
                     lambda: pod_state(s))  # fmt: skip
            wait_for("every task final", lambda: final_count_of(store, ids) >= n, 60 + n / 5,
                     lambda: store.counts(TENANT))  # fmt: skip
            assert_exactly_once(s, store, ids)
            s.figures["closed_loop_real_pods_faults"] = {
                "tasks": n,
                "deleted_pod_gone_s": round(deleted_pod_gone, 1),
                "pods_busy_at_scale_in": len(busy),
                "drain_s": round(time.monotonic() - t0, 1),
            }
        finally:
            s.kubectl("-n", NAMESPACE, "patch", "qw", f"{FULLNAME}-email", "--type=merge",
                      "-p", json.dumps({"spec": {"maxReplicas": LOOP_MAX}}), check=False)  # fmt: skip
            store.close()

    def test_probes_a_broker_outage_makes_workers_unready_while_the_api_keeps_answering(self, release: Stack) -> None:
        s = release
        client = api_client(s, f"{FULLNAME}-api")
        workers = "app.kubernetes.io/component in (worker-image,worker-email)"
        watched = "app.kubernetes.io/component in (worker-image,worker-email,api)"
        wait_for("every worker pod Ready", lambda: all(ready(p) for p in s.pods(workers)), 60, lambda: pod_state(s))
        restarts = problems_by_pod(s.pods(watched))
        earlier = client.post("/v1/emails", json={"to": "a@example.com", "subject": "before", "text": "x"})
        assert earlier.status_code == 202, earlier.text
        t = time.monotonic()
        assert s.broker.ctl("stop_app").returncode == 0
        try:
            wait_for("every worker pod unready", lambda: not any(ready(p) for p in s.pods(workers)), 60,
                     lambda: pod_state(s))  # fmt: skip
            s.figures["helm"]["broker_down_to_workers_unready_s"] = round(time.monotonic() - t, 1)
            # The API stays behind its Service: it says why it cannot take work now, and status reads still work.
            resp = wait_for("the API's 503", lambda: post_email(client, "during", 503), 30)
            assert int(resp.headers["Retry-After"]) >= 1, resp.headers
            status = client.get(f"/v1/tasks/{earlier.json()['task_id']}")
            assert status.status_code == 200, status.text
        finally:
            assert s.broker.ctl("start_app").returncode == 0
        t = time.monotonic()
        wait_for("every worker pod Ready again", lambda: all(ready(p) for p in s.pods(workers)), 90,
                 lambda: pod_state(s))  # fmt: skip
        s.figures["helm"]["broker_back_to_workers_ready_s"] = round(time.monotonic() - t, 1)
        # The liveness probes left the waiting workers and the answering API alone: no container restarted. (A pod
        # the operator or the ReplicaSet replaced meanwhile is no probe's doing; it is reported with its events.)
        now = s.pods(watched)
        restarted = new_problems(restarts, now)
        assert not restarted, restarted
        if gone := set(restarts) - {p["metadata"]["name"] for p in now}:
            s.figures["helm"]["pods_replaced_during_the_outage"] = why_gone(s, gone)
        again = wait_for("a 202 again", lambda: post_email(client, "after", 202), 30)
        assert task_final(client, again.json()["task_id"], 60)["status"] == "succeeded"

    def test_the_largest_accepted_image_uploaded_in_parallel_stays_inside_the_memory_limits(
        self, release: Stack
    ) -> None:
        """Many clients upload the largest image the API accepts (its pixel and byte limits) at once: no API or
        image worker pod is OOM-killed, evicted or restarted, every upload is accepted and processed, and each
        pod's peak (its memory cgroup) is reported against its limit."""
        s = release
        client = api_client(s, f"{FULLNAME}-api")
        container = s.get("deployment", f"{FULLNAME}-api")["spec"]["template"]["spec"]["containers"][0]
        api_env = {e["name"]: e.get("value") for e in container["env"]}
        limits = ApiSettings.model_fields
        max_pixels = int(api_env.get("QW_MAX_IMAGE_PIXELS") or limits["max_image_pixels"].default)
        max_bytes = int(api_env.get("QW_MAX_UPLOAD_BYTES") or limits["max_upload_bytes"].default)
        data = largest_accepted_png(max_pixels, max_bytes - 64 * 1024)  # room for the form's other parts
        pods = s.pods("app.kubernetes.io/component in (api,worker-image)")
        before = problems_by_pod(pods)  # what earlier tests left
        for p in pods:
            reset_memory_peak(p)
        rss = RssPeaks(pods)
        parallel = 16
        t = time.monotonic()

        def upload(i: int) -> str:
            files = {"file": (f"big-{i}.png", data, "image/png")}
            for _ in range(60):
                r = client.post("/v1/images", files=files, data={"width": "1024", "format": "JPEG"}, timeout=120)
                if r.status_code == 202:
                    return str(r.json()["task_id"])
                assert r.status_code == 503, r.text
                time.sleep(float(r.headers.get("Retry-After", "1")))
            raise AssertionError(f"upload {i}: the API kept answering 503")

        with ThreadPoolExecutor(parallel) as pool:
            ids = list(pool.map(upload, range(parallel)))
        accepted_s = time.monotonic() - t
        for task_id in ids:
            assert task_final(client, task_id, 300)["status"] == "succeeded"
        rss_peaks = rss.stop()
        now = s.pods("app.kubernetes.io/component in (api,worker-image)")
        problems = new_problems(before, now)
        assert not problems, problems
        assert {p["metadata"]["name"] for p in now} >= {p["metadata"]["name"] for p in pods}  # none replaced
        peaks: dict[str, Any] = {}
        for p in pods:
            comp = p["metadata"]["labels"]["app.kubernetes.io/component"]
            peaks.setdefault(comp, {"limit": p["spec"]["containers"][0]["resources"]["limits"]["memory"]})
            peaks[comp].setdefault("peak_rss_mib", []).append(round(rss_peaks[p["metadata"]["name"]]))
            peaks[comp].setdefault("peak_usage_incl_page_cache_mib", []).append(round(memory_peak_mib(p)))
        s.figures["largest_image_parallel_uploads"] = {
            "image": f"{max_pixels} px RGBA PNG, {len(data)} bytes",
            "parallel_uploads": parallel,
            "all_accepted_s": round(accepted_s, 1),
            "all_processed_s": round(time.monotonic() - t, 1),
            "memory": peaks,
        }


def run_janitor_now(s: Stack, cronjob: str) -> None:
    """`kubectl create job --from=cronjob/<cronjob>`: one janitor pass now, which must complete on the real node
    in one pod (no failed try before it); the Job is deleted after."""
    job = f"janitor-now-{secrets.token_hex(3)}"
    s.kubectl("-n", NAMESPACE, "create", "job", job, f"--from=cronjob/{cronjob}")
    try:

        def finished() -> dict[str, Any] | None:
            """The Job once Complete or Failed, not at its first condition: the Job controller sets
            SuccessCriteriaMet first and Complete a moment later (Kubernetes 1.31 on); a Job read between the two
            had SuccessCriteriaMet only."""
            j: dict[str, Any] = s.get("job", job)
            ended = [c for c in j.get("status", {}).get("conditions") or () if c["type"] in ("Complete", "Failed")]
            return j if any(c["status"] == "True" for c in ended) else None

        done = wait_for(f"job {job} to finish", finished, 120, lambda: pod_state(s))
        conditions = {c["type"]: c["status"] for c in done["status"]["conditions"]}
        pods = s.get("pods", "-l", f"job-name={job}")["items"]

        def run(p: dict[str, Any]) -> tuple[str, str, str]:
            log = s.kubectl("-n", NAMESPACE, "logs", p["metadata"]["name"], "--tail", "20", check=False).stdout
            return p["spec"].get("nodeName"), p["status"].get("phase"), log

        runs = {p["metadata"]["name"]: run(p) for p in pods}
        assert conditions.get("Complete") == "True" and len(pods) == 1, (conditions, runs)
        assert pods[0]["spec"]["nodeName"] == real_node.NODE_NAME, runs
    finally:
        s.kubectl("-n", NAMESPACE, "delete", "job", job, "--wait=false", check=False)


def post_email(client: httpx.Client, subject: str, expect: int) -> httpx.Response | None:
    r = client.post("/v1/emails", json={"to": "probe@example.com", "subject": subject, "text": "x"})
    return r if r.status_code == expect else None


def task_final(client: httpx.Client, task_id: str, timeout: float) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        st: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        return st if st["status"] in FINAL else None

    return dict(wait_for(f"task {task_id} final", probe, timeout))


def final_count_of(store: Any, ids: list[str]) -> int:
    return sum(1 for t in ids if (r := store.get(t)) is not None and r.status in FINAL)


# ---------------------------------------------------------------- the plain manifests


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
        # status.replicas is what the Deployment runs (not the decision): it shows the pod by the next tick.
        wait_for("the QueueWorker's status to show the running worker",
                 lambda: (s.get("qw", "images").get("status") or {}).get("replicas", 0) >= 1, 30)  # fmt: skip
        s.figures["manifests"]["upload_to_result_s"] = round(time.monotonic() - t, 1)
        # manifests/janitor.yaml's CronJob, run now: it reaches the database, the broker and the claim from a pod
        # and removes the ended task's upload from the volume.
        uploads = s.host_dir / "pv-queueworker-storage" / "uploads"
        assert [p for p in uploads.rglob("*") if p.is_file()], "the ended task's upload was gone before the janitor ran"
        t = time.monotonic()
        run_janitor_now(s, "queueworker-janitor")
        s.figures["manifests"]["janitor_job_s"] = round(time.monotonic() - t, 1)
        assert [p for p in uploads.rglob("*") if p.is_file()] == [], "an ended task's upload stayed"
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
