"""Observe: one queue in a broker's snapshot, and the target Deployment's replicas, as the policy and the status
read them.

The operator's tick (`reconcile.py`) and the local autoscaler (`local.py`) both start here, so for both a queue
the broker lists without depth, or a failed read, is unknown (replicas held), never an empty queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from qw_operator.policy import Observation
from qw_operator.rabbitmq import QueueMetrics, Snapshot

NO_SNAPSHOT = "no fresh metrics from the broker"


class Replicas(NamedTuple):
    """A Deployment as the operator's watch last saw it. The policy scales from `spec` (what the operator and
    users asked for); the status and the `replicas_current` gauge report `current` and `ready`, what the
    Deployment controller made of it (its `.status.replicas` and `.status.readyReplicas`): a quota, a pod that
    cannot be scheduled or a crash-looping one shows there and nowhere in the decision."""

    spec: int
    current: int
    ready: int


@dataclass(frozen=True)
class Reading:
    """One queue in one snapshot: its metrics, or None with why; and whether the broker answered at all."""

    queue: QueueMetrics | None
    reachable: bool
    why: str = ""
    publish_age: float | None = None  # seconds from the publish counter's last growth to this snapshot

    @property
    def observation(self) -> Observation | None:
        """What the policy decides on; None while the depth is unknown."""
        q = self.queue
        if q is None:
            return None
        return Observation(q.ready, q.unacked, q.consumers, q.publish_rate, q.ack_rate, self.publish_age)


def read_queue(snap: Snapshot | None, vhost: str, queue: str) -> Reading:
    """`snap` None: no fresh snapshot came (a stalled or failing poller)."""
    if snap is None:
        return Reading(None, False, NO_SNAPSHOT)
    if snap.error:
        return Reading(None, False, snap.error)
    key = (vhost, queue)
    q = snap.queues.get(key)
    if q is None:
        return Reading(None, True, snap.unknown.get(key) or f"queue {queue!r} not found in vhost {vhost!r}")
    age = None if q.published_at is None else max(0.0, snap.fetched_at - q.published_at)
    return Reading(q, True, publish_age=age)
