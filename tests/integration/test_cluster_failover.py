"""Clients on a three-node RabbitMQ cluster (the host's 3.10 binaries, scripts/rabbitmq_cluster.py).

1. The real API (a process) and two real email workers, each given all three nodes in QW_RABBITMQ_URL, take
   2,000 email tasks from 8 client threads. Mid-run the node the API publishes through is SIGKILLed (and started
   again), then the node a worker consumes from. Asserted: every task that got 202 ends succeeded exactly once and
   its mail reached the SMTP server exactly once; the API answered nothing but 202 and 503 + Retry-After.

   Client policy, as a real client should have it: a 503 means nothing was queued, so the client waits Retry-After
   (1 s here) and sends the same request again; it gives up after 60 s. A 503 can still hide a message the
   broker took (the connection died between publish and confirm); the API then deletes the task's row, and the
   worker dead-letters the orphan without sending it — unless the worker got to it first, in which case that
   mail goes out under a task id the client was told failed. Those are counted, not hidden.

2. What the operator can read while one node is down: every surviving node's management API and Prometheus
   per-object endpoint, compared with the queues' depth; and the operator's own reader, given every node, still
   sees every queue's depth.

Figures (cluster start, API latency p50/p99 in the 5 s after each kill, 503s, failover gap, lost/duplicate
counts, per-node metric coverage) are printed (pytest -s) and written to bench/results/cluster-failover.json.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families
from qw_core.store import TaskStore, open_store
from qw_operator.rabbitmq import BrokerPoller, ManagementReader, PrometheusReader
from rabbitmq import SBIN
from rabbitmq_cluster import Cluster, ClusterNode

from tests.support.api import api_process
from tests.support.smtp import smtp_server
from tests.support.util import free_port
from tests.support.wait import wait_for, wait_for_async
from tests.support.workers import running_worker, worker_env

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench/results/cluster-failover.json"
TASKS = int(os.environ.get("QW_FAILOVER_TASKS", 2000))
CLIENTS = 8
WINDOW = 5.0  # seconds after a kill whose requests count as "during the failover"
GIVE_UP = 60.0  # a client stops retrying a 503 after this long


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert (SBIN / "rabbitmq-server").exists(), "rabbitmq-server is not installed (scripts/install-system-deps.sh)"
    c = Cluster(base=tmp_path_factory.mktemp("rmq-cluster"))
    try:
        c.start()
        print(f"cluster: 3 nodes up and joined in {c.start_seconds:.1f}s")
        yield c
    finally:
        c.destroy()


# --- the load ------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    started: float  # monotonic
    seconds: float
    status: int  # 0: no HTTP answer
    retry_after: str | None = None


@dataclass
class Load:
    """CLIENTS threads posting TASKS emails; a 503 is retried after Retry-After, as a client should."""

    base: str
    tasks: int
    answers: list[Answer] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    accept_seconds: list[float] = field(default_factory=list)  # first try to 202, retries included
    gave_up: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def stop(self) -> None:
        """Clients stop after their current request (a failed test must not wait for the whole run)."""
        self._stop.set()

    def run(self) -> None:
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(self._client, range(CLIENTS)))

    def _client(self, n: int) -> None:
        with httpx.Client(base_url=self.base, headers={"Authorization": "Bearer key-fo"}, timeout=30) as c:
            for i in range(n, self.tasks, CLIENTS):
                if self._stop.is_set():
                    return
                self._one(c, i)

    def _one(self, c: httpx.Client, i: int) -> None:
        body = {"to": f"user{i}@example.com", "subject": f"failover {i}", "text": f"task {i}"}
        first = time.monotonic()
        while time.monotonic() - first < GIVE_UP and not self._stop.is_set():
            started = time.monotonic()
            task_id = None
            try:
                r = c.post("/v1/emails", json=body)
                answer = Answer(started, time.monotonic() - started, r.status_code, r.headers.get("retry-after"))
                task_id = r.json().get("task_id") if r.status_code == 202 else None
            except httpx.HTTPError:
                answer = Answer(started, time.monotonic() - started, 0)
            with self._lock:
                self.answers.append(answer)
                if task_id:
                    self.accepted.append(str(task_id))
                    self.accept_seconds.append(time.monotonic() - first)
            if answer.status != 503:
                return
            self._stop.wait(float(answer.retry_after or 1))
        with self._lock:
            self.gave_up += 1

    def statuses(self) -> collections.Counter[int]:
        with self._lock:
            return collections.Counter(a.status for a in self.answers)

    def window(self, start: float, seconds: float = WINDOW) -> dict[str, Any]:
        """Latency of the requests in flight at some point of [start, start + seconds), and how many were 503s."""
        with self._lock:
            inside = [a for a in self.answers if a.started < start + seconds and a.started + a.seconds >= start]
        ok = [a.seconds for a in inside if a.status == 202]
        return {
            "requests": len(inside),
            "answers_503": sum(a.status == 503 for a in inside),
            "latency_all_s": _summary([a.seconds for a in inside]),
            "latency_202_s": _summary(ok),
        }

    def recovered_after(self, t: float) -> float | None:
        """Seconds from t to the first 202 of a request started after t."""
        with self._lock:
            ends = [a.started + a.seconds for a in self.answers if a.started >= t and a.status == 202]
        return round(min(ends) - t, 3) if ends else None


@dataclass
class ReadyProbe:
    """Polls the API's /readyz (broker connected and store answering) every 50 ms while the load runs."""

    base: str
    samples: list[tuple[float, bool]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=1) as c:
            while not self._stop.wait(0.05):
                try:
                    ok = c.get("/readyz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.samples.append((time.monotonic(), ok))

    def stop(self) -> None:
        self._stop.set()

    def unready_after(self, t: float) -> float | None:
        """Seconds from t until /readyz answered 200 again after its first failure past t (0: never failed)."""
        down = next((s for s, ok in self.samples if s >= t and not ok), None)
        if down is None:
            return 0.0
        up = next((s for s, ok in self.samples if s > down and ok), None)
        return None if up is None else round(up - t, 3)


def _pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def _summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(values), "p50": round(_pct(values, 50), 4), "p99": round(_pct(values, 99), 4),
            "max": round(max(values), 4)}  # fmt: skip


# --- the cluster, as the management API sees it ---------------------------------------------------------------


def connection_nodes(cluster: Cluster, name: str) -> list[str]:
    """The node of every client connection called `name`, read from a running node's management API."""
    for node in cluster.running_nodes():
        try:
            conns = node.api("/api/connections")
        except OSError:
            continue
        assert isinstance(conns, list)
        return sorted(c["node"] for c in conns if (c.get("client_properties") or {}).get("connection_name") == name)
    return []


def record(key: str, value: Any) -> None:
    """Merge one test's figures into bench/results/cluster-failover.json."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- 1. failover under load -----------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/qw.db"


@pytest.fixture
def store(db: str) -> Iterator[TaskStore]:
    s = open_store(db)
    yield s
    s.close()


def test_api_and_workers_fail_over_and_every_accepted_task_runs_once(
    cluster: Cluster, db: str, store: TaskStore, tmp_path: Path
) -> None:
    whole(cluster)
    urls = ",".join(cluster.urls)
    t_begin = time.monotonic()
    with smtp_server() as (smtp_port, mails):
        api_env = {"QW_RABBITMQ_URL": urls, "QW_DATABASE_URL": db, "QW_STORAGE_DIR": str(tmp_path / "s"),
                   "QW_API_KEYS": "key-fo:fo", "QW_RETRY_DELAYS": "[200, 400]",
                   "QW_RETRY_AFTER_SECONDS": "1"}  # fmt: skip
        wenv = worker_env(urls, db, tmp_path / "s", QW_SMTP_PORT=smtp_port, QW_SMTP_FROM="fo@queueworker.test")
        with (
            api_process(api_env, tmp_path / "api.log") as base,
            running_worker("email", wenv, tmp_path / "logs") as w1,
            running_worker("email", {**wenv, "QW_METRICS_PORT": free_port()}, tmp_path / "logs") as w2,
        ):
            load, probe = Load(base, TASKS), ReadyProbe(base)
            t0 = time.monotonic()
            with ThreadPoolExecutor(2) as runner:
                runner.submit(probe.run)
                done = runner.submit(load.run)
                try:
                    kills = inject_kills(cluster, load, probe, t0)
                    done.result(timeout=240)
                finally:
                    probe.stop()
                    load.stop()
            submitted = time.monotonic() - t0
            final = lambda: store.counts("fo").get("succeeded", 0) >= len(load.accepted)  # noqa: E731
            wait_for("every accepted task succeeded", final, 120, 0.5)
            drained = time.monotonic() - t0
            outcomes = {o: sum(w.metric("queueworker_worker_tasks_processed_total", kind="email", outcome=o) or 0
                               for w in (w1, w2)) for o in ("succeeded", "duplicate", "failed", "dead")}  # fmt: skip
        sent = collections.Counter(m["X-QW-Task-Id"] for m in mails.messages())
    email_queue = cluster.running_nodes()[0].api("/api/queues/%2F/qw.email")
    replicas = len(email_queue.get("members") or [])  # type: ignore[union-attr]
    records = {t: store.get(t) for t in load.accepted}
    all_rows = store.counts("fo")

    statuses = load.statuses()
    lost = [t for t, r in records.items() if r is None or r.status != "succeeded"]
    twice = [t for t, r in records.items() if r is not None and r.completions != 1]
    mail_missing = [t for t in records if sent[t] == 0]
    mail_twice = [t for t, n in sent.items() if n > 1]
    figures = {
        "broker": "RabbitMQ 3.10 (Debian), 3 nodes on 127.0.0.1, quorum queues on all 3",
        "cpus": os.cpu_count(),
        "cluster_start_seconds": round(cluster.start_seconds or 0, 1),
        "tasks": TASKS,
        "clients": CLIENTS,
        "accepted_202": len(load.accepted),
        "answers_by_status": {str(k): v for k, v in sorted(statuses.items())},
        "answers_503_total": statuses.get(503, 0),
        "clients_gave_up": load.gave_up,
        "kills": kills,
        "latency_whole_run_s": _summary([a.seconds for a in load.answers]),
        "accept_with_retries_s": _summary(load.accept_seconds),
        "submit_seconds": round(submitted, 1),
        "drain_seconds": round(drained, 1),
        "test_seconds_excluding_cluster_start": round(time.monotonic() - t_begin, 1),
        "qw_email_quorum_members": replicas,
        "lost": len(lost),
        "completed_twice": len(twice),
        "mail_missing": len(mail_missing),
        "mail_twice": len(mail_twice),
        "mail_for_a_503_task": sum(1 for t in sent if t not in records),
        "rows_by_status": all_rows,
        "worker_outcomes": outcomes,
    }
    print("cluster-failover:", json.dumps(figures, indent=1))
    record("failover", figures)

    assert set(statuses) <= {202, 503}, statuses  # no 5xx but 503, no dropped connection to the API
    assert all(a.retry_after for a in load.answers if a.status == 503), "a 503 without Retry-After"
    assert load.gave_up == 0 and len(load.accepted) == TASKS, (load.gave_up, len(load.accepted))
    assert all(k["api_recovered_seconds"] is not None for k in kills), kills
    assert replicas == 3, email_queue  # 3.10's default initial group size: every node of the cluster
    assert not lost, lost[:5]
    assert not twice, twice[:5]
    assert not mail_missing and not mail_twice, (mail_missing[:5], mail_twice[:5])


def inject_kills(cluster: Cluster, load: Load, probe: ReadyProbe, t0: float) -> list[dict[str, Any]]:
    """kill -9 the API's node, start it again; then kill -9 a node a worker consumes from (if possible not the
    API's), start it again. The second kill waits for the first node: with two of three down, no quorum."""
    wait_for("the first tenth accepted", lambda: len(load.accepted) >= TASKS // 10, 60, 0.05)
    kills = []
    api_node = wait_for("the API's connection", lambda: connection_nodes(cluster, "qw-api"), 10, 0.2)[0]
    kills.append(
        _kill_and_restart(cluster, cluster.node(api_node), "the node the API publishes through", load, probe, t0)
    )

    def worker_nodes() -> list[str]:
        nodes = connection_nodes(cluster, "qw-worker-email")
        return nodes if len(nodes) == 2 and connection_nodes(cluster, "qw-api") else []

    nodes = wait_for("both workers and the API connected", worker_nodes, 30, 0.2)
    api_now = connection_nodes(cluster, "qw-api")
    victim = next((n for n in nodes if n not in api_now), nodes[0])
    kills.append(_kill_and_restart(cluster, cluster.node(victim), "a node a worker consumes from", load, probe, t0))
    kills[-1]["api_on_the_same_node"] = victim in api_now
    return kills


def _kill_and_restart(
    cluster: Cluster, node: ClusterNode, what: str, load: Load, probe: ReadyProbe, t0: float
) -> dict[str, Any]:
    accepted = len(load.accepted)
    t = cluster.kill9(node)
    back = cluster.restart(node)
    time.sleep(max(0.0, t + WINDOW - time.monotonic()))  # the window is over before it is measured
    return {"what": what, "node": node.nodename, "at_seconds": round(t - t0, 2), "accepted_before": accepted,
            "api_unready_seconds": probe.unready_after(t), "api_recovered_seconds": load.recovered_after(t),
            "window_after_kill": load.window(t),
            "node_back_in_cluster_seconds": round(back, 1)}  # fmt: skip


# --- 2. what each node reports while one is down --------------------------------------------------------------


def management_depths(node: ClusterNode) -> dict[str, int | None]:
    """queue -> messages, as this node's management API lists them (the `obs.` queues)."""
    items = node.api("/api/queues/%2F?columns=name,messages,leader,node")
    assert isinstance(items, list)
    return {q["name"]: q.get("messages") for q in items if q["name"].startswith("obs.")}


def prometheus_depths(node: ClusterNode) -> dict[str, float]:
    """queue -> ready messages on this node's /metrics/detailed?family=queue_coarse_metrics."""
    url = f"http://127.0.0.1:{node.prom_port}/metrics/detailed?vhost=%2F&family=queue_coarse_metrics"
    with httpx.Client(timeout=5) as c:
        text = c.get(url).text
    return {
        s.labels["queue"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "rabbitmq_detailed_queue_messages_ready" and s.labels.get("queue", "").startswith("obs.")
    }


def test_what_each_node_reports_while_one_node_is_down(cluster: Cluster) -> None:
    """Found on 3.10: every node's management API serves the whole cluster's queues (depth included), also with a
    node down; a node's Prometheus per-object endpoint lists only the queues whose leader is on that node, so a
    reader needs every node's endpoint (or the management API) to see every queue."""
    whole(cluster)
    # Given one quorum queue declared through each node (its leader is local: queue_leader_locator client-local),
    # with 10, 20 and 30 messages
    want = {}
    for i, node in enumerate(cluster.nodes, 1):
        conn = pika.BlockingConnection(pika.URLParameters(node.url))
        ch = conn.channel()
        ch.confirm_delivery()
        q = f"obs.{i}"
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        for _ in range(10 * i):
            ch.basic_publish("", q, b"x", pika.BasicProperties(delivery_mode=2))
        want[q] = 10 * i
        conn.close()
    queues = {q["name"]: q for q in cluster.nodes[0].api("/api/queues/%2F") if q["name"] in want}  # type: ignore[union-attr]
    leaders = {name: q.get("leader") for name, q in queues.items()}
    members = {name: len(q.get("members") or []) for name, q in queues.items()}
    wait_for("every node's view of the three queues", lambda: views(cluster.nodes, want, leaders), 20, 0.3)
    before = views(cluster.nodes, want, leaders, check=False)

    # When the leader of obs.1 is killed
    down = cluster.node(str(leaders["obs.1"]))
    t = cluster.kill9(down)
    up = [n for n in cluster.nodes if n is not down]

    def new_leaders() -> dict[str, Any] | None:
        found = {q["name"]: q.get("leader") for q in up[0].api("/api/queues/%2F") if q["name"] in want}  # type: ignore[union-attr]
        return found if down.nodename not in found.values() and None not in found.values() else None

    moved = wait_for("a new leader for obs.1", new_leaders, 20, 0.3)
    # The surviving nodes show the new leader's stats, the down node forgotten
    wait_for(
        "the surviving nodes' views", lambda: views(up, want, moved), 20, 0.3, lambda: views(up, want, moved, False)
    )
    during = views(up, want, moved, check=False)
    # The operator's own reader, given every node (the dead one first): still every queue's depth, from Prometheus
    operator_view = asyncio.run(operator_reads([down, *up], want))
    observed = {"members": members, "expected_depth": want, "leaders_before": leaders, "killed": down.nodename,
                "leaders_while_down": moved, "observed_after_seconds": round(time.monotonic() - t, 1),
                "before_kill": before, "while_down": during}  # fmt: skip
    print("metrics with a node down:", json.dumps(observed, indent=1))
    record("metrics_with_a_node_down", observed)

    # Then
    assert all(m == 3 for m in members.values()), members  # 3.10 puts a quorum queue on every node of a 3-node cluster
    assert operator_view == {q: (d, "Prometheus") for q, d in want.items()}, operator_view


async def operator_reads(nodes: list[ClusterNode], want: dict[str, int]) -> dict[str, tuple[int, str]]:
    """What the operator's BrokerPoller reads from a cluster with a node down: management URLs and Prometheus
    endpoints of every node, the dead one among them. Polls until every queue shows its depth, read from
    Prometheus (10 s at most)."""
    async with aiohttp.ClientSession() as s:
        poller = BrokerPoller(
            "cluster",
            ManagementReader([n.management_url for n in nodes], s, timeout=2),
            depth_reader=PrometheusReader([n.prometheus_url for n in nodes], s, timeout=2),
        )
        poller.register("uid", "/", "obs.1", 1.0)
        expected = {q: (d, "Prometheus") for q, d in want.items()}

        async def read() -> dict[str, tuple[int, str]]:
            snap = await poller.poll_once()
            assert snap.error is None, snap.error
            return {k[1]: (m.ready, m.depth_source) for k, m in snap.queues.items() if k[1] in want}

        # Wait for the depths and their source: the source is what the test asserts, not only the depths.
        last: dict[str, tuple[int, str]] = {}

        async def every_depth_from_prometheus() -> bool:
            last.clear()
            last.update(await read())
            return last == expected

        await wait_for_async("every queue's depth, from Prometheus", every_depth_from_prometheus, 10, 0.5, lambda: last)
        return last


def views(
    nodes: list[ClusterNode], want: dict[str, int], leaders: dict[str, Any], check: bool = True
) -> dict[str, Any] | bool:
    """Each node's view: the depths its management API lists, and those on its Prometheus endpoint. With
    `check`, True when every management API lists every queue at its depth and every Prometheus endpoint lists
    exactly the queues whose leader is that node."""
    seen = {n.nodename: {"management": management_depths(n), "prometheus": prometheus_depths(n)} for n in nodes}
    if not check:
        return seen
    return all(
        v["management"] == want and v["prometheus"] == {q: float(d) for q, d in want.items() if leaders[q] == name}
        for name, v in seen.items()
    )


def whole(cluster: Cluster) -> None:
    """Every node running (a test may have left one down)."""
    for node in cluster.nodes:
        if not node.running():
            cluster.restart(node)
