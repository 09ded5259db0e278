#!/usr/bin/env python3
"""The real operator at N QueueWorkers: `python -m qw_operator` under the shipped RBAC, on the real test control
plane (etcd, kube-apiserver, controller-manager, kwok node), one RabbitMQ 3.10 (quorum tick 1 s, stats every
1 s, depth from its Prometheus endpoint as shipped), N idle queues, N Deployments each scaled by its QueueWorker
(pollingInterval 1).

    python bench/bench_operator_real.py [--sizes 1000,5000] [--bursts 40] [--idle 30] [--deadline 3000]

Queues: quorum up to 1,000, classic above (tests/e2e/fleet.py QUORUM_MAX): this one-node broker on a 2-core
machine refused more quorum queues near 3,000 (cluster_not_formed while declaring), and 1,000 quorum queues at a
1 s quorum tick already keep it busy. The operator reads every queue type the same way (one batched read).

Per N: seconds until every QueueWorker has a status (followed by one watch), and the CPU each process used
meanwhile (operator, kube-apiserver, etcd, broker, the whole machine); 429s the apiserver answered the operator
(its own counter); idle CPU (cores) and RSS over --idle seconds; decisions per QueueWorker per second
(ticks_total / N / s) and the tick interval's p50/p99 (histogram); burst -> spec.replicas >= 1, p50/p99 over
--bursts quorum queues (and a quarter as many classic ones apart), each published at a random moment, with where
its time went (the operator logs a `scale timing` line per scale: publish -> start of the read that showed it,
the read, read -> decision, the replica write); CPU and status writes/s
(total and per busy QueueWorker) while 100 queues are busy; then a restart (a second operator replaces the first):
replica writes it caused (flapping) and its 429s. Beside each figure, the issue's "today" (the
kopf-daemon-per-QueueWorker operator, measured the same way), and the load average at each step (a shared
machine). QW_BENCH_PROFILE_DIR=DIR: py-spy samples the operator's first 90 s into DIR (collapsed stacks). QW_*
settings in the environment reach the operator (e.g. QW_BROKER_READS_PER_INTERVAL). A size that fails is
reported with its error and the figures it got; the run as a whole stops by --deadline seconds (every wait is
bounded) and always removes its broker and control plane. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "cluster"))
sys.path.insert(0, str(ROOT))

import cluster as control_plane  # noqa: E402
from rabbitmq import Broker, free_broker_ports  # noqa: E402

from tests.e2e.fleet import (  # noqa: E402
    QUORUM_MAX,
    create_fleet,
    declare_quorum_queues,
    deployments,
    fleet_names,
    metrics,
    proc_usage,
    publish,
    status_writes,
    throttled,
    wait_all_statuses,
)
from tests.e2e.harness import Env, make_env, stop  # noqa: E402

# Issue 16's table (kopf daemon per QueueWorker, same machine and control plane). None: not measured there.
TODAY: dict[int, dict[str, Any]] = {
    1000: {
        "all_status_s": "51-76",
        "idle_cores": "0.34-0.40",
        "rss_mib": 460,
        "burst_p50_s": 3.9,
        "busy100_cores": "0.61-0.63",
        "busy100_status_writes_per_s": "47-62",
        "throttled_429": "~1000",
        "decisions_per_qw_per_s": "~0.5",
    },  # fmt: skip
    5000: {},
}
TICKS = "queueworker_operator_ticks_total"
WINDOW = 20.0


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))], 2)


def hist_quantile(m: dict[str, float], name: str, q: float, before: dict[str, float]) -> float | None:
    """The q-quantile's bucket bound of a histogram's observations between two scrapes."""
    buckets = sorted(
        (float(k.split("le=")[1].rstrip("}")), v - before.get(k, 0.0))
        for k, v in m.items()
        if k.startswith(name + "_bucket")
    )
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    return next(le for le, count in buckets if count >= q * total)


def wait(probe: Any, timeout: float, what: str, every: float = 0.5) -> float:
    """Seconds until `probe()` holds. A probe that fails (an overloaded apiserver cutting a large list short, a
    metrics scrape timing out) counts as not yet, until the timeout."""
    start = time.monotonic()
    while True:
        try:
            if probe():
                break
        except Exception as exc:  # noqa: BLE001 - any transient read error: try again
            print(f"{what}: probe failed ({type(exc).__name__}), again", file=sys.stderr, flush=True)
        if time.monotonic() - start > timeout:
            raise TimeoutError(what)
        time.sleep(every)
    return time.monotonic() - start


def publish_retrying(env: Env, counts: dict[str, int], attempts: int = 5) -> None:
    """An overloaded broker (a shared 2-core machine) sometimes times out the AMQP handshake: try again."""
    for attempt in range(attempts):
        try:
            publish(env, counts)
            return
        except Exception as exc:  # pika's connection errors have no common base worth naming here
            print(f"publish failed ({type(exc).__name__}), attempt {attempt + 1}", file=sys.stderr, flush=True)
            time.sleep(3)
    raise RuntimeError("could not publish")


def progress(out: dict[str, Any]) -> None:
    print(json.dumps(out), file=sys.stderr, flush=True)  # partial results survive a later failure


class Deadline(BaseException):
    """The run's --deadline passed (a BaseException: no size's own error handling takes it)."""


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def window(env: Env, pid: int, url: str, seconds: float, broker_pid: int = 0) -> dict[str, Any]:
    """The operator's CPU and RSS over `seconds`, its decisions and tick intervals, and the broker's CPU meanwhile
    (what the operator's reads cost it: at 5,000 queues each read is a 2 MB answer rendered)."""
    m0, (c0, _) = metrics(url), proc_usage(pid)
    b0 = proc_usage(broker_pid)[0] if broker_pid else 0.0
    time.sleep(seconds)
    m1, (c1, rss) = metrics(url), proc_usage(pid)
    b1 = proc_usage(broker_pid)[0] if broker_pid else 0.0
    n = m1.get("queueworker_operator_queueworkers", 0.0)
    return {
        "cores": round((c1 - c0) / seconds, 3),
        "broker_cores": round((b1 - b0) / seconds, 3),
        "rss_mib": round(rss / 2**20),
        "decisions_per_qw_per_s": round((m1[TICKS] - m0[TICKS]) / max(n, 1) / seconds, 2),
        "tick_interval_p50_s": hist_quantile(m1, "queueworker_operator_tick_interval_seconds", 0.5, m0),
        "tick_interval_p99_s": hist_quantile(m1, "queueworker_operator_tick_interval_seconds", 0.99, m0),
        "ticks_skipped": m1.get("queueworker_operator_ticks_skipped_total", 0)
        - m0.get("queueworker_operator_ticks_skipped_total", 0),
    }


TIMING = re.compile(r"(\S+)/(\S+): scale timing: read began ([\d.]+) and took ([\d.]+)s, decided ([\d.]+)s after it, "
                    r"written ([\d.]+)s after that")  # fmt: skip


def burst_stages(log: str, namespace: str, published: dict[str, float]) -> dict[str, Any]:
    """Where each burst's time went, from the operator's own `scale timing` line of its first scale-up of that
    queue: publish -> the start of the read that showed it (the broker's emission and the wait for the next
    read), the read, read -> decision (the round's ticks before it), and the replica write. p50/p99 each."""
    stages: dict[str, list[float]] = {"to_read_start": [], "read": [], "to_decision": [], "write": [], "total": []}
    seen: set[str] = set()
    for m in TIMING.finditer(log):
        ns, q, began, read, decided, written = m.groups()
        if ns != namespace or q not in published or q in seen:
            continue
        seen.add(q)
        parts = [float(began) - published[q], float(read), float(decided), float(written)]
        for key, v in zip(("to_read_start", "read", "to_decision", "write"), parts, strict=True):
            stages[key].append(v)
        stages["total"].append(sum(parts))
    return {k: {"p50": round(pct(v, 50), 3), "p99": round(pct(v, 99), 3)} for k, v in stages.items() if v} | {
        "bursts_timed": len(seen)
    }


PROFILE = os.environ.get("QW_BENCH_PROFILE_DIR", "")  # set: py-spy samples the operator's start-up into it


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process, and of the whole machine ("machine", from /proc/stat)."""
    got = {}
    for name, pid in pids.items():
        try:
            got[name] = proc_usage(pid)[0]
        except OSError:
            continue
    ticks = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    idle = int(ticks[3]) + int(ticks[4])  # idle + iowait
    got["machine"] = (sum(int(t) for t in ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    return got


def run_size(cluster: Any, tmp: Path, n: int, bursts: int, idle: float, out: dict[str, Any]) -> None:
    """Fills `out` (the caller keeps it: a deadline keeps what was measured). A broker of its own per size: the
    last size's thousand quorum queues take the broker minutes to delete."""
    out.update(queueworkers=n, quorum_queues=min(n, QUORUM_MAX), classic_queues=max(0, n - QUORUM_MAX),
               today=TODAY.get(n, {}))  # fmt: skip
    amqp, mgmt, prom = free_broker_ports()
    broker = Broker(name=f"qwopreal{n}", port=amqp, mgmt_port=mgmt, prom_port=prom, base=tmp / f"rmq{n}")
    broker.start()
    try:
        env = make_env(cluster, broker, tmp / f"n{n}")
        out["namespace"] = env.namespace
        _measure(env, broker, n, bursts, idle, out)
    except Exception as exc:  # the figures got so far stay, with what stopped the rest
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        progress(out)
        try:
            broker.destroy()
        except Exception as exc:  # noqa: BLE001 - an overloaded broker may not answer its shutdown: kill it
            print(f"broker shutdown failed ({exc}), killing it", file=sys.stderr, flush=True)
            broker.kill9()
            shutil.rmtree(broker.dir, ignore_errors=True)


def _measure(env: Env, broker: Broker, n: int, bursts: int, idle: float, out: dict[str, Any]) -> None:
    names = fleet_names(n, "q")
    t = time.monotonic()
    declare_quorum_queues(env, names)
    # A cooldown longer than the whole run: a restart's window (at 5,000 under load up to a minute after the purge
    # of the busy ones) never holds the policy's own scale-in, which would count as a restart's replica write.
    create_fleet(env, names, scaling={"messagesPerReplica": 10, "cooldownSeconds": 600,
                                      "scaleDownStabilizationSeconds": 5})  # fmt: skip
    out["setup_s"] = round(time.monotonic() - t, 1)
    op = env.start_operator("op1")
    second = None
    try:
        url = env.metrics_urls["op1"]
        pids = {**control_plane._running(env.cluster.dir), "broker": broker._pid() or 0, "operator": op.pid}  # noqa: SLF001
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        if PROFILE:  # where the operator's start-up CPU goes: py-spy's collapsed stacks, the first 90 s
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            subprocess.Popen([spy, "record", "--pid", str(op.pid), "--rate", "100", "--format", "raw", "--nonblocking",
                              "--duration", "90", "--output", f"{PROFILE}/startup-{n}.txt"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        out["all_status_s"] = round(wait_all_statuses(env, names, 600), 1)
        elapsed = time.monotonic() - t0
        out["startup_cores"] = {k: round((v - cpu0.get(k, 0.0)) / elapsed, 2) for k, v in cpu_seconds(pids).items()}
        started = metrics(url)
        out["throttled_429_startup"] = throttled(started)
        # Writes sent by then, by kind: N status writes is the floor (one each); more is work the apiserver, the
        # start-up's scarcest CPU here (4-5 ms of its CPU per status PATCH), did for nothing a user reads.
        out["startup_writes"] = {k.split("kind=")[1].rstrip("}"): int(v) for k, v in started.items()
                                 if k.startswith("queueworker_operator_kube_writes_total{")}  # fmt: skip
        out["load_startup"] = load()
        # The start-up's floor on this machine: the apiserver's CPU for each status write (watch fan-out included)
        first_writes = out["startup_writes"].get("status", 0)
        if first_writes:
            apiserver_s = out["startup_cores"].get("kube-apiserver", 0.0) * elapsed
            out["apiserver_ms_per_status_write"] = round(apiserver_s / first_writes * 1000, 2)
        progress(out)
        time.sleep(10)  # past the first round's status writes
        out["idle"] = window(env, op.pid, url, idle, pids["broker"])
        out["idle"]["seconds"], out["idle"]["load"] = idle, load()
        # Bursts: 15 messages into one idle queue at a time -> spec.replicas >= 1 (10 per replica -> 2). Quorum
        # queues (the goal: the broker's quorum tick at 1 s); classic ones apart, as context: a 3.10 classic
        # queue starts its stats timer at its first publish after idling, so its depth shows a full
        # collect_statistics_interval (1 s here) after the publish, never sooner (measured: 1.04-1.09 s).
        # Each publish at a random moment (0-1 s after the last scale): one right after the last scale would land
        # just after a read began, at the worst point of the operator's 1 s read grid, every time.
        rnd = random.Random(16)
        quorum, classic = names[100 : min(n, QUORUM_MAX)], names[QUORUM_MAX:]
        published: dict[str, float] = {}
        runs = [("burst_to_replicas_s", "burst_stages_s", quorum, bursts),
                ("burst_classic_s", "burst_classic_stages_s", classic, bursts // 4)]  # fmt: skip
        for key, stages, pool, count in runs:
            lat: list[float] = []
            for q in rnd.sample(pool, min(count, len(pool))):
                time.sleep(rnd.uniform(0, 1))
                publish_retrying(env, {q: 15})
                b0, published[q] = time.monotonic(), time.time()
                wait(lambda q=q: (env.apps.read_namespaced_deployment(q, env.namespace).spec.replicas or 0) >= 1,
                     60, "burst", 0.02)  # fmt: skip
                lat.append(round(time.monotonic() - b0, 2))
            if lat:
                out[key] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "mean": round(statistics.mean(lat), 2),
                            "all": lat}  # fmt: skip
                out[stages] = burst_stages(
                    env.log("op1"), env.namespace, {q: published[q] for q in published if q in set(pool)}
                )
        # 100 busy queues: 50 messages each stay (no consumers): every tick sees them (5 replicas each)
        busy = names[:100]
        progress(out)
        publish_retrying(env, {q: 50 for q in busy})
        wait(lambda: all(d[q][1] >= 1 for d in [deployments(env)] for q in busy), 180, "busy scaled", 1.0)
        time.sleep(12)  # past the first status writes of the scale-up
        m0, (c0, _) = metrics(url), proc_usage(op.pid)
        counts = status_writes(env, WINDOW)
        m1, (c1, _) = metrics(url), proc_usage(op.pid)
        writes = sum(counts.values())
        out["busy100"] = {
            "cores": round((c1 - c0) / WINDOW, 3),
            "status_writes_per_s": round(writes / WINDOW, 1),
            "status_writes_per_s_per_busy_qw": round(sum(counts.get(q, 0) for q in busy) / 100 / WINDOW, 3),
            "decisions_per_qw_per_s": round((m1[TICKS] - m0[TICKS]) / n / WINDOW, 2),
            "seconds": WINDOW,
            "load": load(),
        }
        out["throttled_429_total_first"] = throttled(m1)
        progress(out)
        # Restart: a new operator replaces this one; no replica may change because of it (no flapping)
        for q in busy:
            env.purge(q)
        # Settled first: 5 s of stabilization takes the purged ones 5 -> 1, then the cooldown holds 1. (A
        # restart inside those 5 s counts the policy's own scale-down as flapping: 100 "writes" in one run.)
        wait(lambda: all(d[q][1] == 1 for d in [deployments(env)] for q in busy), 60, "busy settled at 1", 1.0)
        time.sleep(3)  # the idle transition's status written
        held = deployments(env)
        stop(op)
        second = env.start_operator("op2")
        url2 = env.metrics_urls["op2"]
        r0 = time.monotonic()
        wait(lambda: metrics(url2).get(TICKS, 0) >= n, 300, "the new operator's first round", 1.0)
        out["restart_first_round_s"] = round(time.monotonic() - r0, 1)
        time.sleep(15)
        after = deployments(env)
        changed = {k: [v, after.get(k)] for k, v in held.items() if after.get(k) != v}  # (generation, replicas)
        out["restart_replica_writes"] = len(changed)
        out["restart_replica_changes"] = dict(list(changed.items())[:10])
        m2 = metrics(url2)
        out["restart_throttled_429"] = throttled(m2)
        out["restart_status_writes"] = m2.get("queueworker_operator_kube_writes_total{kind=status}", 0)
        out["restart_rss_mib"] = round(proc_usage(second.pid)[1] / 2**20)
    finally:
        stop(op)
        if second is not None:
            stop(second)
        env.cluster.kubectl("delete", "namespace", env.namespace, "--wait=false", check=False)  # the broker goes whole


def namespace_gone(cluster: Any, namespace: str, timeout: float) -> float:
    """Seconds until `namespace` (deleted with --wait=false) is gone: its QueueWorkers, Deployments and
    ReplicaSets garbage-collected."""
    t = time.monotonic()
    cluster.kubectl("wait", "--for=delete", f"namespace/{namespace}", f"--timeout={int(timeout)}s", check=False)
    return round(time.monotonic() - t, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--bursts", type=int, default=40, help="quorum bursts per size (a p50 of 20 moved by 0.37 s)")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of the idle CPU/RSS window")
    ap.add_argument("--deadline", type=int, default=3300, help="the whole run stops (and cleans up) after this")
    args = ap.parse_args()

    def too_long(signum: int, frame: Any) -> None:
        raise Deadline(f"the run passed its --deadline of {args.deadline} s")

    def terminated(signum: int, frame: Any) -> None:
        raise Deadline(f"terminated by signal {signum}")

    signal.signal(signal.SIGALRM, too_long)
    signal.signal(signal.SIGTERM, terminated)  # `kill` cleans up too: broker, control plane, operators
    signal.alarm(args.deadline)
    tmp = Path(tempfile.mkdtemp(prefix="qw-opreal-"))
    cluster_dir = tmp / "k8s"
    cluster = control_plane.start(cluster_dir, control_plane.build(), die_with_parent=True)
    try:
        results: list[dict[str, Any]] = []
        for n in args.sizes.split(","):
            previous = results[-1].get("namespace") if results else None
            results.append({})
            try:
                if previous:  # its thousands of objects being garbage-collected would load this size's start
                    gone = namespace_gone(cluster, previous, 600)
                    results[-1]["previous_namespace_deleted_s"] = gone
                run_size(cluster, tmp, int(n), args.bursts, args.idle, results[-1])
            except Deadline as exc:  # report what there is
                results[-1]["error"] = str(exc)
                break
            progress(results[-1])
        print(json.dumps({
            "bench": "the real operator process on the real control plane, N QueueWorkers on one broker",
            "broker": f"RabbitMQ 3.10, idle queues (quorum up to {QUORUM_MAX}, classic above), quorum tick and "
                      "stats every 1 s, depth from its Prometheus endpoint",
            "cpus": os.cpu_count(),
            "polling_interval_s": 1,
            "results": results,
            "fake_kubernetes_row": "bench/results/operator.json (bench_operator.py: poller + policy, counting fake)",
        }))  # fmt: skip
        return 0
    finally:
        signal.alarm(0)
        control_plane.stop(cluster_dir)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
