"""What the operator writes to a QueueWorker's status, on the real control plane (kwok nodes) and the host's
broker: replicas that run reported apart from replicas decided, and a busy queue's status written at most about
once per QW_STATUS_MIN_INTERVAL_SECONDS (10 s) instead of on every tick."""

from __future__ import annotations

import json
from typing import Any

import pika
import pytest

from tests.e2e.fleet import status_writes
from tests.e2e.harness import Env, deployment, queueworker
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e]

BUSY = 20  # QueueWorkers kept busy while their status writes are counted
WINDOW = 40.0  # seconds counted


def quota(env: Env, pods: int) -> None:
    """A ResourceQuota on pods; waits until the quota controller has computed it (admission needs that)."""
    env.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"},
               "spec": {"hard": {"pods": str(pods)}}})  # fmt: skip

    def computed() -> bool:
        got = json.loads(env.kubectl("get", "resourcequota", "pods", "-o", "json").stdout)
        return "pods" in got.get("status", {}).get("used", {})

    wait_for("the quota to be computed", computed, 30, 0.2)


def test_current_replicas_are_what_runs_desired_what_was_decided(env: Env, operator: Any) -> None:
    # Given a namespace quota that lets 2 pods exist
    quota(env, 2)
    try:
        env.queue("capped")
        env.apply(deployment("capped", 0))
        env.apply(queueworker("capped", env, "capped", scaleTargetRef={"name": "capped"}))
        # When 40 messages wait (10 per replica): the operator asks for 4
        env.publish("capped", 40)
        wait_for("the scale-up to 4", lambda: env.replicas("capped") == 4, 20, 0.05)

        # Then the status says 4 desired, 2 running and ready (kwok makes the admitted pods ready), and kubectl
        # prints them in their columns
        def capped() -> bool:
            st = env.qw("capped").get("status", {})
            return (st.get("desiredReplicas"), st.get("replicas"), st.get("readyReplicas")) == (4, 2, 2)

        wait_for("current 2 != desired 4 in the status", capped, 30, 0.2, state=lambda: env.qw("capped")["status"])
        row = env.kubectl("get", "qw", "capped", "-o", "wide", "--no-headers").stdout.split()
        header = env.kubectl("get", "qw", "capped", "-o", "wide").stdout.splitlines()[0].split()
        columns = dict(zip(header, row, strict=True))
        assert (columns["REPLICAS"], columns["DESIRED"], columns["READY-REPLICAS"]) == ("2", "4", "2")
    finally:
        env.kubectl("delete", "resourcequota", "pods", "--wait=false", check=False)
        env.kubectl("delete", "qw", "capped", "--wait=false", check=False)
        env.kubectl("delete", "deployment", "capped", "--wait=false", check=False)


def test_a_busy_queueworker_writes_its_status_about_once_per_10_seconds(env: Env, operator: Any) -> None:
    # Given 20 QueueWorkers (1 s polling) whose queues hold 30 messages each (busy; 100 per replica -> 1 replica)
    names = [f"busy{i:02d}" for i in range(BUSY)]
    with pika.BlockingConnection(pika.URLParameters(env.amqp)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for n in names:
            ch.queue_declare(n, durable=True)
            for i in range(30):
                ch.basic_publish("", n, str(i).encode())
    items = []
    for n in names:
        items += [
            deployment(n, 0),
            queueworker(n, env, n, scaleTargetRef={"name": n}, scaling={"messagesPerReplica": 100}),
        ]
    env.apply({"apiVersion": "v1", "kind": "List", "items": items})

    def settled() -> list[str]:
        """QueueWorkers not yet at 1 desired, 1 running and ready."""
        got = env.custom.list_namespaced_custom_object("queueworker.dev", "v1alpha1", env.namespace, "queueworkers")
        statuses = {q["metadata"]["name"]: q.get("status", {}) for q in got["items"]}
        replicas = {
            n: tuple(st.get(f) for f in ("desiredReplicas", "replicas", "readyReplicas")) for n, st in statuses.items()
        }
        return sorted(n for n in names if replicas.get(n) != (1, 1, 1))

    wait_for("all 20 at 1 ready replica", lambda: not settled(), 90, 0.5, state=settled)
    # When they stay busy (only lastActiveTime, rates and reason numbers move) for WINDOW seconds
    counts = status_writes(env, WINDOW)
    per_qw = sum(counts.get(n, 0) for n in names) / BUSY / WINDOW
    print(json.dumps({"busy_queueworkers": BUSY, "window_s": WINDOW, "status_writes_per_s_per_qw": round(per_qw, 3),
                      "status_writes_per_s": round(per_qw * BUSY, 2)}))  # fmt: skip
    # Then each is written about once per 10 s (before: once per 1 s tick)
    assert per_qw <= 0.15, counts
    assert all(counts.get(n, 0) >= 1 for n in names), counts  # still written: the churn is persisted, not dropped
