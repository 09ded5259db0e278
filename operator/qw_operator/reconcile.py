"""One QueueWorker's tick: shared snapshot -> decide() -> patch replicas only on change -> status, events, metrics.

`Ticker` holds what one QueueWorker carries between ticks (history from its status at start, the last status it
wrote, a replica count it just wrote that the Deployment index may not show yet). `run()` is the loop a kopf
daemon drives: it waits for the broker's next snapshot rather than polling the broker itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from qw_operator.crd import PAUSED_ANNOTATION
from qw_operator.metrics import OperatorMetrics
from qw_operator.policy import Decision, Observation, Policy, decide
from qw_operator.rabbitmq import BrokerPoller, QueueMetrics, Snapshot
from qw_operator.scaler import Kube, target_name
from qw_operator.status import condition, condition_status, history_from_status, history_to_status, rfc3339

log = logging.getLogger(__name__)

ReplicaLookup = Callable[[str, str], "int | None"]
PENDING_SECONDS = 15.0  # trust our own write over a lagging Deployment index for this long


@dataclass
class Ticker:
    namespace: str
    name: str
    body: Any  # kopf.Body: the live view of the QueueWorker (kept current by kopf)
    kube: Kube
    metrics: OperatorMetrics
    lookup: ReplicaLookup
    clock: Callable[[], float] = time.time
    history: Any = None
    last_status: dict[str, Any] = field(default_factory=dict)
    pending: tuple[int, float] | None = None
    fallback_active: bool = False

    def __post_init__(self) -> None:
        status = dict(self.body.get("status") or {})
        self.history = history_from_status(status)
        self.last_status = status

    @property
    def spec(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    def current_replicas(self, target: str, now: float) -> int | None:
        seen = self.lookup(self.namespace, target)
        if self.pending is not None:
            value, until = self.pending
            if seen == value or now > until:
                self.pending = None
            else:
                return value
        return seen

    def observe(self, snap: Snapshot | None) -> tuple[QueueMetrics | None, bool, str]:
        """(the queue's metrics or None, broker reachable, why not). A queue the broker lists without depth is
        None with the reason: unknown, never empty."""
        if snap is None:
            return None, False, "no fresh metrics from the broker"
        if snap.error:
            return None, False, snap.error
        key = (str(self.spec.get("vhost", "/")), str(self.spec["queue"]))
        q = snap.queues.get(key)
        if q is None:
            return None, True, snap.unknown.get(key) or f"queue {key[1]!r} not found in vhost {key[0]!r}"
        return q, True, ""

    async def tick(self, snap: Snapshot | None) -> Decision | None:
        now = self.clock()
        meta = self.body.get("metadata") or {}
        generation = meta.get("generation")
        target = target_name(self.name, self.spec)
        current = self.current_replicas(target, now)
        q, reachable, why = self.observe(snap)
        obs = None if q is None else Observation(q.ready, q.unacked, q.consumers, q.publish_rate, q.ack_rate)
        self.metrics.queue_metrics_available.labels(self.namespace, self.name).set(0 if q is None else 1)
        prev_conditions = self.last_status.get("conditions") or []
        conds = [
            condition(
                prev_conditions,
                "BrokerReachable",
                reachable,
                "Reachable" if reachable else "MetricsReadError",
                why if not reachable else "",
                now,
            )
        ]
        if reachable is False and condition_status(prev_conditions, "BrokerReachable") != "False":
            kopf.warn(self.body, reason="BrokerUnreachable", message=why)

        if current is None:
            conds.append(condition(prev_conditions, "Ready", False, "TargetNotFound", f"Deployment {target}", now))
            if condition_status(prev_conditions, "Ready") != "False":
                kopf.warn(self.body, reason="TargetNotFound", message=f"Deployment {target} not found")
            await self._write_status({"conditions": conds, "observedGeneration": generation})
            return None

        paused = (meta.get("annotations") or {}).get(PAUSED_ANNOTATION) == "true"
        if paused:
            decision = Decision(current, f"Paused: {PAUSED_ANNOTATION} holds {current}", False, self.history)
        else:
            decision = decide(Policy.from_spec(self.spec), obs, self.history, current, now)
        self.history = decision.history

        status: dict[str, Any] = {}
        if decision.replicas != current:
            await self.kube.set_replicas(self.namespace, target, decision.replicas)
            self.pending = (decision.replicas, now + PENDING_SECONDS)
            up = decision.replicas > current
            self.metrics.scale_events.labels("up" if up else "down").inc()
            kopf.info(
                self.body,
                reason="ScaledUp" if up else "ScaledDown",
                message=f"{target}: {current} -> {decision.replicas}: {decision.reason}",
            )
            status.update(lastScaleTime=rfc3339(now), lastScaleReason=decision.reason)
            log.info(
                "%s/%s: %s %d -> %d: %s", self.namespace, self.name, target, current, decision.replicas, decision.reason
            )

        if q is not None:
            status["queue"] = {
                "ready": q.ready,
                "unacked": q.unacked,
                "consumers": q.consumers,
                # Explicit None removes a rate no source has (merge patch): unknown is not shown as 0.
                "publishRate": None if q.publish_rate is None else round(q.publish_rate, 1),
                "ackRate": None if q.ack_rate is None else round(q.ack_rate, 1),
                "depthSource": q.depth_source,
                "rateSource": q.rate_source,
            }
            self.metrics.queue_messages.labels(self.namespace, self.name, "ready").set(q.ready)
            self.metrics.queue_messages.labels(self.namespace, self.name, "unacked").set(q.unacked)
        if decision.fallback and not self.fallback_active:
            kopf.warn(self.body, reason="FallbackActive", message=decision.reason)
        self.fallback_active = decision.fallback

        ready_reason = "Paused" if paused else "Fallback" if decision.fallback else "Scaling" if obs else "NoMetrics"
        active = obs is not None and (obs.ready > 0 or obs.unacked > 0 or (obs.publish_rate or 0) > 0)
        conds += [
            condition(
                prev_conditions,
                "MetricsAvailable",
                q is not None,
                "Depth" + q.depth_source if q is not None else "NoDepth" if reachable else "Unreachable",
                f"depth from {q.depth_source}, rates from {q.rate_source or 'no source yet'}" if q is not None else why,
                now,
            ),
            condition(
                prev_conditions,
                "Ready",
                paused or obs is not None,
                ready_reason,
                why or decision.reason,
                now,
                generation,
            ),
            condition(
                prev_conditions,
                "Active",
                active if obs else decision.replicas > 0,
                "QueueActive" if active else "QueueIdle",
                "",
                now,
            ),
            condition(
                prev_conditions,
                "ScalingLimited",
                decision.limited,
                "Limited" if decision.limited else "DesiredWithinRange",
                decision.reason if decision.limited else "",
                now,
            ),
        ]
        status.update(
            replicas=decision.replicas,
            desiredReplicas=decision.replicas,
            reason=decision.reason,
            observedGeneration=generation,
            consecutiveFailures=decision.history.consecutive_failures,
            conditions=conds,
            history=history_to_status(decision.history),
        )
        self.metrics.replicas_desired.labels(self.namespace, self.name).set(decision.replicas)
        self.metrics.replicas_current.labels(self.namespace, self.name).set(decision.replicas)
        self.metrics.replicas_max.labels(self.namespace, self.name).set(int(self.spec.get("maxReplicas", 0)))
        await self._write_status(status)
        return decision

    async def _write_status(self, patch: dict[str, Any]) -> None:
        merged = {**self.last_status, **patch}
        if merged == self.last_status:
            return  # nothing changed: no write
        await self.kube.patch_status(self.namespace, self.name, patch)
        self.last_status = merged


async def run(
    ticker: Ticker,
    pollers: Mapping[str, BrokerPoller],
    uid: str,
    stopped: Any,  # kopf.DaemonStopped
    default_interval: float,
) -> None:
    """The daemon body: register with the broker's poller, then one tick per fresh snapshot and interval."""
    seq = 0
    broker_name = ""
    poller: BrokerPoller | None = None
    try:
        while not stopped:
            spec = ticker.spec
            interval = float(spec.get("pollingInterval") or default_interval)
            if spec.get("broker", "default") != broker_name:
                if poller is not None:
                    poller.unregister(uid)
                broker_name = str(spec.get("broker", "default"))
                poller, seq = pollers.get(broker_name), 0
            if poller is None:
                await ticker._write_status(
                    {
                        "conditions": [
                            condition(
                                ticker.last_status.get("conditions"),
                                "Ready",
                                False,
                                "UnknownBroker",
                                f"broker {broker_name!r} is not configured in the operator",
                                ticker.clock(),
                            )
                        ]
                    }
                )
                await stopped.wait(interval)
                continue
            poller.register(uid, str(spec.get("vhost", "/")), str(spec["queue"]), interval)
            started = time.monotonic()
            # A snapshot newer than the last one used; a stalled or failing poller yields None -> failure.
            snap = await poller.wait_newer(seq, timeout=2 * interval + 5)
            if snap is not None:
                seq = snap.seq
            try:
                await ticker.tick(snap)
            except asyncio.CancelledError:
                raise
            except Exception:
                ticker.metrics.reconcile_errors.inc()
                log.exception("%s/%s: tick failed", ticker.namespace, ticker.name)
            # Sleep out the rest of our interval, less the poller's, so the next snapshot lands on time.
            rest = interval - poller.interval - (time.monotonic() - started)
            if rest > 0:
                await stopped.wait(rest)
    finally:
        if poller is not None:
            poller.unregister(uid)
        ticker.metrics.forget(ticker.namespace, ticker.name)
