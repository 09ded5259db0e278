"""The operator with a fleet: N QueueWorkers (idle quorum queues, pollingInterval 1) on the real control plane,
the operator under the shipped RBAC. All get a status with no 429 from the apiserver, every one is decided
about once per second by the one scheduler, and a restart changes no replicas (no flapping). The benchmark
(bench/bench_operator_real.py) runs the same at 1,000 and 5,000 and measures; this asserts behaviour at 200."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.e2e.fleet import (
    create_fleet,
    declare_quorum_queues,
    deployments,
    fleet_names,
    metrics,
    publish,
    statuses,
    throttled,
    without_status,
)
from tests.e2e.harness import Env, stop
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e]

N = 200
BUSY = 10
TICKS = "queueworker_operator_ticks_total"
READS = "queueworker_operator_broker_read_duration_seconds"


def ticks(url: str) -> float:
    """Ticks so far; 0 while the operator's metrics endpoint is not up yet."""
    try:
        return metrics(url).get(TICKS, 0.0)
    except OSError:
        return 0.0


def test_a_fleet_gets_its_statuses_without_429_ticks_every_second_and_survives_a_restart(env: Env) -> None:
    names = fleet_names(N, "fl")
    busy = names[:BUSY]
    declare_quorum_queues(env, names)
    publish(env, {n: 30 for n in busy})
    # 100 messages per replica: a busy queue wants 1 replica; the 120 s cooldown holds it after the purge below
    create_fleet(env, names, scaling={"messagesPerReplica": 100, "cooldownSeconds": 120})
    first = env.start_operator("fleet-1")
    second = None
    try:
        # Then every QueueWorker gets a status, the busy ones their replica
        wait_for("a status on every QueueWorker", lambda: not without_status(env, names), 180, 1,
                 state=lambda: len(without_status(env, names)))  # fmt: skip
        wait_for("the busy ones at 1", lambda: all(deployments(env)[n][1] == 1 for n in busy), 60, 1)
        # and each is decided about once per second (asked: 1 s): over 10 s, well over a third of N x 10 ticks
        url = env.metrics_urls["fleet-1"]
        before = metrics(url)
        time.sleep(10)
        after = metrics(url)
        assert after["queueworker_operator_queueworkers"] == N
        reads, sums = (after[f"{READS}_{x}{{broker=default}}"] for x in ("count", "sum"))
        per_qw = round((after[TICKS] - before[TICKS]) / N / 10, 2)
        print(json.dumps({"queueworkers": N, "ticks_per_qw_per_s": per_qw, "broker_read_s_mean": sums / reads}))
        assert after[TICKS] - before[TICKS] >= N * 10 / 3, (before[TICKS], after[TICKS])
        assert throttled(after) == 0 and not [k for k in after if "retries_total" in k and "429" in k]

        # Given the busy queues purged (each now in its 120 s cooldown, holding 1 replica; the idle time written)
        for n in busy:
            env.purge(n)

        def idle_written() -> list[str]:
            st = statuses(env)
            return [n for n in busy if "QueueIdle" not in str(st[n].get("conditions"))]

        wait_for("the busy ones to report idle", lambda: not idle_written(), 30, 0.5, state=idle_written)
        held = deployments(env)
        # When the operator is replaced by a new one
        stop(first)
        second = env.start_operator("fleet-2")
        url2 = env.metrics_urls["fleet-2"]
        wait_for("the new operator to tick every QueueWorker a few times", lambda: ticks(url2) >= 3 * N, 120, 1)
        time.sleep(5)
        # Then no replica was written (no flapping: the cooldown and history came back from the statuses)
        assert deployments(env) == held
        assert throttled(metrics(url2)) == 0
    finally:
        stop(first, signal.SIGTERM)
        if second is not None:
            stop(second)
