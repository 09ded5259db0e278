"""QueueWorker status: the report step of a tick, pure.

`build_status` turns what a tick observed and decided into the whole status patch (conditions with stable
transition times, the queue as read, the policy history carried across restarts); the tick only writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from qw_operator.observe import Reading, Replicas
from qw_operator.policy import Decision, History
from qw_operator.rabbitmq import QueueMetrics

Conditions = Sequence[Mapping[str, Any]]

CONDITION_TYPES = ("Ready", "Active", "BrokerReachable", "MetricsAvailable", "ScalingLimited")


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_from_status(status: Mapping[str, Any] | None) -> History:
    h = (status or {}).get("history") or {}
    points = tuple(
        (float(p["time"]), int(p["replicas"]))
        for p in h.get("recommendations") or ()
        if "time" in p and "replicas" in p
    )
    last_active = h.get("lastActiveTime")
    rate = h.get("perReplicaAckRate")
    return History(
        recommendations=points,
        last_active=None if last_active is None else float(last_active),
        consecutive_failures=int((status or {}).get("consecutiveFailures") or 0),
        per_replica_ack_rate=None if rate is None else float(rate),
    )


def history_to_status(h: History) -> dict[str, Any]:
    out: dict[str, Any] = {"recommendations": [{"time": round(t, 3), "replicas": n} for t, n in h.recommendations]}
    # Explicit None removes a field under a merge patch.
    out["lastActiveTime"] = None if h.last_active is None else round(h.last_active, 3)
    out["perReplicaAckRate"] = None if h.per_replica_ack_rate is None else round(h.per_replica_ack_rate, 4)
    return out


def condition(
    previous: Conditions | None,
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    now: float,
    generation: int | None = None,
) -> dict[str, Any]:
    """A condition whose lastTransitionTime moves only when its status changes."""
    status = "True" if ok else "False"
    old = next((c for c in previous or () if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else None
    out: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": since or rfc3339(now),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def condition_status(conditions: Conditions | None, type_: str) -> str | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return str(c.get("status"))
    return None


def build_status(
    previous: Conditions | None,
    reading: Reading,
    decision: Decision | None,
    *,
    current: int | None,
    observed: Replicas | None,
    target: str,
    paused: bool,
    generation: int | None,
    now: float,
    target_problem: str | None = None,
) -> dict[str, Any]:
    """One tick's status patch, from the conditions last written, what it read and what it decided.

    `current` is the replica count the tick started from (a decision that differs is a scale: lastScaleTime);
    `observed` is the Deployment as last seen, reported as `replicas` / `readyReplicas` (what runs, not what was
    asked for: `desiredReplicas` is the decision);
    None, with `decision` None, is a missing target Deployment: then only BrokerReachable, Ready
    (TargetNotFound; TargetNotOwned with `target_problem`, a Deployment the operator must not scale) and
    observedGeneration. Unknown values are written as None (a merge patch removes them).
    """
    reachable = condition(
        previous,
        "BrokerReachable",
        reading.reachable,
        "Reachable" if reading.reachable else "MetricsReadError",
        "" if reading.reachable else reading.why,
        now,
    )
    if current is None or decision is None:
        why = ("TargetNotOwned", f"Deployment {target} {target_problem}") if target_problem else None
        reason, message = why or ("TargetNotFound", f"Deployment {target}")
        missing = condition(previous, "Ready", False, reason, message, now)
        return {"conditions": [reachable, missing], "observedGeneration": generation}
    status: dict[str, Any] = {}
    if decision.replicas != current:
        status.update(lastScaleTime=rfc3339(now), lastScaleReason=decision.reason)
    if reading.queue is not None:
        status["queue"] = queue_status(reading.queue)
    status.update(
        replicas=None if observed is None else observed.current,
        readyReplicas=None if observed is None else observed.ready,
        desiredReplicas=decision.replicas,
        reason=decision.reason,
        observedGeneration=generation,
        consecutiveFailures=decision.history.consecutive_failures,
        conditions=[reachable, *_decided_conditions(previous, reading, decision, paused, generation, now)],
        history=history_to_status(decision.history),
    )
    return status


def visible(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a user reads of a status and must see at once: replicas (current, ready, desired), a scale and its
    reason, the generation acted on, where the depth comes from, and each condition's status and reason (a
    transition; the Active one also persists the exact lastActiveTime when a queue goes idle). Not in it: values
    that move on every tick of a busy queue (depth, rates, the reason's and conditions' numbers, the history)."""
    reason = str(status.get("reason") or "")
    return (
        status.get("replicas"),
        status.get("readyReplicas"),
        status.get("desiredReplicas"),
        status.get("lastScaleTime"),
        status.get("lastScaleReason"),
        status.get("observedGeneration"),
        (status.get("queue") or {}).get("depthSource"),
        reason.split(":", 1)[0],  # the verb: Steady, ScaleUp, Cooldown, Paused, MetricsUnavailable...
        tuple((c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or ()),
    )


def applied(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status as the apiserver keeps it after a merge patch: a None value removes its key (at every level).
    What was read back and what is about to be written compare equal when they mean the same."""
    return {k: applied(v) if isinstance(v, Mapping) else v for k, v in status.items() if v is not None}


def should_write(
    written: Mapping[str, Any], wanted: Mapping[str, Any], since_write: float, min_interval: float
) -> bool:
    """Whether to PATCH `wanted` over the status last `written` (`since_write` seconds ago): at once when something
    `visible` changed, else (only churning values changed: a busy queue's depth, rates, lastActiveTime) at most
    every `min_interval` seconds; never when nothing changed. Between writes the history lives in the Ticker.
    Both as `applied`: a restarted operator's None (unknown) is the stored status's missing key, not a change."""
    written, wanted = applied(written), applied(wanted)
    if wanted == written:
        return False
    return visible(wanted) != visible(written) or since_write >= min_interval


def queue_status(q: QueueMetrics) -> dict[str, Any]:
    return {
        "ready": q.ready,
        "unacked": q.unacked,
        "consumers": q.consumers,
        # Explicit None removes a rate no source has (merge patch): unknown is not shown as 0.
        "publishRate": None if q.publish_rate is None else round(q.publish_rate, 1),
        "ackRate": None if q.ack_rate is None else round(q.ack_rate, 1),
        "depthSource": q.depth_source,
        "rateSource": q.rate_source,
        "lastPublishTime": None if q.published_at is None else rfc3339(q.published_at),
    }


def _decided_conditions(
    previous: Conditions | None, reading: Reading, decision: Decision, paused: bool, generation: int | None, now: float
) -> list[dict[str, Any]]:
    """MetricsAvailable, Ready, Active and ScalingLimited, for a tick that reached a decision."""
    q, obs, why = reading.queue, reading.observation, reading.why
    ready_reason = "Paused" if paused else "Fallback" if decision.fallback else "Scaling" if obs else "NoMetrics"
    active = obs is not None and decision.active
    if q is not None:
        metrics_reason = "Depth" + q.depth_source
        metrics_message = f"depth from {q.depth_source}, rates from {q.rate_source or 'no source yet'}"
    else:
        metrics_reason, metrics_message = "NoDepth" if reading.reachable else "Unreachable", why
    limited = decision.limited
    return [
        condition(previous, "MetricsAvailable", q is not None, metrics_reason, metrics_message, now),
        condition(previous, "Ready", paused or obs is not None, ready_reason, why or decision.reason, now, generation),
        # Without an observation, Active says whether there are replicas.
        condition(
            previous,
            "Active",
            active if obs else decision.replicas > 0,
            "QueueActive" if active else "QueueIdle",
            "",
            now,
        ),
        condition(
            previous,
            "ScalingLimited",
            limited,
            "Limited" if limited else "DesiredWithinRange",
            decision.reason if limited else "",
            now,
        ),
    ]


def unknown_broker_status(previous: Conditions | None, broker: str, now: float) -> dict[str, Any]:
    """The QueueWorker names a broker the operator has no URL for: not ready, nothing read."""
    message = f"broker {broker!r} is not configured in the operator"
    return {"conditions": [condition(previous, "Ready", False, "UnknownBroker", message, now)]}
