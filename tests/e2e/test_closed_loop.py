"""The whole loop, with real processes doing real work: the API takes a burst of email tasks, the operator (on the
real control plane, under the shipped RBAC) scales the worker Deployment, and a kubelet stand-in runs one real
`python -m qw_workers email` process per ready replica (SIGTERM to the surplus on scale-in, a fresh process for
one that died), sending through a real SMTP server with a remote server's latency into a PostgreSQL store.

Asserted: the operator scales up and back to min; every task ends succeeded with exactly one mail (with faults:
succeeded, or dead with a reason, and never two mails). Printed as JSON for the note: reaction time, drain time,
replica-seconds. QW_CLOSED_LOOP_TASKS sets the burst (2,000 here; `make soak` runs 10,000 and adds a run at fixed
min replicas for comparison). Each run is sampled twice a second (queue depth, workers, tasks done) and drawn
(bench/plots); QW_CLOSED_LOOP_RESULTS=FILE writes the figures and those timelines as JSON (bench_closed_loop.py).

The one stand-in: kwok's node runs no containers, so the harness plays the kubelet for the worker pods. The
broker, operator, API, workers, store and SMTP server are the real programs.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster as control_plane
import httpx
import pytest
from qw_core.store import open_store
from rabbitmq import Broker, free_broker_ports

from bench.jsonfmt import dumps
from bench.plots import machine, measured_now, pixel_size, save
from bench.plots.timelines import closed_loop_figure
from tests.e2e.harness import ROOT, Env, drop_env, make_env, queueworker, stop
from tests.support.smtp import smtp_server
from tests.support.timeline import QueueDepth, Sampler, png_size
from tests.support.util import free_port, http_ok
from tests.support.wait import wait_for
from tests.support.workers import WorkerProcess, worker_env

pytestmark = pytest.mark.e2e
TASKS = int(os.environ.get("QW_CLOSED_LOOP_TASKS", 2000))
SMTP_LATENCY = 0.05  # seconds the SMTP server takes per message: workers wait on I/O, as they do in production
MIN, MAX = 1, 5
TEMPLATE = {"metadata": {"labels": {"app": "mail"}}, "spec": {"containers": [{"name": "w", "image": "qw-workers"}]}}
FINAL = ("succeeded", "dead", "failed")


@dataclass
class Kubelet:
    """Runs as many worker processes as the Deployment has ready replicas; counts replica-seconds."""

    env: Env
    deployment: str
    worker_env: dict[str, str]
    log_dir: Path
    procs: list[WorkerProcess] = field(default_factory=list)
    leaving: list[WorkerProcess] = field(default_factory=list)
    replica_seconds: float = 0.0
    peak: int = 0
    started: int = 0
    spec_changes: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, spec.replicas)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                d = self.env.apps.read_namespaced_deployment(self.deployment, self.env.namespace)
            except Exception:  # noqa: BLE001 - the apiserver is real; one failed read is retried next tick
                time.sleep(0.2)
                continue
            ready, spec = int(d.status.ready_replicas or 0), int(d.spec.replicas or 0)
            with self._lock:
                if not self.spec_changes or self.spec_changes[-1][1] != spec:
                    self.spec_changes.append((time.monotonic(), spec))
                self.procs = [p for p in self.procs if p.proc.poll() is None]  # a dead one is replaced, as a
                self.leaving = [p for p in self.leaving if p.proc.poll() is None]  # kubelet restarts containers
                while len(self.procs) < ready:
                    self.started += 1
                    env = {**self.worker_env, "QW_METRICS_PORT": str(free_port())}
                    self.procs.append(WorkerProcess("email", env, self.log_dir / f"worker-{self.started}.log"))
                while len(self.procs) > ready:
                    p = self.procs.pop()
                    p.signal(signal.SIGTERM)  # graceful: it finishes the task in hand
                    self.leaving.append(p)
                now = time.monotonic()
                running = len(self.procs) + len(self.leaving)
                self.replica_seconds += running * (now - last)
                self.peak = max(self.peak, running)
                last = now
            time.sleep(0.2)

    def busy_worker(self) -> WorkerProcess | None:
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            if (p.metric("queueworker_worker_tasks_in_progress", kind="email") or 0) > 0:
                return p
        return None

    def now(self) -> tuple[int, int]:
        """(worker processes running, the Deployment's spec.replicas as last read)."""
        with self._lock:
            return len(self.procs) + len(self.leaving), (self.spec_changes[-1][1] if self.spec_changes else 0)

    def first_scale_up(self, after: float) -> float | None:
        return next((t - after for t, n in self.spec_changes if t >= after and n > MIN), None)

    @contextmanager
    def running(self) -> Iterator[Kubelet]:
        t = threading.Thread(target=self.run, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join(10)
            for p in self.procs + self.leaving:
                p.stop()


@contextmanager
def api_process(env: Env, database_url: str, storage: Path, log: Path, tenant: str) -> Iterator[str]:
    port = free_port()
    proc_env = {
        **os.environ,
        "QW_ENV": "test",
        "QW_RABBITMQ_URL": env.amqp,
        "QW_DATABASE_URL": database_url,
        "QW_STORAGE_DIR": str(storage),
        "QW_API_KEYS": f"key-{tenant}:{tenant}",
        "QW_API_PORT": str(port),
        "QW_RETRY_DELAYS": "[200, 400]",
        "QW_LOG_FORMAT": "json",
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "qw_api"], env=proc_env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the API", lambda: http_ok(base + "/readyz") or proc.poll() is not None, 60)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield base
    finally:
        stop(proc)


def submit(base: str, n: int, tenant: str) -> list[str]:
    """n tasks through the real API, 16 at a time; a 503 (broker briefly unavailable) is retried as a client would."""
    local = threading.local()

    def one(i: int) -> str:
        if not hasattr(local, "c"):
            local.c = httpx.Client(base_url=base, headers={"Authorization": f"Bearer key-{tenant}"}, timeout=30)
        body = {"to": f"user{i}@example.com", "subject": f"closed loop {i}", "text": f"task {i}"}
        for _ in range(60):
            r = local.c.post("/v1/emails", json=body)
            if r.status_code == 202:
                return str(r.json()["task_id"])
            assert r.status_code == 503, r.text
            time.sleep(0.5)
        raise AssertionError(f"task {i}: the API kept answering 503")

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def loop_run(
    k8s_cluster: control_plane.Cluster, broker: Any, pg_url: str, tmp: Path, *, tasks: int, fixed: bool = False,
    faults: bool = False, private_broker: Broker | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One burst through the whole loop; returns the figures and the per-task outcome for the caller to assert."""
    (tmp / "s").mkdir(parents=True, exist_ok=True)
    env = make_env(k8s_cluster, broker, tmp)
    store = open_store(pg_url)
    name = "mail"
    tenant = "fixed" if fixed else "auto"  # each run counts only its own tasks in the shared store
    try:
        with (
            smtp_server(delay=SMTP_LATENCY) as (smtp_port, mails),
            api_process(env, pg_url, tmp / "s", tmp / "api.log", tenant) as base,
        ):
            wenv = worker_env(env.amqp, pg_url, tmp / "s", QW_SMTP_PORT=smtp_port, QW_SMTP_FROM="loop@queueworker.test",
                              QW_CONCURRENCY=1, QW_LOG_FORMAT="text")  # fmt: skip
            operator = env.start_operator("operator")
            try:
                wait_for("the operator to lead", lambda: "Resuming operations" in env.log("operator"), 30)
                lo, hi = (MIN, MIN) if fixed else (MIN, MAX)
                env.apply(queueworker(name, env, "qw.email", template=TEMPLATE, minReplicas=lo, maxReplicas=hi,
                                      scaling={"messagesPerReplica": 20, "scaleDownStabilizationSeconds": 5,
                                               "cooldownSeconds": 5}))  # fmt: skip
                kubelet = Kubelet(env, f"{name}-worker", wenv, tmp)
                with kubelet.running():
                    wait_for("the min worker ready", lambda: kubelet.procs and kubelet.procs[0].is_ready(), 60)
                    probe = LoopProbe(kubelet, env.amqp, pg_url, tenant)
                    with Sampler(probe, close=probe.close) as sampler:
                        t0, rs0 = sampler.start, kubelet.replica_seconds
                        ids = submit(base, tasks, tenant)
                        submitted = time.monotonic() - t0
                        kills = []
                        if faults:
                            kills = inject_faults(env, kubelet, operator, store, tenant, ids, private_broker)
                            operator = kills.pop()  # the restarted operator, stopped below
                        deadline = 60 + tasks / 5  # a generous bound: even one worker alone drains faster than this
                        wait_for("every task final", lambda: _finished(store, tenant, ids), deadline, 1.0)
                        drained = time.monotonic() - t0
                        wait_for("scale back to min", lambda: env.replicas(f"{name}-worker") == MIN, 60, 0.2)
                        wait_for(
                            "the surplus workers gone", lambda: len(kubelet.procs) + len(kubelet.leaving) == MIN, 60
                        )
                        back = time.monotonic() - t0
                        figures = {
                            "tasks": tasks,
                            "mode": "fixed min" if fixed else "autoscaling",
                            "faults": faults,
                            "submit_seconds": round(submitted, 1),
                            "reaction_seconds": None if fixed else _round(kubelet.first_scale_up(t0)),
                            "drain_seconds": round(drained, 1),
                            "back_to_min_seconds": round(back, 1),
                            "replica_seconds_until_drained_and_back": round(kubelet.replica_seconds - rs0, 1),
                            "peak_workers": kubelet.peak,
                            "worker_processes_started": kubelet.started,
                            "spec_replicas": [n for _, n in kubelet.spec_changes],
                        }
                    sent = collections.Counter(m["X-QW-Task-Id"] for m in mails.messages())
            finally:
                stop(operator)
            if "Forbidden" in env.log("operator"):
                pytest.fail("the operator hit a permission error:\n" + env.log("operator")[-3000:])
        records = {t: store.get(t) for t in ids}
        return {"figures": figures, "records": records, "sent": sent, "kills": kills, "ids": ids,
                "timeline": sampler.series()}  # fmt: skip
    finally:
        store.close()
        drop_env(env, broker)


@dataclass
class LoopProbe:
    """One sample of the loop for its timeline: the queue's ready tasks, worker processes running, spec.replicas,
    tasks ended. Its own store connection and AMQP connection (it runs in the sampler's thread)."""

    kubelet: Kubelet
    amqp: str
    pg_url: str
    tenant: str
    _store: Any = None
    _depth: QueueDepth | None = None

    def __call__(self) -> dict[str, int]:
        self._store = self._store or open_store(self.pg_url)
        self._depth = self._depth or QueueDepth(self.amqp, "qw.email")
        counts = self._store.counts(self.tenant)
        ready, _ = self._depth()
        workers, spec = self.kubelet.now()
        return {"depth": ready, "workers": workers, "spec_replicas": spec,
                "completed": sum(counts.get(s, 0) for s in FINAL)}  # fmt: skip

    def close(self) -> None:
        if self._depth is not None:
            self._depth.close()
        if self._store is not None:
            self._store.close()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _finished(store: Any, tenant: str, ids: list[str]) -> bool:
    counts = store.counts(tenant)
    return sum(counts.get(s, 0) for s in FINAL) >= len(ids)


def inject_faults(
    env: Env,
    kubelet: Kubelet,
    operator: subprocess.Popen[bytes],
    store: Any,
    tenant: str,
    ids: list[str],
    broker: Broker | None,
) -> list[Any]:
    """While the backlog drains: SIGKILL a worker in the middle of a task, restart the broker (full node stop and
    start), SIGKILL the operator and start a new one. Returns [killed worker pids..., the new operator]."""
    assert broker is not None
    done = lambda: store.counts(tenant).get("succeeded", 0)  # noqa: E731
    wait_for("workers scaled up and busy", lambda: len(kubelet.procs) >= 2 and done() > len(ids) // 10, 120, 0.2)
    victim = wait_for("a worker mid-task", kubelet.busy_worker, 30, 0.05)
    victim.signal(signal.SIGKILL)
    killed = [victim.proc.pid]
    wait_for("progress after the kill", lambda: done() > len(ids) // 4, 120, 0.5)
    broker.stop()  # the whole node goes down: connections drop, unacked messages return to the queues
    time.sleep(2)
    broker.restart_after_crash()
    wait_for("progress after the broker restart", lambda: done() > len(ids) // 2, 180, 0.5)
    stop(operator, signal.SIGKILL)
    restarted = env.start_operator("operator-restarted")
    wait_for("the new operator leads", lambda: "Resuming operations" in env.log("operator-restarted"), 60)
    return [*killed, restarted]


def assert_exactly_once(run: dict[str, Any]) -> None:
    records, sent = run["records"], run["sent"]
    assert all(r is not None for r in records.values()), "a task the API accepted has no record"
    statuses = collections.Counter(r.status for r in records.values())
    assert statuses == {"succeeded": len(records)}, statuses
    assert all(r.completions == 1 for r in records.values()), "a task completed twice"
    assert set(sent) == set(records) and max(sent.values()) == 1, sent.most_common(3)


def test_burst_scales_up_drains_exactly_once_and_scales_back_to_min(k8s_cluster, broker, pg_url, tmp_path) -> None:
    run = loop_run(k8s_cluster, broker, pg_url, tmp_path, tasks=TASKS)
    fig = run["figures"]
    print("closed-loop:", json.dumps(fig))
    assert_exactly_once(run)
    assert fig["peak_workers"] > MIN and max(fig["spec_replicas"]) > MIN, fig  # it scaled up...
    assert fig["spec_replicas"][-1] == MIN, fig  # ...and back down to min
    runs = [run]
    if os.environ.get("QW_CLOSED_LOOP_FIXED"):  # `make soak`: the same burst at fixed min replicas, for the note
        fixed = loop_run(k8s_cluster, broker, pg_url, tmp_path / "fixed", tasks=TASKS, fixed=True)
        print("closed-loop:", json.dumps(fixed["figures"]))
        assert_exactly_once(fixed)
        runs.append(fixed)
    picture(runs, tmp_path)


def picture(runs: list[dict[str, Any]], tmp: Path) -> None:
    """The runs' timelines as the bench JSON and its picture: the timeline shows what the figures say (every task
    ended, more workers than min at the peak, min at the end), and the PNG is drawn from that JSON."""
    data = {"benchmark": "closed-loop", "tasks": TASKS, "smtp_latency_s": SMTP_LATENCY, "min_replicas": MIN,
            "max_replicas": MAX, "machine": machine(), "measured": measured_now(),
            "runs": [{"figures": r["figures"], "timeline": r["timeline"]} for r in runs]}  # fmt: skip
    for r in data["runs"]:
        tl = r["timeline"]
        assert tl["completed"][-1] == TASKS and tl["workers"][-1] == MIN, {k: v[-5:] for k, v in tl.items()}
        assert max(tl["workers"]) > MIN or r["figures"]["mode"] == "fixed min", tl["workers"]
    out = os.environ.get("QW_CLOSED_LOOP_RESULTS")
    if out:
        Path(out).write_text(dumps(data) + "\n")
    figure = closed_loop_figure(data)
    png = save(figure, tmp / "closed-loop.png")
    assert png_size(png) == pixel_size(figure)
    print("closed-loop picture:", png)


@pytest.fixture
def loop_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private broker this test may restart without disturbing the others."""
    amqp, mgmt, prom = free_broker_ports()
    b = Broker(name="qwloop", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp_path_factory.mktemp("rmq"))
    b.start()
    yield b
    b.destroy()


def test_with_faults_every_task_ends_succeeded_or_in_doubt_with_a_reason_and_no_mail_twice(
    k8s_cluster, loop_broker, pg_url, tmp_path
) -> None:
    tasks = max(1000, TASKS // 2)
    run = loop_run(k8s_cluster, loop_broker, pg_url, tmp_path, tasks=tasks, faults=True, private_broker=loop_broker)
    fig = run["figures"]
    records, sent = run["records"], run["sent"]
    statuses = collections.Counter(r.status for r in records.values())
    reasons = collections.Counter(r.error for r in records.values() if r.status != "succeeded")
    print("closed-loop:", json.dumps({**fig, "statuses": statuses, "dead_reasons": reasons}))
    assert set(statuses) <= {"succeeded", "dead", "failed"}, statuses  # nothing lost, nothing stuck
    # An in-doubt send ends `dead` while another attempt's claim still blocks it (retries exhausted), or `failed`
    # (PermanentError) once that claim's lease has expired: on a slow, loaded machine the redelivery can come after
    # the lease. Either way it is final and says why.
    dead = [r for r in records.values() if r.status != "succeeded"]
    assert all(r.error for r in dead), [r.task_id for r in dead if not r.error]  # dead always says why
    assert all("avoid a duplicate" in str(r.error) for r in dead), [r.error for r in dead]  # the in-doubt send
    # Only a task whose send was in flight when its worker was SIGKILLed may be in doubt; with one task at a time
    # per worker, that is at most one per kill. Everything else succeeded.
    assert len(dead) <= len(run["kills"]), [(r.task_id, r.error) for r in dead]
    assert all(r.completions == 1 for r in records.values() if r.status == "succeeded")
    assert not sent or max(sent.values()) == 1, sent.most_common(3)  # no mail went out twice
    assert all(sent[t] == 1 for t, r in records.items() if r.status == "succeeded")  # each success sent its mail
