"""QueueWorker status: conditions with stable transition times, and the policy history carried across restarts."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from qw_operator.policy import History

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
    previous: list[Mapping[str, Any]] | None,
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


def condition_status(conditions: list[Mapping[str, Any]] | None, type_: str) -> str | None:
    for c in conditions or ():
        if c.get("type") == type_:
            return str(c.get("status"))
    return None
