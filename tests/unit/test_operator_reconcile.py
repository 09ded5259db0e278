"""One QueueWorker's tick with a fake Kubernetes: patch only on change, status only on change, history round trip,
conditions with stable transition times, pause, missing target, broker errors."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry
from qw_operator.metrics import OperatorMetrics
from qw_operator.observe import Replicas
from qw_operator.policy import History
from qw_operator.rabbitmq import QueueMetrics, Snapshot
from qw_operator.reconcile import Ticker
from qw_operator.status import condition, history_from_status, history_to_status


class FakeKube:
    def __init__(self) -> None:
        self.replica_patches: list[tuple[str, int]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.refuse: Exception | None = None

    async def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        self.replica_patches.append((name, replicas))

    def queue_status(self, namespace: str, name: str, status: dict[str, Any]) -> asyncio.Future[None]:
        """Written at once, or refused with `self.refuse` (retries exhausted); the real Kube queues it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.refuse is not None:
            fut.set_exception(self.refuse)
        else:
            self.status_patches.append(status)
            fut.set_result(None)
        return fut


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "info", lambda body, reason, message="": events.append((reason, message)))
    monkeypatch.setattr(kopf, "warn", lambda body, reason, message="": events.append((reason, message)))
    return events


def make(
    body_extra: dict[str, Any] | None = None, replicas: int | None = 1, observed: dict[str, Any] | None = None
) -> tuple[Ticker, FakeKube, list[float]]:
    """A Ticker on a fake clock; the Deployment's spec.replicas is `replicas` (None: missing) and runs just that,
    all ready, unless `observed` (a dict the test may change) says `current` / `ready` otherwise."""
    body = {
        "metadata": {"name": "w", "namespace": "ns", "generation": 3, "annotations": {}},
        "spec": {
            "queue": "jobs",
            "vhost": "/",
            "minReplicas": 0,
            "maxReplicas": 10,
            "scaleTargetRef": {"name": "dep"},
            "scaling": {"messagesPerReplica": 10, "scaleDownStabilizationSeconds": 30, "cooldownSeconds": 60},
        },
        **(body_extra or {}),
    }
    kube = FakeKube()
    clock = [1000.0]
    seen = {} if observed is None else observed

    def lookup(ns: str, name: str) -> Replicas | None:
        if replicas is None:
            return None
        return Replicas(replicas, seen.get("current", replicas), seen.get("ready", replicas))

    t = Ticker(
        "ns",
        "w",
        body,
        kube,  # type: ignore[arg-type]
        OperatorMetrics(CollectorRegistry()),
        lookup,
        clock=lambda: clock[0],
    )
    return t, kube, clock


def snap(seq: int = 1, ready: int = 0, error: str | None = None) -> Snapshot:
    queues = {} if error else {("/", "jobs"): QueueMetrics(ready, 0, 1, 0.0, 0.0)}
    return Snapshot(seq, 1000.0, queues, error)


async def test_scales_up_once_and_writes_status(no_events: list[tuple[str, str]]) -> None:
    t, kube, clock = make()
    d = await t.tick(snap(ready=45))
    assert d is not None and d.replicas == 5
    assert kube.replica_patches == [("dep", 5)]
    assert no_events[0][0] == "ScaledUp"
    st = kube.status_patches[-1]
    assert st["desiredReplicas"] == 5 and st["queue"]["ready"] == 45 and st["observedGeneration"] == 3
    assert st["replicas"] == st["readyReplicas"] == 1  # what the Deployment ran when the tick read it
    assert {c["type"] for c in st["conditions"]} == {
        "Ready",
        "Active",
        "BrokerReachable",
        "MetricsAvailable",
        "ScalingLimited",
    }
    # The index still says 1 (watch lag): the pending write is trusted, so no second patch
    clock[0] += 1
    await t.tick(snap(2, ready=45))
    assert kube.replica_patches == [("dep", 5)]


async def test_no_writes_when_nothing_changed() -> None:
    t, kube, clock = make(replicas=0)
    await t.tick(snap(ready=0))
    n = len(kube.status_patches)
    clock[0] += 5
    await t.tick(snap(2, ready=0))
    assert kube.replica_patches == [] and len(kube.status_patches) == n


async def test_broker_error_holds_and_flips_broker_reachable(no_events: list[tuple[str, str]]) -> None:
    t, kube, clock = make(replicas=3)
    await t.tick(snap(error="GET http://rabbit:15672/api/queues: ClientConnectorError"))
    assert kube.replica_patches == []
    st = kube.status_patches[-1]
    reach = next(c for c in st["conditions"] if c["type"] == "BrokerReachable")
    assert reach["status"] == "False" and "ClientConnectorError" in reach["message"]
    assert st["consecutiveFailures"] == 1
    assert ("BrokerUnreachable", "GET http://rabbit:15672/api/queues: ClientConnectorError") in no_events
    clock[0] += 10  # the failure count alone is written at most every min_interval
    await t.tick(None)  # no fresh snapshot at all: also a failure, no second event
    assert kube.status_patches[-1]["consecutiveFailures"] == 2
    assert [e for e in no_events if e[0] == "BrokerUnreachable"] == no_events[:1]


async def test_missing_queue_is_a_failure_not_zero() -> None:
    t, kube, _ = make(replicas=2)
    await t.tick(Snapshot(1, 1000.0, {("/", "other"): QueueMetrics(0, 0, 0, 0, 0)}))
    assert kube.replica_patches == []
    ready = next(c for c in kube.status_patches[-1]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "not found" in ready["message"]


async def test_paused_holds_replicas() -> None:
    t, kube, _ = make({"metadata": {"name": "w", "annotations": {"queueworker.dev/paused": "true"}}}, replicas=4)
    d = await t.tick(snap(ready=0))
    assert d is not None and d.replicas == 4 and kube.replica_patches == []
    assert kube.status_patches[-1]["reason"].startswith("Paused")


async def test_missing_target_reports_and_does_not_patch(no_events: list[tuple[str, str]]) -> None:
    t, kube, _ = make(replicas=None)
    assert await t.tick(snap(ready=50)) is None
    assert kube.replica_patches == [] and no_events[0][0] == "TargetNotFound"


async def test_history_from_status_survives_a_restart() -> None:
    # Given an operator that scaled to 5 and then saw the queue empty (window running)
    t, kube, clock = make()
    await t.tick(snap(ready=45))
    clock[0] += 5
    await t.tick(snap(2, ready=0))
    status: dict[str, Any] = {}
    for p in kube.status_patches:
        status.update(p)
    # When a new operator starts from that status, 10 s later, with the Deployment at 5
    t2, kube2, clock2 = make({"status": status}, replicas=5)
    clock2[0] = clock[0] + 10
    d = await t2.tick(snap(3, ready=0))
    # Then the stabilization window it inherited holds the 5 (no early scale-down)
    assert d is not None and d.replicas == 5 and kube2.replica_patches == []


def stored(patches: list[dict[str, Any]]) -> dict[str, Any]:
    """What the apiserver keeps after these merge patches: a None removes its key, at every level."""

    def merge(into: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
        for k, v in patch.items():
            if v is None:
                into.pop(k, None)
            elif isinstance(v, dict):
                into[k] = merge(dict(into.get(k) or {}), v)
            else:
                into[k] = v
        return into

    status: dict[str, Any] = {}
    for p in patches:
        status = merge(status, p)
    return status


async def test_a_restarted_operator_writes_nothing_for_an_idle_queueworker() -> None:
    """Measured at 5,000 QueueWorkers: a restarted operator rewrote all 5,000 statuses (70 s of writes), because
    the stored status lacks the keys the operator sends as None (unknown: a merge patch removes them) and because
    every idle queue's lastPublishTime became the restart's time. What it reads back and what it would write mean
    the same: no write; the last publish time seen stays."""
    t, kube, clock = make(replicas=0)
    published = QueueMetrics(0, 0, 0, 0.0, 0.0, published_at=990.0)  # the last publish, seen before the restart
    await t.tick(Snapshot(1, 1000.0, {("/", "jobs"): published}))
    status = stored(kube.status_patches)
    assert status["queue"]["lastPublishTime"] == "1970-01-01T00:16:30Z"
    assert "lastActiveTime" not in status["history"]  # sent as None: unknown
    # When a new operator starts from that status and reads the same idle queue (no publish seen since its start)
    t2, kube2, clock2 = make({"status": status}, replicas=0)
    clock2[0] = clock[0] + 30
    for seq in range(1, 4):
        clock2[0] += 1
        await t2.tick(Snapshot(seq, clock2[0], {("/", "jobs"): QueueMetrics(0, 0, 0, 0.0, 0.0)}))
    # Then nothing is written, and the status it holds keeps the last publish time
    assert kube2.status_patches == []
    assert t2.last_status["queue"]["lastPublishTime"] == "1970-01-01T00:16:30Z"


async def ticks(t: Ticker, clock: list[float], seconds: int, ready: int, seq: int = 1) -> int:
    """One tick a second for `seconds` with `ready` messages waiting; the next snapshot sequence number."""
    for _ in range(seconds):
        clock[0] += 1
        await t.tick(snap(seq, ready=ready))
        seq += 1
    return seq


async def test_a_busy_queue_writes_its_status_at_most_every_min_interval() -> None:
    """Only lastActiveTime changes on every tick of a steadily busy queue: measured before this, one PATCH per
    tick per QueueWorker (52-76 writes/s for 100 busy queues on the real control plane)."""
    t, kube, clock = make(replicas=5)
    seq = await ticks(t, clock, 1, ready=45)
    assert len(kube.status_patches) == 1
    await ticks(t, clock, 30, ready=45, seq=seq)
    assert len(kube.status_patches) == 1 + 3  # at 10, 20 and 30 s
    assert [p["history"]["lastActiveTime"] for p in kube.status_patches[1:]] == [1011.0, 1021.0, 1031.0]


async def test_min_interval_zero_writes_every_change() -> None:
    t, kube, clock = make(replicas=5)
    t.min_interval = 0
    await ticks(t, clock, 5, ready=45)
    assert len(kube.status_patches) == 5


async def test_a_change_a_user_reads_is_written_at_once() -> None:
    observed = {"current": 5, "ready": 3}
    t, kube, clock = make(replicas=5, observed=observed)
    seq = await ticks(t, clock, 2, ready=45)
    n = len(kube.status_patches)
    # A pod becomes ready: written on the next tick, not 10 s later
    observed["ready"] = 4
    seq = await ticks(t, clock, 1, ready=45, seq=seq)
    assert len(kube.status_patches) == n + 1 and kube.status_patches[-1]["readyReplicas"] == 4
    # More messages: a scale decision (desired, lastScaleTime) at once
    seq = await ticks(t, clock, 1, ready=70, seq=seq)
    assert len(kube.status_patches) == n + 2 and kube.status_patches[-1]["desiredReplicas"] == 7
    # Pause: Ready's reason changes -> at once
    t.body["metadata"]["annotations"]["queueworker.dev/paused"] = "true"
    await ticks(t, clock, 1, ready=70, seq=seq)
    assert len(kube.status_patches) == n + 3 and kube.status_patches[-1]["reason"].startswith("Paused")


async def test_the_idle_transition_persists_the_exact_last_active_time() -> None:
    """What a restarted operator's cooldown starts from: the last busy tick, not the last throttled write."""
    t, kube, clock = make(replicas=2)
    seq = await ticks(t, clock, 7, ready=15)  # busy at 1001..1007, written at 1001 only
    assert len(kube.status_patches) == 1
    await ticks(t, clock, 1, ready=0, seq=seq)  # idle at 1008: Active flips, written at once
    st = kube.status_patches[-1]
    assert len(kube.status_patches) == 2 and st["history"]["lastActiveTime"] == 1007.0
    # Given a new operator starting from that status, when the cooldown (60 s from 1007) has not passed
    status: dict[str, Any] = {}
    for p in kube.status_patches:
        status.update(p)
    t2, kube2, clock2 = make({"status": status}, replicas=1)
    clock2[0] = 1007.0 + 55
    d = await t2.tick(snap(ready=0))
    # Then it keeps one replica (a stale lastActiveTime of 1001 would have said idle for 61 s: to zero)
    assert d is not None and d.replicas == 1 and "Cooldown" in d.reason and kube2.replica_patches == []


def test_history_round_trip() -> None:
    h = History(((1.5, 3), (9.25, 1)), 7.0, 2, 4.5)
    st = {"history": history_to_status(h), "consecutiveFailures": 2}
    assert history_from_status(st) == h
    assert history_from_status(None) == History()


def test_condition_transition_time_moves_only_on_status_change() -> None:
    c1 = condition(None, "Ready", True, "Scaling", "", 100.0)
    c2 = condition([c1], "Ready", True, "Scaling", "other message", 200.0)
    c3 = condition([c2], "Ready", False, "NoMetrics", "", 300.0)
    assert c1["lastTransitionTime"] == c2["lastTransitionTime"] != c3["lastTransitionTime"]


async def test_current_is_what_the_deployment_runs_and_desired_is_the_decision() -> None:
    """Given a Deployment asked for 5 of which a quota lets 3 exist and 2 be ready: the status, the printer
    columns and the replicas_current gauge say 3 (ready 2); desiredReplicas and replicas_desired say 5."""
    observed = {"current": 1, "ready": 1}
    t, kube, clock = make(observed=observed)
    await t.tick(snap(ready=45))
    observed.update(current=3, ready=2)
    clock[0] += 1
    await t.tick(snap(2, ready=45))
    st = kube.status_patches[-1]
    assert (st["replicas"], st["readyReplicas"], st["desiredReplicas"]) == (3, 2, 5)
    qw = {"namespace": "ns", "name": "w"}
    assert t.metrics.registry.get_sample_value("queueworker_operator_replicas_current", qw) == 3
    assert t.metrics.registry.get_sample_value("queueworker_operator_replicas_desired", qw) == 5
    assert kube.replica_patches == [("dep", 5)]  # the decision stands: not re-patched because fewer run


async def test_metrics_per_queueworker() -> None:
    t, _, _ = make()
    await t.tick(snap(ready=45))
    qw = {"namespace": "ns", "name": "w"}

    def sample(metric: str, **labels: str) -> float | None:
        return t.metrics.registry.get_sample_value(f"queueworker_operator_{metric}", labels)

    assert sample("replicas_desired", **qw) == 5
    assert sample("replicas_max", **qw) == 10
    assert sample("queue_messages", **qw, state="ready") == 45
    assert sample("queue_metrics_available", **qw) == 1
    assert sample("scale_events_total", direction="up") == 1


async def test_a_queue_listed_without_depth_holds_and_says_why() -> None:
    """RabbitMQ 4.x's official image: the management API lists the queue by name only. Busy workers must not be
    scaled to zero on that (measured before this fix: 3 -> 0 in 1.5 s with 100 messages waiting)."""
    t, kube, clock = make(replicas=3)
    why = "RabbitMQ lists queue 'jobs' without depth: its management metrics collector is off"
    for i in range(5):
        clock[0] += 400  # past any cooldown: still no scale-down without depth
        d = await t.tick(Snapshot(i + 1, clock[0], {}, None, 0, {("/", "jobs"): why}))
        assert d is not None and d.replicas == 3
    assert kube.replica_patches == []
    conds = {c["type"]: c for c in kube.status_patches[-1]["conditions"]}
    assert conds["MetricsAvailable"]["status"] == "False" and conds["MetricsAvailable"]["message"] == why
    assert conds["MetricsAvailable"]["reason"] == "NoDepth" and conds["BrokerReachable"]["status"] == "True"
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "NoMetrics"
    available = t.metrics.registry.get_sample_value(
        "queueworker_operator_queue_metrics_available", {"namespace": "ns", "name": "w"}
    )
    assert available == 0  # the alert's input


async def test_status_names_the_sources_and_leaves_unknown_rates_out() -> None:
    t, kube, _ = make(replicas=1)
    q = QueueMetrics(4, 1, 1, None, None, depth_source="Prometheus", rate_source=None)
    await t.tick(Snapshot(1, 1000.0, {("/", "jobs"): q}))
    st = kube.status_patches[-1]
    assert st["queue"]["depthSource"] == "Prometheus" and st["queue"]["rateSource"] is None
    assert st["queue"]["publishRate"] is None and st["queue"]["ackRate"] is None
    metrics = next(c for c in st["conditions"] if c["type"] == "MetricsAvailable")
    assert metrics["status"] == "True" and metrics["reason"] == "DepthPrometheus"
    assert "rates from no source yet" in metrics["message"]


T0 = "1970-01-01T00:16:40Z"  # the fake clock's 1000.0


def cond(type_: str, status: str, reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": T0, **extra}


async def test_a_scaling_tick_writes_the_whole_status_once(no_events: list[tuple[str, str]]) -> None:
    """Pins the status patch field by field (order included): the status builder must write the same."""
    t, kube, _ = make()
    await t.tick(snap(ready=45))
    why = "ScaleUp: backlog 45 / 10 per replica -> 5"
    assert kube.status_patches == [
        {
            "lastScaleTime": T0,
            "lastScaleReason": why,
            "queue": {
                "ready": 45,
                "unacked": 0,
                "consumers": 1,
                "publishRate": 0.0,
                "ackRate": 0.0,
                "depthSource": "ManagementAPI",
                "rateSource": "ManagementAPI",
                "lastPublishTime": None,
            },
            "replicas": 1,
            "readyReplicas": 1,
            "desiredReplicas": 5,
            "reason": why,
            "observedGeneration": 3,
            "consecutiveFailures": 0,
            "conditions": [
                cond("BrokerReachable", "True", "Reachable"),
                cond(
                    "MetricsAvailable",
                    "True",
                    "DepthManagementAPI",
                    "depth from ManagementAPI, rates from ManagementAPI",
                ),
                cond("Ready", "True", "Scaling", why, observedGeneration=3),
                cond("Active", "True", "QueueActive"),
                cond("ScalingLimited", "False", "DesiredWithinRange"),
            ],
            "history": {
                "recommendations": [{"time": 1000.0, "replicas": 1}, {"time": 1000.0, "replicas": 5}],
                "lastActiveTime": 1000.0,
                "perReplicaAckRate": None,
            },
        }
    ]
    assert list(kube.status_patches[0]) == [
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
    assert no_events == [("ScaledUp", f"dep: 1 -> 5: {why}")]


async def test_a_missing_target_writes_two_conditions_and_warns_once(no_events: list[tuple[str, str]]) -> None:
    t, kube, clock = make(replicas=None)
    await t.tick(snap(ready=45))
    assert kube.status_patches == [
        {
            "conditions": [
                cond("BrokerReachable", "True", "Reachable"),
                cond("Ready", "False", "TargetNotFound", "Deployment dep"),
            ],
            "observedGeneration": 3,
        }
    ]
    clock[0] += 5
    await t.tick(snap(2, ready=45))
    assert no_events == [("TargetNotFound", "Deployment dep not found")] and len(kube.status_patches) == 1


async def test_paused_is_ready_with_reason_paused() -> None:
    meta = {"name": "w", "generation": 4, "annotations": {"queueworker.dev/paused": "true"}}
    t, kube, _ = make({"metadata": meta}, replicas=4)
    await t.tick(snap(ready=0))
    st = kube.status_patches[-1]
    assert "lastScaleTime" not in st and st["replicas"] == 4
    assert st["conditions"][2] == cond(
        "Ready", "True", "Paused", "Paused: queueworker.dev/paused holds 4", observedGeneration=4
    )
    assert st["conditions"][3] == cond("Active", "False", "QueueIdle")


async def test_fallback_scales_and_warns_in_order(no_events: list[tuple[str, str]]) -> None:
    """Given fallback after one failure, when no snapshot comes: the events keep their order and Ready says why."""
    t, kube, clock = make(replicas=3)
    t.body["spec"]["fallback"] = {"failureThreshold": 1, "replicas": 2}
    d = await t.tick(None)
    why = "Fallback: 1 consecutive metric failures, using 2"
    assert d is not None and d.fallback and kube.replica_patches == [("dep", 2)]
    assert no_events == [
        ("BrokerUnreachable", "no fresh metrics from the broker"),
        ("ScaledDown", f"dep: 3 -> 2: {why}"),
        ("FallbackActive", why),
    ]
    st = kube.status_patches[-1]
    assert "queue" not in st and st["lastScaleReason"] == why and st["consecutiveFailures"] == 1
    assert st["conditions"] == [
        cond("BrokerReachable", "False", "MetricsReadError", "no fresh metrics from the broker"),
        cond("MetricsAvailable", "False", "Unreachable", "no fresh metrics from the broker"),
        cond("Ready", "False", "Fallback", "no fresh metrics from the broker", observedGeneration=3),
        cond("Active", "True", "QueueIdle"),  # no observation: active means "has replicas"
        cond("ScalingLimited", "False", "DesiredWithinRange"),
    ]
    clock[0] += 5
    await t.tick(None)  # still falling back: no second FallbackActive
    assert [e[0] for e in no_events].count("FallbackActive") == 1


async def test_a_status_write_that_failed_is_made_by_the_next_tick() -> None:
    """Retries exhausted (`status write failed` in the log): the status is not taken as written."""
    t, kube, clock = make(replicas=1)
    kube.refuse = ApiException(status=429, reason="Too Many Requests")
    await t.tick(snap(ready=45))  # the write fails after the tick (queued): the tick itself goes on
    await asyncio.sleep(0)  # the write's result reaches the Ticker
    kube.refuse = None
    clock[0] += 1
    await t.tick(snap(2, ready=45))
    assert len(kube.status_patches) == 1 and kube.status_patches[0]["desiredReplicas"] == 5
    # and the scale of the failed tick is reported, not lost with its write
    assert kube.status_patches[0]["lastScaleReason"] == "ScaleUp: backlog 45 / 10 per replica -> 5"


# -- the fast path: an unchanged tick skips the policy or the report, never a change ---------------------------


def idle(seq: int, fetched_at: float, publish_rate: float = 0.0, published_at: float | None = 900.0) -> Snapshot:
    """An empty queue, the same figures every snapshot (as the poller hands them: one QueueMetrics object)."""
    return Snapshot(seq, fetched_at, {("/", "jobs"): IDLE if publish_rate == 0.0 and published_at == 900.0 else
                                      QueueMetrics(0, 0, 0, publish_rate, 0.0, published_at=published_at)})  # fmt: skip


IDLE = QueueMetrics(0, 0, 0, 0.0, 0.0, published_at=900.0)


async def test_an_unchanged_idle_queueworker_is_decided_every_tick_and_written_once() -> None:
    t, kube, clock = make(replicas=0)
    decisions = []
    for i in range(30):
        clock[0] += 1
        decisions.append(await t.tick(idle(i + 1, clock[0])))
    assert all(d is not None and d.replicas == 0 for d in decisions)  # a decision every tick: nothing changed
    assert len(kube.status_patches) == 1 and kube.replica_patches == []


async def test_the_cooldown_expires_on_time_with_unchanged_readings() -> None:
    """Idle at 1 replica (minReplicas 0), cooldown 60 s from lastActiveTime 1000: the same reading every second
    must still scale to 0 at 1060, not later."""
    status = {"history": {"lastActiveTime": 1000.0, "recommendations": [{"time": 990.0, "replicas": 1}]}}
    t, kube, clock = make({"status": status}, replicas=1)
    scaled_at = None
    for i in range(70):
        clock[0] += 1
        await t.tick(idle(i + 1, clock[0]))
        if kube.replica_patches and scaled_at is None:
            scaled_at = clock[0]
    assert kube.replica_patches == [("dep", 0)] and scaled_at == 1060.0


async def test_a_stale_publish_rate_stops_being_activity_on_time() -> None:
    """The broker holds a publish rate of 5/s after the publishing stopped (its counter last grew at 1001): the
    same figures every snapshot, but the rate ages; after 2 s (2 x pollingInterval, at least 2 s) the queue is
    idle and the Active condition says so at that tick."""
    t, kube, clock = make(replicas=0)
    q = QueueMetrics(0, 0, 0, 5.0, 0.0, published_at=1001.0)
    actives = []
    for i in range(6):
        clock[0] += 1
        await t.tick(Snapshot(i + 1, clock[0], {("/", "jobs"): q}))
        active = next(c for c in t.last_status["conditions"] if c["type"] == "Active")
        actives.append((clock[0], active["status"]))
    assert actives == [(1001.0, "True"), (1002.0, "True"), (1003.0, "True"), (1004.0, "False"), (1005.0, "False"),
                       (1006.0, "False")]  # fmt: skip


async def test_a_spec_or_annotation_change_is_acted_on_at_the_next_tick(no_events: list[tuple[str, str]]) -> None:
    t, kube, clock = make(replicas=0)
    for i in range(3):
        clock[0] += 1
        await t.tick(idle(i + 1, clock[0]))
    # A new body (kopf brings one per event): minReplicas 2 -> scaled at the next tick
    t.body = {**t.body, "spec": {**t.body["spec"], "minReplicas": 2}}
    clock[0] += 1
    await t.tick(idle(4, clock[0]))
    assert kube.replica_patches == [("dep", 2)]
    # Paused by annotation (the Deployment now at 2): the status says so at the next tick
    t.lookup = lambda ns, name: Replicas(2, 2, 2)
    for i in range(3):
        clock[0] += 1
        await t.tick(idle(5 + i, clock[0]))
    t.body = {**t.body, "metadata": {**t.body["metadata"], "annotations": {"queueworker.dev/paused": "true"}}}
    clock[0] += 1
    await t.tick(idle(9, clock[0]))
    assert t.last_status["reason"].startswith("Paused")


async def test_a_deployment_scaled_by_hand_is_seen_and_acted_on_at_the_next_tick() -> None:
    observed = {"spec": 0}
    t, kube, clock = make(replicas=0)
    t.lookup = lambda ns, name: Replicas(observed["spec"], observed["spec"], observed["spec"])
    for i in range(5):
        clock[0] += 1
        await t.tick(idle(i + 1, clock[0]))
    writes = len(kube.status_patches)
    observed["spec"] = 3  # kubectl scale --replicas 3
    clock[0] += 1
    await t.tick(idle(6, clock[0]))
    # The status shows the 3 running, and the policy acts on them (idle, never active: straight to 0)
    assert len(kube.status_patches) == writes + 1 and kube.status_patches[-1]["replicas"] == 3
    assert kube.replica_patches == [("dep", 0)]


async def test_a_failed_status_write_is_retried_although_nothing_changed() -> None:
    t, kube, clock = make(replicas=0)
    kube.refuse = ApiException(status=500)
    clock[0] += 1
    await t.tick(idle(1, clock[0]))
    await asyncio.sleep(0)
    kube.refuse = None
    clock[0] += 1
    await t.tick(idle(2, clock[0]))
    assert len(kube.status_patches) == 1 and kube.status_patches[0]["desiredReplicas"] == 0


async def test_flush_writes_what_a_busy_queue_held_back_since_its_last_write() -> None:
    """Between writes (every min_interval while busy) the history lives in memory: a restart lost up to 10 s of
    it (lastActiveTime, the recommendations). On shutdown `flush` writes it; with nothing held, nothing."""
    t, kube, clock = make(replicas=5)
    seq = await ticks(t, clock, 1, ready=45)
    await ticks(t, clock, 4, ready=45, seq=seq)
    assert len(kube.status_patches) == 1 and kube.status_patches[0]["history"]["lastActiveTime"] == 1001.0
    fut = t.flush()
    assert fut is not None and fut.done()
    assert stored(kube.status_patches)["history"]["lastActiveTime"] == 1005.0
    assert t.flush() is None and len(kube.status_patches) == 2
    # A new operator starts from it: the same history
    assert history_from_status(stored(kube.status_patches)) == t.history
