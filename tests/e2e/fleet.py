"""Many QueueWorkers at once, for the operator's scale test (tests/e2e/test_operator_fleet.py) and its benchmark
(bench/bench_operator_real.py): N idle quorum queues, N Deployments at 0 replicas, N QueueWorkers scaling them
(pollingInterval 1), and what to read off the operator process (its /metrics, CPU and RSS) and the apiserver."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pika
from kubernetes import watch
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import Env, deployment, queueworker

CHUNK = 250  # objects per `kubectl create`


def fleet_names(n: int, prefix: str = "f") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


QUORUM_MAX = 1000  # beyond this, classic queues: one RabbitMQ node on this 2-core machine refuses more quorum
# queues (cluster_not_formed near 3,000 while declaring); the operator reads every queue type the same way


def declare_quorum_queues(env: Env, names: Iterable[str]) -> None:
    with pika.BlockingConnection(pika.URLParameters(env.amqp)) as conn:
        ch = conn.channel()
        for i, n in enumerate(names):
            ch.queue_declare(n, durable=True, arguments={"x-queue-type": "quorum" if i < QUORUM_MAX else "classic"})


def publish(env: Env, counts: dict[str, int]) -> None:
    with pika.BlockingConnection(pika.URLParameters(env.amqp)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for q, n in counts.items():
            for i in range(n):
                ch.basic_publish("", q, str(i).encode())


def create_fleet(env: Env, names: list[str], **spec: Any) -> None:
    """A Deployment at 0 replicas and a QueueWorker scaling it, per name (the queue of the same name)."""
    deployments = [deployment(n, 0) for n in names]
    workers = [queueworker(n, env, n, scaleTargetRef={"name": n}, **json.loads(json.dumps(spec))) for n in names]
    for objs in (deployments, workers):
        for i in range(0, len(objs), CHUNK):
            body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objs[i : i + CHUNK]})
            env.kubectl("create", "-f", "-", "-o", "name", input=body)


def statuses(env: Env) -> dict[str, dict[str, Any]]:
    got = env.custom.list_namespaced_custom_object("queueworker.dev", "v1alpha1", env.namespace, "queueworkers")
    return {q["metadata"]["name"]: q.get("status") or {} for q in got["items"]}


def without_status(env: Env, names: list[str]) -> list[str]:
    """QueueWorkers the operator has not reported on yet (no desiredReplicas in their status)."""
    st = statuses(env)
    return [n for n in names if "desiredReplicas" not in st.get(n, {})]


def wait_all_statuses(env: Env, names: list[str], timeout: float) -> float:
    """Seconds until every one of `names` has a status (desiredReplicas), followed by one watch instead of a LIST
    of all of them every few seconds: at 5,000 QueueWorkers each such LIST cost the apiserver and this process
    about a second of CPU, on the machine whose CPU the start-up being measured needs. TimeoutError with how many
    are still missing."""
    args = ("queueworker.dev", "v1alpha1", env.namespace, "queueworkers")
    started = time.monotonic()
    deadline = started + timeout
    missing = set(without_status(env, names))
    rv = env.custom.list_namespaced_custom_object(*args, limit=1)["metadata"]["resourceVersion"]
    missing = set(without_status(env, names)) & missing  # any that got one between the two reads
    while missing:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"{len(missing)} of {len(names)} QueueWorkers still without a status: {sorted(missing)[:5]}"
            )
        w = watch.Watch()
        for event in w.stream(env.custom.list_namespaced_custom_object, *args, resource_version=rv,
                              timeout_seconds=max(1, int(min(left, 60))), allow_watch_bookmarks=True):  # fmt: skip
            obj = event["object"]
            rv = obj["metadata"].get("resourceVersion") or rv
            if "desiredReplicas" in (obj.get("status") or {}):
                missing.discard(obj["metadata"].get("name"))
            if not missing or time.monotonic() >= deadline:
                w.stop()
    return time.monotonic() - started


def deployments(env: Env) -> dict[str, tuple[int, int]]:
    """name -> (metadata.generation, spec.replicas): a replica write bumps the generation."""
    got = env.apps.list_namespaced_deployment(env.namespace).items
    return {d.metadata.name: (int(d.metadata.generation), int(d.spec.replicas)) for d in got}


def metrics(url: str) -> dict[str, float]:
    """The operator's /metrics as {name{labels}: value} (labels sorted, `le` included)."""
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a local test URL
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def throttled(m: dict[str, float]) -> float:
    """429s the operator met: its own writes (counted on every answer) and its retries after one."""
    return m.get("queueworker_operator_kube_throttled_total", 0.0)


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, resident set bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def status_writes(env: Env, seconds: float) -> dict[str, int]:
    """MODIFIED watch events per QueueWorker over `seconds`."""
    args = ("queueworker.dev", "v1alpha1", env.namespace, "queueworkers")
    rv = env.custom.list_namespaced_custom_object(*args)["metadata"]["resourceVersion"]
    counts: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    w = watch.Watch()
    stream = w.stream(env.custom.list_namespaced_custom_object, *args, resource_version=rv,
                      timeout_seconds=int(seconds) + 1)  # fmt: skip
    for event in stream:
        if event["type"] == "MODIFIED":
            name = event["object"]["metadata"]["name"]
            counts[name] = counts.get(name, 0) + 1
        if time.monotonic() >= deadline:
            w.stop()
    return counts


def apiserver_429s(env: Env) -> float:
    """429s the apiserver has answered so far to namespaced requests (the operator's are all namespaced): the sum of
    its apiserver_request_total{code="429"} from its own /metrics, read with the admin kubeconfig. Left out: the
    controller-manager's cluster-wide watches of a just-created CRD, answered 429 while its watch cache starts."""
    text = env.cluster.kubectl("get", "--raw", "/metrics").stdout
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "apiserver_request_total" and s.labels.get("code") == "429" and s.labels.get("scope") != "cluster"
    )


def conditions(st: dict[str, dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """name -> its conditions as (type, status, reason, lastTransitionTime): what a flap would change."""
    return {
        n: [
            (c.get("type"), c.get("status"), c.get("reason"), c.get("lastTransitionTime"))
            for c in s.get("conditions") or ()
        ]
        for n, s in st.items()
    }
