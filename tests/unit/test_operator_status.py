"""The status builder, pure: (previous conditions, reading, decision) -> the whole status patch. Every condition
and reason a QueueWorker can show, the fields written only on a scale or with a known queue, transition times."""

from __future__ import annotations

from typing import Any

import pytest
from qw_operator.observe import NO_SNAPSHOT, Reading, Replicas, read_queue
from qw_operator.policy import Decision, History, Observation, Policy, decide
from qw_operator.rabbitmq import QueueMetrics, Snapshot
from qw_operator.status import build_status, queue_status, unknown_broker_status

NOW = 1000.0
T0, T_EARLIER = "1970-01-01T00:16:40Z", "1970-01-01T00:00:10Z"
IDLE = QueueMetrics(0, 0, 1, 0.0, 0.0)
BUSY = QueueMetrics(45, 2, 1, 3.14, 2.06)
HISTORY = History(((990.0, 5),), 990.0, 0, None)


def build(
    reading: Reading,
    decision: Decision | None,
    current: int | None = 2,
    paused: bool = False,
    previous: list[dict[str, Any]] | None = None,
    observed: Replicas | None = None,
) -> dict[str, Any]:
    """`observed` defaults to a Deployment that runs what it was asked for (`current`), all ready."""
    if observed is None and current is not None:
        observed = Replicas(current, current, current)
    return build_status(
        previous,
        reading,
        decision,
        current=current,
        observed=observed,
        target="dep",
        paused=paused,
        generation=7,
        now=NOW,
    )


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_a_scale_writes_every_field_and_condition() -> None:
    d = Decision(5, "ScaleUp: backlog 47 / 10 per replica -> 5", False, HISTORY, active=True)
    st = build(Reading(BUSY, True), d, current=2)
    assert list(st) == [
        "lastScaleTime",
        "lastScaleReason",
        "queue",
        "replicas",
        "readyReplicas",
        "desiredReplicas",
        "reason",
        "observedGeneration",
        "consecutiveFailures",
        "conditions",
        "history",
    ]
    assert st["lastScaleTime"] == T0 and st["lastScaleReason"] == d.reason == st["reason"]
    # The decision is desired; what runs is still the 2 the Deployment had when this tick read it
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"]) == (2, 2, 5) and st["observedGeneration"] == 7
    assert st["queue"] == {
        "ready": 45,
        "unacked": 2,
        "consumers": 1,
        "publishRate": 3.1,
        "ackRate": 2.1,
        "depthSource": "ManagementAPI",
        "rateSource": "ManagementAPI",
        "lastPublishTime": None,
    }
    assert st["history"] == {"recommendations": [{"time": 990.0, "replicas": 5}], "lastActiveTime": 990.0,
                             "perReplicaAckRate": None}  # fmt: skip
    assert [c["type"] for c in st["conditions"]] == [
        "BrokerReachable",
        "MetricsAvailable",
        "Ready",
        "Active",
        "ScalingLimited",
    ]
    assert conds(st) == {
        "BrokerReachable": ("True", "Reachable", ""),
        "MetricsAvailable": ("True", "DepthManagementAPI", "depth from ManagementAPI, rates from ManagementAPI"),
        "Ready": ("True", "Scaling", d.reason),
        "Active": ("True", "QueueActive", ""),
        "ScalingLimited": ("False", "DesiredWithinRange", ""),
    }
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["observedGeneration"] == 7 and ready["lastTransitionTime"] == T0
    assert all("observedGeneration" not in c for c in st["conditions"] if c["type"] != "Ready")


def test_replicas_are_what_the_deployment_runs_not_what_was_decided() -> None:
    """A quota or unschedulable pods: the Deployment asks for 4, 3 pods exist, 1 is ready; the policy holds 4."""
    st = build(Reading(BUSY, True), Decision(4, "Steady"), current=4, observed=Replicas(4, 3, 1))
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"]) == (3, 1, 4)


def test_no_scale_no_scale_time() -> None:
    st = build(Reading(IDLE, True), Decision(2, "Steady"), current=2)
    assert "lastScaleTime" not in st and "lastScaleReason" not in st and st["replicas"] == 2


# (reading, decision, paused) -> the conditions after BrokerReachable
WHY_4X = "RabbitMQ lists queue 'jobs' without depth: its management metrics collector is off"
PROM = QueueMetrics(4, 0, 1, None, None, depth_source="Prometheus", rate_source=None)
CASES = {
    "idle queue": (
        Reading(IDLE, True),
        Decision(2, "Hold"),
        False,
        {
            "BrokerReachable": ("True", "Reachable", ""),
            "MetricsAvailable": ("True", "DepthManagementAPI", "depth from ManagementAPI, rates from ManagementAPI"),
            "Ready": ("True", "Scaling", "Hold"),
            "Active": ("False", "QueueIdle", ""),
            "ScalingLimited": ("False", "DesiredWithinRange", ""),
        },
    ),
    "depth from Prometheus, no rate source yet": (
        Reading(PROM, True),
        Decision(1, "ScaleDown", active=True),
        False,
        {
            "BrokerReachable": ("True", "Reachable", ""),
            "MetricsAvailable": ("True", "DepthPrometheus", "depth from Prometheus, rates from no source yet"),
            "Ready": ("True", "Scaling", "ScaleDown"),
            "Active": ("True", "QueueActive", ""),
            "ScalingLimited": ("False", "DesiredWithinRange", ""),
        },
    ),
    "listed without depth (NoDepth)": (
        Reading(None, True, WHY_4X),
        Decision(2, "Hold: no metrics (1 consecutive failures)", history=History(consecutive_failures=1)),
        False,
        {
            "BrokerReachable": ("True", "Reachable", ""),
            "MetricsAvailable": ("False", "NoDepth", WHY_4X),
            "Ready": ("False", "NoMetrics", WHY_4X),
            "Active": ("True", "QueueIdle", ""),  # no observation: Active says "has replicas"
            "ScalingLimited": ("False", "DesiredWithinRange", ""),
        },
    ),
    "broker unreachable, no replicas": (
        Reading(None, False, "GET http://rabbit:15672/api/queues: ClientConnectorError"),
        Decision(0, "Hold"),
        False,
        {
            "BrokerReachable": (
                "False",
                "MetricsReadError",
                "GET http://rabbit:15672/api/queues: ClientConnectorError",
            ),
            "MetricsAvailable": ("False", "Unreachable", "GET http://rabbit:15672/api/queues: ClientConnectorError"),
            "Ready": ("False", "NoMetrics", "GET http://rabbit:15672/api/queues: ClientConnectorError"),
            "Active": ("False", "QueueIdle", ""),
            "ScalingLimited": ("False", "DesiredWithinRange", ""),
        },
    ),
    "fallback": (
        Reading(None, False, NO_SNAPSHOT),
        Decision(3, "Fallback: 2 consecutive metric failures, using 3", fallback=True),
        False,
        {
            "BrokerReachable": ("False", "MetricsReadError", NO_SNAPSHOT),
            "MetricsAvailable": ("False", "Unreachable", NO_SNAPSHOT),
            "Ready": ("False", "Fallback", NO_SNAPSHOT),
            "Active": ("True", "QueueIdle", ""),
            "ScalingLimited": ("False", "DesiredWithinRange", ""),
        },
    ),
    "paused with metrics": (
        Reading(BUSY, True),
        Decision(2, "Paused: queueworker.dev/paused holds 2", active=True),
        True,
        {
            "BrokerReachable": ("True", "Reachable", ""),
            "MetricsAvailable": ("True", "DepthManagementAPI", "depth from ManagementAPI, rates from ManagementAPI"),
            "Ready": ("True", "Paused", "Paused: queueworker.dev/paused holds 2"),
            "Active": ("True", "QueueActive", ""),
            "ScalingLimited": ("False", "DesiredWithinRange", ""),
        },
    ),
    "paused without metrics is still ready": (
        Reading(None, False, NO_SNAPSHOT),
        Decision(2, "Paused: queueworker.dev/paused holds 2"),
        True,
        {
            "BrokerReachable": ("False", "MetricsReadError", NO_SNAPSHOT),
            "MetricsAvailable": ("False", "Unreachable", NO_SNAPSHOT),
            "Ready": ("True", "Paused", NO_SNAPSHOT),
            "Active": ("True", "QueueIdle", ""),
            "ScalingLimited": ("False", "DesiredWithinRange", ""),
        },
    ),
    "limited by maxReplicas": (
        Reading(BUSY, True),
        Decision(2, "ScaleUp: 5 capped at maxReplicas 2", limited=True, active=True),
        False,
        {
            "BrokerReachable": ("True", "Reachable", ""),
            "MetricsAvailable": ("True", "DepthManagementAPI", "depth from ManagementAPI, rates from ManagementAPI"),
            "Ready": ("True", "Scaling", "ScaleUp: 5 capped at maxReplicas 2"),
            "Active": ("True", "QueueActive", ""),
            "ScalingLimited": ("True", "Limited", "ScaleUp: 5 capped at maxReplicas 2"),
        },
    ),
}


@pytest.mark.parametrize(("reading", "decision", "paused", "expected"), CASES.values(), ids=CASES.keys())
def test_conditions_and_reasons(
    reading: Reading, decision: Decision, paused: bool, expected: dict[str, tuple[str, str, str]]
) -> None:
    st = build(reading, decision, paused=paused)
    assert conds(st) == expected
    assert st["consecutiveFailures"] == decision.history.consecutive_failures
    assert ("queue" in st) == (reading.queue is not None)


@pytest.mark.parametrize(
    ("q", "age", "active"),
    [
        (QueueMetrics(0, 0, 0, 0.0, 0.0), None, False),
        (QueueMetrics(1, 0, 0, 0.0, 0.0), None, True),
        (QueueMetrics(0, 1, 0, 0.0, 0.0), None, True),
        (QueueMetrics(0, 0, 0, 0.5, 0.0), None, True),
        (QueueMetrics(0, 0, 0, 0.5, 0.0), 1.0, True),
        (QueueMetrics(0, 0, 0, 0.5, 0.0), 3.0, False),  # a rate older than 2 s: history (a purged queue's)
        (QueueMetrics(0, 0, 0, None, 9.0), None, False),  # an ack rate alone is a queue draining to empty: idle
    ],
)
def test_active_means_messages_waiting_in_flight_or_arriving(q: QueueMetrics, age: float | None, active: bool) -> None:
    reading = Reading(q, True, publish_age=age)
    assert reading.observation is not None
    d = decide(Policy(), reading.observation, History(), 0, NOW)
    st = build(reading, d)
    assert conds(st)["Active"][:2] == (("True", "QueueActive") if active else ("False", "QueueIdle"))


def test_a_missing_target_writes_only_broker_and_ready() -> None:
    st = build(Reading(BUSY, True), None, current=None)
    assert st == {
        "conditions": [
            {"type": "BrokerReachable", "status": "True", "reason": "Reachable", "message": "",
             "lastTransitionTime": T0},
            {"type": "Ready", "status": "False", "reason": "TargetNotFound", "message": "Deployment dep",
             "lastTransitionTime": T0},
        ],
        "observedGeneration": 7,
    }  # fmt: skip
    st = build(Reading(None, False, NO_SNAPSHOT), None, current=None)
    assert conds(st)["BrokerReachable"] == ("False", "MetricsReadError", NO_SNAPSHOT)


def test_an_unknown_broker_is_not_ready() -> None:
    st = unknown_broker_status(None, "eu", NOW)
    assert st == {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "UnknownBroker",
             "message": "broker 'eu' is not configured in the operator", "lastTransitionTime": T0}
        ]
    }  # fmt: skip


def test_transition_times_move_only_when_a_status_flips() -> None:
    previous = [
        {"type": "BrokerReachable", "status": "True", "reason": "Reachable", "lastTransitionTime": T_EARLIER},
        {"type": "Ready", "status": "False", "reason": "NoMetrics", "lastTransitionTime": T_EARLIER},
    ]
    st = build(Reading(IDLE, True), Decision(2, "Hold"), previous=previous)
    times = {c["type"]: c["lastTransitionTime"] for c in st["conditions"]}
    assert times["BrokerReachable"] == T_EARLIER  # still True
    assert times["Ready"] == T0  # False -> True
    assert times["MetricsAvailable"] == T0  # new


def test_unknown_rates_are_written_as_none_to_remove_them() -> None:
    assert queue_status(PROM) == {
        "ready": 4,
        "unacked": 0,
        "consumers": 1,
        "publishRate": None,
        "ackRate": None,
        "depthSource": "Prometheus",
        "rateSource": None,
        "lastPublishTime": None,
    }


# observe: the snapshot -> reading mapping the tick and the local autoscaler share
SNAP = Snapshot(1, NOW, {("/", "jobs"): BUSY}, unknown={("/", "new"): WHY_4X})
READINGS = {
    "no snapshot": (None, "jobs", Reading(None, False, NO_SNAPSHOT)),
    "failed read": (Snapshot(1, NOW, {}, "boom"), "jobs", Reading(None, False, "boom")),
    "listed without depth": (SNAP, "new", Reading(None, True, WHY_4X)),
    "not listed": (SNAP, "gone", Reading(None, True, "queue 'gone' not found in vhost '/'")),
    "found": (SNAP, "jobs", Reading(BUSY, True)),
}


@pytest.mark.parametrize(("snap", "queue", "expected"), READINGS.values(), ids=READINGS.keys())
def test_read_queue(snap: Snapshot | None, queue: str, expected: Reading) -> None:
    assert read_queue(snap, "/", queue) == expected


def test_the_policy_sees_the_depth_and_rates_or_nothing() -> None:
    assert Reading(BUSY, True).observation == Observation(45, 2, 1, 3.14, 2.06)
    assert Reading(PROM, True).observation == Observation(4, 0, 1, None, None)
    assert Reading(None, True, WHY_4X).observation is None
